//! Loom models of the policy's protocols: worker load counters and the load ticket, evictor
//! shutdown, the evictor's wake-up, and passes run in requests' pieces. Built only under `--cfg router_loom --cfg crossbeam_loom`:
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

/// Model 7: dropping the policy while the evictor may be in the middle of a pass (woken by a
/// request that crossed the budget) stops and joins the thread: no deadlock, no thread left.
#[test]
fn dropping_the_policy_during_a_pass_joins_the_evictor() {
    loom::model(|| {
        let p = policy(3600, 1);
        let w: Arc<dyn Worker> = Arc::new(BasicWorkerBuilder::new("http://w").build());
        p.register_worker(w).unwrap();
        drop(p.route("", "ab").unwrap()); // 2 chars > 1: wakes the evictor
        drop(p); // must return in every interleaving
    });
}

/// Model 8: a wake sent while the evictor sleeps is never lost: after a request crosses the
/// budget, the evictor opens a pass even though the tick never comes (loom's timed waits never
/// time out), the requests that follow run it in pieces (routing an empty text inserts
/// nothing, so the tree stays over budget only until the pass), and the piece that finishes it
/// closes and records it.
#[test]
fn a_wake_sent_while_the_evictor_sleeps_is_never_lost() {
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

/// Model 11: a crossing whose wake the evictor takes while it still waits on a pass that the
/// pass's last piece has closed gets its own pass: the evictor looks at the trees after each
/// run (`needs_pass`). Without that look it would sleep with the tree over budget and the
/// flag that silences further wakes set, and this model would never end.
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
