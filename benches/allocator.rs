//! mimalloc vs the system allocator for our engine, in one run. The library never sets a global
//! allocator; this bench installs a dispatcher that sends new allocations to mimalloc or to the
//! system allocator by a flag, and frees each block with the allocator that owns it
//! (`mi_is_in_heap_region`). Rounds alternate allocators; medians are compared.
//!
//! `cargo bench --bench allocator` (`BENCH_ROUNDS`, default 7).
#![allow(missing_docs)]

mod baseline;
mod support;

use mimalloc::MiMalloc;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::{mooncake, replay, shared_prefix, Ours};

static USE_MIMALLOC: AtomicBool = AtomicBool::new(false);

struct Dispatch;

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

#[global_allocator]
static GLOBAL: Dispatch = Dispatch;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rounds = support::env("BENCH_ROUNDS", 7);
    let workloads = [
        ("shared-prefix", shared_prefix()),
        ("mooncake", mooncake(256).0),
    ];
    println!("| workload      | threads | system (ms) | mimalloc (ms) | system / mimalloc |");
    println!("|---------------|---------|-------------|---------------|-------------------|");
    for (name, texts) in &workloads {
        for threads in [1, 2] {
            let (mut sys, mut mi) = (Vec::new(), Vec::new());
            for round in 0..2 * rounds {
                let use_mi = round % 2 == 1;
                USE_MIMALLOC.store(use_mi, Ordering::Relaxed);
                let router = Ours::new(8, 0, 1 << 40);
                let d = replay(&router, texts, threads);
                drop(router);
                if use_mi {
                    mi.push(d)
                } else {
                    sys.push(d)
                }
            }
            USE_MIMALLOC.store(false, Ordering::Relaxed);
            let (s, m) = (median(sys), median(mi));
            println!(
                "| {name:<13} | {threads:>7} | {:>11.2} | {:>13.2} | {:>16.2}x |",
                s.as_secs_f64() * 1e3,
                m.as_secs_f64() * 1e3,
                s.as_secs_f64() / m.as_secs_f64()
            );
        }
    }
}
