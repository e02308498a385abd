//! Allocation behaviour, watched by a counting global allocator: the match path allocates
//! nothing (`match_counts` and a cache-hit `match_and_insert`), dropping a policy frees its
//! trees in the dropping thread, not later inside some other request, what a request evicts is
//! freed by that request's thread (bytes follow chars), and what `run_eviction` evicts by its
//! caller.

mod common;

use cache_aware_router::{CacheAwareConfig, CacheAwarePolicy, LoadBalancingPolicy, Tree, Worker};
use common::fleet;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::{Arc, Mutex};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
    static FREED_BYTES: Cell<usize> = const { Cell::new(0) };
    static FREED_LARGE_BYTES: Cell<usize> = const { Cell::new(0) };
}

/// Blocks at least this large count as large frees: labels of long prompts, not the small
/// arrays and closures a request frees of its own.
const LARGE: usize = 4096;

// SAFETY: forwards to the system allocator; only counts calls on the current thread.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = FREED_BYTES.try_with(|c| c.set(c.get() + layout.size()));
        if layout.size() >= LARGE {
            let _ = FREED_LARGE_BYTES.try_with(|c| c.set(c.get() + layout.size()));
        }
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `test` alone and leaves crossbeam-epoch's garbage queue drained. What these tests count
/// is what one thread frees, and that queue is the process's: a pin in one test's thread can run
/// the frees another test (its trees' replaced nodes, its passes' batches) deferred.
fn isolated(test: impl FnOnce()) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    test();
    // Each flush pushes this thread's bag, advances the epoch if it can and frees a few expired
    // bags; the policies the test built are dropped, their evictors joined.
    for _ in 0..1024 {
        crossbeam_epoch::pin().flush();
    }
}

fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

fn bytes_freed_in(f: impl FnOnce()) -> usize {
    let before = FREED_BYTES.with(Cell::get);
    f();
    FREED_BYTES.with(Cell::get) - before
}

fn large_bytes_freed_in(f: impl FnOnce()) -> usize {
    let before = FREED_LARGE_BYTES.with(Cell::get);
    f();
    FREED_LARGE_BYTES.with(Cell::get) - before
}

/// A policy with a 100 K-char budget and 4 workers, and 3,000 distinct 8 KB prompts: every
/// label the tree stores is at least 8 KB, and nothing else a routing thread frees is that large
/// (the prompts are made, and later dropped, outside the measured loops).
fn evicting_policy() -> (CacheAwarePolicy, Vec<Arc<dyn Worker>>, Vec<String>) {
    let policy = CacheAwarePolicy::with_config(CacheAwareConfig {
        eviction_interval_secs: 3600,
        max_tree_size: 100_000,
        ..CacheAwareConfig::default()
    });
    let workers = fleet(4);
    policy.init_workers(&workers);
    let prompts = (0..3000)
        .map(|i| format!("{i:05} {}", "y".repeat(8 * 1024)))
        .collect();
    (policy, workers, prompts)
}

/// The request that evicts frees what it evicts, in its own thread, as it goes: the large
/// blocks a routing thread frees add up to most of the chars it evicted (the rest waits in its
/// epoch bag, a bounded amount), and none pile up in a queue for someone else.
#[test]
fn requests_free_what_they_evict_as_they_go() {
    isolated(|| {
        let (policy, workers, prompts) = evicting_policy();
        let freed_here = large_bytes_freed_in(|| {
            for p in &prompts {
                policy.select_worker(&workers, Some(p));
            }
        });
        let m = policy.metrics();
        let evicted = m.evicted_chars;
        assert!(evicted > 1_000_000, "requests evicted only {evicted} chars");
        assert!(m.tree_chars[0].1 <= 100_000, "over budget: {m:?}");
        assert!(
            freed_here > evicted * 9 / 10,
            "the routing thread freed {freed_here} bytes of large blocks; it evicted {evicted} chars"
        );
    });
}

/// With no evictor thread, `run_eviction` called from a maintenance thread between batches of
/// requests frees what it evicts there (what one call unlinks, the next frees), not in the
/// routing thread that collects the epoch's garbage.
#[test]
fn run_eviction_frees_what_it_evicts_in_its_own_thread_not_in_requests() {
    isolated(|| {
        let policy = CacheAwarePolicy::with_config(CacheAwareConfig {
            eviction_interval_secs: 0,
            max_tree_size: 100_000,
            ..CacheAwareConfig::default()
        });
        let workers = fleet(4);
        policy.init_workers(&workers);
        let prompts: Vec<String> = (0..3000)
            .map(|i| format!("{i:05} {}", "y".repeat(8 * 1024)))
            .collect();
        let mut freed_here = 0;
        for batch in prompts.chunks(50) {
            freed_here += large_bytes_freed_in(|| {
                for p in batch {
                    policy.select_worker(&workers, Some(p));
                }
            });
            std::thread::scope(|s| {
                s.spawn(|| policy.run_eviction());
            });
        }
        let evicted = policy.metrics().evicted_chars;
        assert!(
            evicted > 1_000_000,
            "run_eviction evicted only {evicted} chars"
        );
        assert!(
            freed_here < evicted / 10,
            "the routing thread freed {freed_here} bytes of large blocks; {evicted} chars were evicted"
        );
    });
}

#[test]
fn dropping_a_policy_frees_its_trees_in_the_dropping_thread() {
    isolated(|| {
        let policy = CacheAwarePolicy::with_config(CacheAwareConfig {
            eviction_interval_secs: 0,
            ..CacheAwareConfig::default()
        });
        let workers = fleet(4);
        // Each registration retires a version of the tables, which still holds the model's tree;
        // this thread's epoch bag keeps them, since it pins too rarely to collect.
        policy.init_workers(&workers);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..200 {
                    let prompt = format!("{i:03} {}", "x".repeat(1000));
                    policy.select_worker(&workers, Some(&prompt));
                }
            });
        });
        let stored = policy.metrics().tree_chars[0].1;
        assert!(stored > 200_000);
        let freed = bytes_freed_in(|| drop(policy));
        assert!(
            freed >= stored,
            "dropping the policy freed {freed} bytes here; its tree held {stored} chars"
        );
    });
}

#[test]
fn matching_and_cache_hits_do_not_allocate() {
    isolated(|| {
        let tree = Tree::new();
        let w = tree.tenant_id("w").unwrap();
        let prompt = "system: be brief. ".repeat(200);
        let other = format!("{prompt}question one");
        tree.insert(&other, "w");
        tree.insert(&prompt, "w");
        // Warm up this thread's epoch handle (allocated once per thread on first pin).
        tree.match_counts(&prompt);
        let n = allocations_in(|| {
            for _ in 0..100 {
                assert_eq!(tree.match_counts(&other).matched, other.chars().count());
                let out = tree.match_and_insert(&other, |_, holders| holders.iter().next());
                assert_eq!(out.tenant, Some(w));
                tree.match_and_insert("zzz unmatched", |_, _| None);
            }
        });
        assert_eq!(n, 0, "the match path allocated {n} times");
        // The check can fail: recording a new text allocates.
        assert!(allocations_in(|| tree.insert("something new", "w")) > 0);
    });
}
