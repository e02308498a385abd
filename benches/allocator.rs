//! mimalloc vs the system allocator for our engine, in one run. The library never sets a global
//! allocator; this bench installs a dispatcher that sends new allocations to mimalloc or to the
//! system allocator by a flag, and frees each block with the allocator that owns it
//! (`mi_is_in_heap_region`). Rounds alternate allocators; medians are compared.
//!
//! It also gives thread scaling under each allocator, measured so that the machine's drift
//! cancels: every round replays cold (a fresh router) at 1, 2, 4 and 8 threads in a random
//! order, under both allocators, next to the floor at the same thread count. Criterion's
//! figures in `routing` are taken seconds apart per thread count, and their ratios carry the
//! drift of a shared machine; these come from the same rounds.
//!
//! `cargo bench --bench allocator` (`BENCH_ROUNDS`, default 15).
#![allow(missing_docs)]

mod baseline;
mod support;

use mimalloc::MiMalloc;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

const THREADS: [usize; 4] = [1, 2, 4, 8];

fn main() {
    let rounds = support::env("BENCH_ROUNDS", 15);
    let workloads = [
        ("shared-prefix", shared_prefix()),
        ("mooncake", mooncake(256).0),
    ];
    println!("{rounds} rounds; scaling: median replay time at 1 thread / at n, per allocator\n");
    println!("| workload      | threads | system (ms) | mimalloc (ms) | system / mimalloc | floor scaling | system scaling | mimalloc scaling |");
    println!("|---------------|---------|-------------|---------------|-------------------|---------------|----------------|------------------|");
    let mut rng = support::Rng::new(7);
    for (name, texts) in &workloads {
        let copies = texts.clone();
        // [thread count][system, mimalloc, floor]: ms per replay.
        let mut ms = vec![[Vec::new(), Vec::new(), Vec::new()]; THREADS.len()];
        for round in 0..rounds {
            // Every round visits each thread count, in a fresh random order, under both
            // allocators (which first alternates): drift and whatever one replay leaves behind
            // fall on every cell alike.
            let mut order: Vec<usize> = (0..THREADS.len()).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.next() as usize % (i + 1));
            }
            for &k in &order {
                for turn in 0..2 {
                    let use_mi = (round + turn) % 2 == 1;
                    USE_MIMALLOC.store(use_mi, Ordering::Relaxed);
                    let router = Ours::new(8, 0, 1 << 40);
                    let d = replay(&router, texts, THREADS[k]);
                    drop(router);
                    ms[k][use_mi as usize].push(d.as_secs_f64() * 1e3);
                }
                USE_MIMALLOC.store(false, Ordering::Relaxed);
                let floor = support::parallel_floor(texts, &copies, THREADS[k]);
                ms[k][2].push(floor.as_secs_f64() * 1e3);
            }
        }
        let med: Vec<[f64; 3]> = ms
            .iter_mut()
            .map(|[s, m, f]| [median(s), median(m), median(f)])
            .collect();
        for (k, t) in THREADS.iter().enumerate() {
            let [s, m, f] = med[k];
            println!(
                "| {name:<13} | {t:>7} | {s:>11.2} | {m:>13.2} | {:>16.2}x | {:>12.2}x | {:>13.2}x | {:>15.2}x |",
                s / m,
                med[0][2] / f,
                med[0][0] / s,
                med[0][1] / m,
            );
        }
    }
}
