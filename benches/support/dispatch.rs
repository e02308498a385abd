//! A global allocator that a bench switches between mimalloc and the system's at run time:
//! each block goes back to the allocator that owns it, so switching at any point is safe.

use mimalloc::MiMalloc;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

static USE_MIMALLOC: AtomicBool = AtomicBool::new(false);

/// New blocks come from mimalloc from now on if `on`, else from the system allocator.
pub(crate) fn use_mimalloc(on: bool) {
    USE_MIMALLOC.store(on, Ordering::Relaxed);
}

/// Declare as the bench's `#[global_allocator]`.
pub(crate) struct Dispatch;

fn owned_by_mimalloc(ptr: *mut u8) -> bool {
    // SAFETY: a query on any pointer value; it does not dereference it.
    unsafe { libmimalloc_sys::mi_is_in_heap_region(ptr as *const _) }
}

// SAFETY: every block is allocated by one of two allocators and returned to the one that owns
// it, which `owned_by_mimalloc` decides without dereferencing.
unsafe impl GlobalAlloc for Dispatch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        unsafe {
            if USE_MIMALLOC.load(Ordering::Relaxed) {
                MiMalloc.alloc(layout)
            } else {
                System.alloc(layout)
            }
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from the allocator that owns it.
        unsafe {
            if owned_by_mimalloc(ptr) {
                MiMalloc.dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        // SAFETY: a block is resized by the allocator that owns it.
        unsafe {
            if owned_by_mimalloc(ptr) {
                MiMalloc.realloc(ptr, layout, new)
            } else {
                System.realloc(ptr, layout, new)
            }
        }
    }
}
