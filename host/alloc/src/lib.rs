//! weir's global allocator: mimalloc, asked for an alignment only when a block's own is not
//! enough. Kept apart so that `weir-host` itself can forbid `unsafe` code.
//!
//! The `mimalloc` crate's allocator passes every Rust allocation to `mi_malloc_aligned`,
//! alignment 8 included. That call's fast path serves only blocks of at most 1 KiB; a larger
//! one (hyper's read buffers, a connection's boxed request future) goes through mimalloc's
//! generic aligned path, which rounds the size up and tests it for natural alignment, and
//! unless it is a power of two allocates `size + align - 1` and aligns by hand: 203
//! instructions a call, about 110 above `mi_malloc` (BENCHMARKS.md, session 33). Every block
//! mimalloc hands out is aligned to a word (its size classes are whole words, and blocks sit
//! at whole-block offsets from a slice's start), so an alignment of at most a word needs no
//! aligned call: mimalloc's own `mi_realloc_aligned` takes the same shortcut.
//!
//! This holds for mimalloc as the workspace builds it. Its precise guard pages (libmimalloc-sys's
//! `debug` features with `MIMALLOC_GUARDED_PRECISE`) place a block against a guard page at any
//! byte, so those features must not be enabled with this allocator; debug builds check each
//! block's alignment.

#![deny(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block has (`MI_INTPTR_SIZE`).
const WORD: usize = size_of::<usize>();

/// The global allocator: `#[global_allocator] static A: weir_alloc::Mimalloc = weir_alloc::Mimalloc;`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Mimalloc;

#[expect(
    unsafe_code,
    reason = "a global allocator is an unsafe trait over mimalloc's C functions"
)]
// SAFETY: each call hands mimalloc a size and, past a word, the layout's alignment; mimalloc
// returns null or a block of at least that size at that alignment (a word at least, for the
// unaligned calls), and `mi_free` takes any block it returned, whatever call made it.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        let block = unsafe {
            if layout.align() <= WORD {
                mi::mi_malloc(layout.size())
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align())
            }
        };
        checked(block, layout)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        let block = unsafe {
            if layout.align() <= WORD {
                mi::mi_zalloc(layout.size())
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align())
            }
        };
        checked(block, layout)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator; the block keeps the layout's alignment.
        let block = unsafe {
            if layout.align() <= WORD {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size)
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align())
            }
        };
        checked(block, layout)
    }
}

/// `block` as Rust's pointer, checked in debug builds to have `layout`'s alignment (null, for
/// an allocation that failed, has any).
#[inline]
fn checked(block: *mut c_void, layout: Layout) -> *mut u8 {
    debug_assert!(
        (block as usize).is_multiple_of(layout.align()),
        "mimalloc block misaligned"
    );
    block.cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes around mimalloc v3's size classes: tiny, the 1 KiB end of the aligned fast path,
    /// the 10 KiB end of small pages, the end of medium pages, 512 KiB (past it a block has a
    /// page of its own) and a few MiB.
    const SIZES: [usize; 20] = [
        1,
        7,
        8,
        9,
        16,
        24,
        40,
        48,
        100,
        1024,
        1025,
        8_192,
        8_656,
        10_240,
        10_241,
        86_698,
        86_699,
        524_288,
        524_289,
        4 << 20,
    ];

    /// Allocates, writes, grows, shrinks and frees blocks of every alignment from 1 to 4 KiB
    /// and each of [`SIZES`], checking each address.
    #[test]
    #[expect(unsafe_code, reason = "calls the allocator directly")]
    fn blocks_have_their_alignment_and_keep_their_bytes() {
        let a = Mimalloc;
        for align in (0..13).map(|shift| 1usize << shift) {
            for size in SIZES {
                let layout = Layout::from_size_align(size, align).expect("a valid layout");
                // SAFETY: a non-zero size; each block is written within its size and freed once.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xab, size);
                    let q = a.realloc(p, layout, 2 * size);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "grown: size {size} align {align}");
                    assert_eq!(*q.add(size - 1), 0xab);
                    let grown = Layout::from_size_align_unchecked(2 * size, align);
                    let r = a.realloc(q, grown, size.div_ceil(2));
                    assert!(!r.is_null());
                    assert_eq!(r as usize % align, 0, "shrunk: size {size} align {align}");
                    assert_eq!(*r, 0xab);
                    a.dealloc(
                        r,
                        Layout::from_size_align_unchecked(size.div_ceil(2), align),
                    );
                    let z = a.alloc_zeroed(layout);
                    assert!(!z.is_null());
                    assert_eq!(z as usize % align, 0, "zeroed: size {size} align {align}");
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }

    /// Many small blocks live at once, so most come from deep in their pages, not the first:
    /// each is aligned to a word.
    #[test]
    #[expect(unsafe_code, reason = "calls the allocator directly")]
    fn blocks_deep_in_a_page_are_word_aligned() {
        let a = Mimalloc;
        for size in [1, 8, 12, 24, 40, 56] {
            let layout = Layout::from_size_align(size, WORD).expect("a valid layout");
            // SAFETY: non-zero sizes; every block is freed once, with its layout.
            unsafe {
                let blocks: Vec<*mut u8> = (0..10_000).map(|_| a.alloc(layout)).collect();
                for &p in &blocks {
                    assert!(!p.is_null());
                    assert_eq!(p as usize % WORD, 0, "size {size}");
                }
                for p in blocks {
                    a.dealloc(p, layout);
                }
            }
        }
    }
}
