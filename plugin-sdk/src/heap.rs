//! The plugin's heap on WebAssembly: blocks of up to [`LARGEST`] bytes come from a free list
//! per power-of-two size, refilled from talc; larger blocks are talc's.
//!
//! A hook call allocates and frees about ten small blocks (header names and values, op lists,
//! the lists the canonical ABI lowers), and weir pays for each on its own CPU. The target's
//! default allocator (dlmalloc in wasi-libc) took about 250 instructions an operation there,
//! talc alone about 150 (its bins are computed from the size on every call); a free-list
//! pop or push is about 20. A freed small block goes back to its list, never to talc, so the
//! lists hold at most the most blocks of each size live at once: an instance is recycled after
//! `max_uses` calls anyway, and its memory is capped by weir.
//!
//! The global allocator only on single-threaded WebAssembly (the `cfg` on `ALLOCATOR` in
//! `lib.rs`): nothing here can be entered twice at once. The tests run it natively, over the
//! system allocator.

#![allow(unsafe_code, reason = "a global allocator is an unsafe trait")]
#![cfg_attr(
    not(all(target_family = "wasm", not(target_feature = "atomics"))),
    allow(dead_code, reason = "natively only the tests build a heap")
)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ptr;

/// Size classes: 16, 32, …, 2,048 bytes.
const SMALLEST_SHIFT: u32 = 4;
const CLASSES: usize = 8;
/// The largest block served from a free list.
pub(crate) const LARGEST: usize = 1 << (SMALLEST_SHIFT as usize + CLASSES - 1);
/// Every small block is aligned to this (and a request for more goes to talc).
const ALIGN: usize = 16;

/// Free lists in front of a backing allocator (talc, in a plugin).
pub(crate) struct Heap<B> {
    backing: B,
    /// Each class's first free block; a free block's first word points to the next.
    free: [Cell<*mut u8>; CLASSES],
}

/// The plugin's global allocator.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
pub(crate) type PluginHeap = Heap<talc::wasm::WasmDynamicTalc>;

// SAFETY: only for WebAssembly without threads, where no two callers can ever reach the
// lists at once.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
unsafe impl Sync for PluginHeap {}

#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
impl PluginHeap {
    pub(crate) const fn new() -> PluginHeap {
        Heap::over(talc::wasm::new_wasm_dynamic_allocator())
    }
}

impl<B> Heap<B> {
    const fn over(backing: B) -> Heap<B> {
        Heap {
            backing,
            free: [const { Cell::new(ptr::null_mut()) }; CLASSES],
        }
    }
}

/// The class of a block of `layout`, if it is small.
#[inline(always)]
fn class(layout: Layout) -> Option<usize> {
    if layout.size() > LARGEST || layout.align() > ALIGN {
        return None;
    }
    let size = layout.size().max(1 << SMALLEST_SHIFT);
    // The smallest power of two at least `size`: its exponent, less the smallest's.
    let shift = usize::BITS - (size - 1).leading_zeros();
    Some((shift - SMALLEST_SHIFT) as usize)
}

/// The layout talc is asked for when a class's list is empty; `class` is one [`class`] gave.
#[inline(always)]
fn class_layout(class: usize) -> Layout {
    debug_assert!(class < CLASSES, "class {class} out of range");
    // SAFETY: `class` < `CLASSES`, so the size is a power of two from 16 to `LARGEST`,
    // aligned to 16: a valid layout.
    unsafe { Layout::from_size_align_unchecked(1 << (class + SMALLEST_SHIFT as usize), ALIGN) }
}

// SAFETY: small blocks are handed out once until freed (a list holds only freed blocks), and
// are at least the class's size and aligned to 16; everything else is the backing's.
unsafe impl<B: GlobalAlloc> GlobalAlloc for Heap<B> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class(layout) else {
            // SAFETY: the caller's layout, passed on.
            return unsafe { self.backing.alloc(layout) };
        };
        let head = self.free[class].get();
        if head.is_null() {
            // SAFETY: a valid, non-zero layout.
            return unsafe { self.backing.alloc(class_layout(class)) };
        }
        // SAFETY: `head` is a free block of this class, which `dealloc` wrote the next one's
        // address into; it is aligned to 16.
        self.free[class].set(unsafe { head.cast::<*mut u8>().read() });
        head
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match class(layout) {
            Some(class) => {
                // SAFETY: `block` was allocated by `alloc` for a layout of this class, so it is
                // at least 16 bytes, aligned to 16, and no longer used by the caller.
                unsafe { block.cast::<*mut u8>().write(self.free[class].get()) };
                self.free[class].set(block);
            }
            // SAFETY: a large block was the backing's, allocated for this layout.
            None => unsafe { self.backing.dealloc(block, layout) },
        }
    }

    #[inline]
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees that `new_size`, rounded up to the alignment, does not
        // overflow `isize`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let (old, new) = (class(layout), class(new_layout));
        if old.is_some() && old == new {
            // The block already has room for the new size.
            return block;
        }
        if old.is_none() && new.is_none() {
            // SAFETY: a large block was the backing's, and stays the backing's.
            return unsafe { self.backing.realloc(block, layout, new_size) };
        }
        // SAFETY: as `alloc` and `dealloc`; the copy is the smaller of the two sizes, both
        // blocks being valid for it and distinct.
        unsafe {
            let moved = self.alloc(new_layout);
            if !moved.is_null() {
                ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn freed_blocks_are_reused_by_their_class_only() {
        let heap = Heap::over(std::alloc::System);
        unsafe {
            let a = heap.alloc(layout(24, 8));
            let b = heap.alloc(layout(24, 8));
            assert!(!a.is_null() && !b.is_null() && a != b);
            assert_eq!(a as usize % ALIGN, 0);
            a.write_bytes(0xaa, 32);
            b.write_bytes(0xbb, 32);
            heap.dealloc(a, layout(24, 8));
            // Another size in the same class (17..=32) gets the freed block; another class not.
            let c = heap.alloc(layout(64, 8));
            assert_ne!(c, a);
            let d = heap.alloc(layout(32, 16));
            assert_eq!(d, a);
            assert_eq!(b.read(), 0xbb, "a live block is untouched");
            // Growing within the class keeps the block; past it moves the contents.
            d.write_bytes(7, 20);
            assert_eq!(heap.realloc(d, layout(20, 1), 30), d);
            let moved = heap.realloc(d, layout(30, 1), 100);
            assert_ne!(moved, d);
            assert_eq!(std::slice::from_raw_parts(moved, 20), &[7; 20]);
            // Into a large block and back.
            let large = heap.realloc(moved, layout(100, 1), LARGEST * 2);
            assert_eq!(std::slice::from_raw_parts(large, 20), &[7; 20]);
            let small = heap.realloc(large, layout(LARGEST * 2, 1), 10);
            assert_eq!(std::slice::from_raw_parts(small, 10), &[7; 10]);
            for (block, size) in [(b, 24), (c, 64), (small, 10)] {
                heap.dealloc(block, layout(size, 1));
            }
            // Zeroed memory is zeroed even when it comes from a list.
            let z = heap.alloc_zeroed(layout(24, 8));
            assert_eq!(std::slice::from_raw_parts(z, 24), &[0; 24]);
            heap.dealloc(z, layout(24, 8));
        }
    }

    #[test]
    fn sizes_fall_in_the_smallest_class_that_holds_them() {
        assert_eq!(class(layout(1, 1)), Some(0));
        assert_eq!(class(layout(16, 8)), Some(0));
        assert_eq!(class(layout(17, 1)), Some(1));
        assert_eq!(class(layout(32, 16)), Some(1));
        assert_eq!(class(layout(33, 4)), Some(2));
        assert_eq!(class(layout(LARGEST, 1)), Some(CLASSES - 1));
        assert_eq!(class(layout(LARGEST + 1, 1)), None);
        assert_eq!(class(layout(8, 32)), None);
        for class in 0..CLASSES {
            let l = class_layout(class);
            assert_eq!(super::class(l), Some(class));
            assert_eq!(l.align(), ALIGN);
        }
    }
}
