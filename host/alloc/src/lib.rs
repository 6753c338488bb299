//! weir's global allocator: mimalloc, asked for an alignment only when a block's own is not
//! enough. Kept apart so that `weir-host` itself can forbid `unsafe` code.
//!
//! The `mimalloc` crate's allocator passes every Rust allocation to `mi_malloc_aligned`,
//! alignment 8 included. mimalloc takes that call's fast path only when a free block of the
//! size class happens to sit at the alignment and the size is at most 1 KiB; anything larger
//! (hyper's read buffers, a connection's boxed future) goes through its generic aligned path,
//! which rounds the size up, over-allocates and aligns by hand: about 270 instructions
//! where `mi_malloc` takes the size class's free list (BENCHMARKS.md, session 33). Every
//! block mimalloc hands out is aligned to a word (its size classes are whole words and a
//! page's first block is 16-aligned), so an alignment of at most a word needs no aligned call.

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
        block.cast()
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
        block.cast()
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
        block.cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allocates, writes, grows and frees blocks of every alignment from 1 to 4 KiB and sizes
    /// around mimalloc's size classes and its small/large boundary, checking each address.
    #[test]
    #[expect(unsafe_code, reason = "calls the allocator directly")]
    fn blocks_have_their_alignment_and_keep_their_bytes() {
        let a = Mimalloc;
        for align in (0..13).map(|shift| 1usize << shift) {
            for size in [
                1, 7, 8, 9, 16, 24, 40, 48, 100, 1024, 1025, 8_192, 8_656, 70_000,
            ] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
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
                    a.dealloc(q, Layout::from_size_align_unchecked(2 * size, align));
                    let z = a.alloc_zeroed(layout);
                    assert!(!z.is_null());
                    assert_eq!(z as usize % align, 0, "zeroed: size {size} align {align}");
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
