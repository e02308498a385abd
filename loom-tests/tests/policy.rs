//! Loom models of the policy's protocols: worker load counters and the load ticket, evictor
//! shutdown, passes that requests open and run in pieces, and the evictor's watch over them. Built only under `--cfg router_loom --cfg crossbeam_loom`:
//! run `bash .ci/loom`. Workers are registered before threads start (registration takes std
//! locks that loom does not model).
#![cfg(router_loom)]

use cache_aware_router::{BasicWorkerBuilder, CacheAwareConfig, CacheAwarePolicy, Worker};
use loom::thread;
use std::sync::Arc;

/// Models whose requests loop until a pass has run: each loop routes a request (a few hundred
/// loom branches), more than loom's default limit of 1,000 allows.
fn model_with_routing_loop(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 100_000;
    builder.check(f);
}

fn policy(interval: u64, max_tree_size: usize) -> Arc<CacheAwarePolicy> {
    Arc::new(CacheAwarePolicy::with_config(CacheAwareConfig {
        eviction_interval_secs: interval,
        max_tree_size,
        ..CacheAwareConfig::default()
    }))
}

/// Model 6: two threads route through the native API, each holding a ticket, while a third
/// party bumps and drops the load by hand. Every increment is matched by one decrement, so the
/// load ends at exactly 0 and `processed` counts both routes.
#[test]
fn load_counters_and_ticket_drops_balance() {
    loom::model(|| {
        let p = policy(0, 1 << 20);
        let w: Arc<dyn Worker> = Arc::new(BasicWorkerBuilder::new("http://w").build());
        p.register_worker(w.clone()).unwrap();
        let a = {
            let p = p.clone();
            thread::spawn(move || drop(p.route("", "").unwrap()))
        };
        let ticket = p.route("", "").unwrap();
        w.increment_load();
        w.decrement_load();
        drop(ticket);
        a.join().unwrap();
        assert_eq!(w.load(), 0);
        assert_eq!(w.processed_requests(), 2);
    });
}

/// Model 7: dropping the policy while the evictor may be watching a pass (woken by the request
/// that crossed the budget and opened it) stops and joins the thread, which closes the pass:
/// no deadlock, no thread left.
#[test]
fn dropping_the_policy_during_a_pass_joins_the_evictor() {
    loom::model(|| {
        let p = policy(3600, 1);
        let w: Arc<dyn Worker> = Arc::new(BasicWorkerBuilder::new("http://w").build());
        p.register_worker(w).unwrap();
        drop(p.route("", "ab").unwrap()); // 2 chars > 1: opens a pass, wakes the evictor
        drop(p); // must return in every interleaving
    });
}

/// Model 8: a request that crosses the budget opens a pass, the requests that follow run it in
/// pieces (routing an empty text inserts nothing, so the tree stays over budget only until the
/// pass), and the piece that finishes it closes and records it, whatever the evictor's watch
/// does meanwhile (it may finish the pass itself).
#[test]
fn a_pass_a_request_opens_is_run_and_recorded() {
    model_with_routing_loop(|| {
        let p = policy(3600, 1);
        let w: Arc<dyn Worker> = Arc::new(BasicWorkerBuilder::new("http://w").build());
        p.register_worker(w).unwrap();
        drop(p.route("", "ab").unwrap());
        while p.metrics().eviction_passes == 0 {
            drop(p.route("", "").unwrap());
            thread::yield_now();
        }
        let m = p.metrics();
        assert!(m.tree_chars[0].1 <= 1, "{m:?}");
    });
}

/// Model 11: a crossing after a piece closed the tree's pass gets the next pass: the request
/// that finds the tree over budget with no pass open opens one, whatever the evictor's watch is
/// doing (looking, finishing the first pass, running a whole pass, or asleep). Counted passes
/// evict what they saw counted: with a `Relaxed` tree total a look's whole pass read the total
/// over budget, saw none of the insert that made it so, and evicted nothing.
#[test]
fn a_crossing_after_a_piece_closed_the_pass_gets_the_next_pass() {
    model_with_routing_loop(|| {
        let p = policy(3600, 1);
        let w: Arc<dyn Worker> = Arc::new(BasicWorkerBuilder::new("http://w").build());
        p.register_worker(w).unwrap();
        for (text, passes) in [("ab", 1), ("cd", 2)] {
            drop(p.route("", text).unwrap());
            while p.metrics().eviction_passes < passes {
                drop(p.route("", "").unwrap());
                thread::yield_now();
            }
        }
        let m = p.metrics();
        assert!(m.tree_chars[0].1 <= 1, "{m:?}");
    });
}

/// Model 12: a request that pushes the tree over budget as the evictor's watch falls asleep gets
/// the tree evicted by the watch even though no request follows: either the watch sees the pass
/// the request opened (or, if the request's opening lost the pass's lock to a look, the tree
/// over budget) after raising `sleeping`, or the request sees `sleeping` and wakes it (the
/// Dekker handshake with `SeqCst` fences, `evictor.rs`). If both missed, the evictor would sleep
/// with the tree over budget (loom's tick never comes) and this model would never end: it runs
/// past the branch limit if only requests that open a pass wake the evictor.
#[test]
fn a_pass_opened_as_the_watch_falls_asleep_is_finished_by_it() {
    model_with_routing_loop(|| {
        let p = policy(3600, 1);
        let w: Arc<dyn Worker> = Arc::new(BasicWorkerBuilder::new("http://w").build());
        p.register_worker(w).unwrap();
        // Opens a pass; the one piece this request runs does not finish it (two work units).
        drop(p.route("", "abcd").unwrap());
        while p.metrics().eviction_passes == 0 {
            thread::yield_now();
        }
        let m = p.metrics();
        assert!(m.tree_chars[0].1 <= 1, "{m:?}");
        assert_eq!(m.passes_finished_by_evictor, 1, "{m:?}");
    });
}
