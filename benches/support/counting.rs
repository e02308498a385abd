//! A global allocator that counts the bytes live in the process, over any other allocator
//! (requested sizes; the allocator's own headers are not counted).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering};

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// Declare as the bench's `#[global_allocator]`: `Counting(System)`, `Counting(MiMalloc)`.
pub(crate) struct Counting<A>(pub(crate) A);

/// Bytes allocated and not yet freed, process-wide.
pub(crate) fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

// SAFETY: forwards every call to the wrapped allocator unchanged and only counts bytes.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { self.0.realloc(ptr, layout, new) }
    }
}
