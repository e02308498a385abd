//! Counters a proxy can export, and their snapshot.
//!
//! Every routing decision bumps a counter; one shared atomic per counter would bounce its cache
//! line between all cores on every request. Each counter is striped over `STRIPES` cache-padded
//! cells, a thread picks its cell once (a hash of its id, at first use), and a snapshot sums the cells.
//! `Relaxed`, with one exception: counters publish nothing, and a snapshot taken while requests
//! run is a moment's approximation by nature. The exception is `eviction_passes`, bumped last
//! with `Release` at the end of an eviction and read first with `Acquire` by a snapshot, so a reader
//! that sees an eviction counted also sees what it did (its evicted counts and the smaller trees).
//! Loom found this: with all-`Relaxed` counters a snapshot could report a finished eviction next to
//! the tree sizes from before it.

use crate::constants::STRIPES;
use crate::sync::{AtomicU64, AtomicUsize, Ordering};
use crossbeam_utils::CachePadded;
use std::fmt;

fn my_stripe() -> usize {
    thread_local! {
        static STRIPE: usize = {
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one(std::thread::current().id()) as usize % STRIPES
        };
    }
    STRIPE.with(|s| *s)
}

/// A counter that many threads bump at once.
pub(crate) struct StripedCounter {
    cells: [CachePadded<AtomicU64>; STRIPES],
}

impl StripedCounter {
    pub(crate) fn new() -> Self {
        Self {
            cells: std::array::from_fn(|_| CachePadded::new(AtomicU64::new(0))),
        }
    }

    pub(crate) fn add(&self, n: u64) {
        self.cells[my_stripe()].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.cells.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// The policy's counters.
pub(crate) struct Counters {
    pub(crate) cache_hits: StripedCounter,
    pub(crate) cache_misses: StripedCounter,
    pub(crate) load_balancing_events: StripedCounter,
    pub(crate) no_worker: StripedCounter,
    pub(crate) eviction_passes: AtomicUsize,
    pub(crate) evicted_chars: AtomicUsize,
    pub(crate) evicted_nodes: AtomicUsize,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            cache_hits: StripedCounter::new(),
            cache_misses: StripedCounter::new(),
            load_balancing_events: StripedCounter::new(),
            no_worker: StripedCounter::new(),
            eviction_passes: AtomicUsize::new(0),
            evicted_chars: AtomicUsize::new(0),
            evicted_nodes: AtomicUsize::new(0),
        }
    }
}

/// One worker's counters at the time of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    /// The worker's URL.
    pub url: String,
    /// The model tree it belongs to (`"default"` for the default model).
    pub model: String,
    /// Requests in flight (its load).
    pub in_flight: usize,
    /// Requests routed to it so far.
    pub routed: usize,
    /// Whether it is healthy.
    pub healthy: bool,
    /// Chars its model's text tree attributes to it.
    pub cached_chars: usize,
    /// Prompt chars of requests routed to it that have not had their first token (native API
    /// tickets; 0 for a worker that keeps no work counters).
    pub queued_prefill_chars: usize,
    /// Requests past their first token and not finished (native API tickets).
    pub decoding: usize,
}

/// The policy's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Decisions that followed a cached prefix (match ratio above the threshold).
    pub cache_hits: u64,
    /// Decisions made on a miss (routed by load).
    pub cache_misses: u64,
    /// Decisions where the imbalance rule overrode the cache.
    pub load_balancing_events: u64,
    /// Requests refused because no healthy worker was available.
    pub no_worker: u64,
    /// Evictions that freed something: by a request that took its tree over budget, by the
    /// evictor's tick, or by `run_eviction`.
    pub eviction_passes: usize,
    /// Units freed by eviction, summed over tenants: chars, plus tokens and blocks where the
    /// token and block trees (`route_tokens`, `route_blocks`) evicted.
    pub evicted_chars: usize,
    /// Tree nodes unlinked by eviction.
    pub evicted_nodes: usize,
    /// Chars stored per model text tree.
    pub tree_chars: Vec<(String, usize)>,
    /// Per registered worker (removed workers are left out).
    pub workers: Vec<WorkerStats>,
}

impl fmt::Debug for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counters")
            .field("cache_hits", &self.cache_hits.get())
            .field("cache_misses", &self.cache_misses.get())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(router_loom)))]
mod tests {
    use super::*;

    #[test]
    fn striped_counter_sums_across_threads() {
        let c = StripedCounter::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        c.add(1);
                    }
                });
            }
        });
        assert_eq!(c.get(), 4000);
    }
}
