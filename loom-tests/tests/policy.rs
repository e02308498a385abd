//! Loom models of the policy's protocols: worker load counters and the load ticket, evictor
//! shutdown, requests that evict concurrently, and the work counters of the load ticket. Built only under `--cfg router_loom --cfg crossbeam_loom`:
//! run `bash .ci/loom`. Workers are registered before threads start (registration takes std
//! locks that loom does not model).
#![cfg(router_loom)]

use cache_aware_router::{BasicWorkerBuilder, CacheAwareConfig, CacheAwarePolicy, Worker};
use loom::thread;
use std::sync::Arc;

/// Models whose requests evict: each eviction takes a few hundred loom branches, more than
/// loom's default limit of 1,000 allows.
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

/// Model 7: dropping the policy while a request evicts (it took the tree over budget) stops
/// and joins the evictor thread: no deadlock, no thread left.
#[test]
fn dropping_the_policy_while_a_request_evicts_joins_the_evictor() {
    loom::model(|| {
        let p = policy(3600, 1);
        let w: Arc<dyn Worker> = Arc::new(BasicWorkerBuilder::new("http://w").build());
        p.register_worker(w).unwrap();
        let a = {
            let p = p.clone();
            thread::spawn(move || drop(p.route("", "ab").unwrap()))
        };
        a.join().unwrap();
        drop(p); // must return in every interleaving
    });
}

/// Model 8: two requests take the tree over its budget at once ("ab" and "cd" against a
/// budget of 3 chars); each evicts after its own insert, concurrently. Whatever the
/// interleaving, the tree ends within its budget, every eviction is counted, and what the
/// counters say was evicted is what left the tree.
#[test]
fn two_requests_over_budget_evict_concurrently() {
    model_with_routing_loop(|| {
        let p = policy(3600, 3);
        let w: Arc<dyn Worker> = Arc::new(BasicWorkerBuilder::new("http://w").build());
        p.register_worker(w).unwrap();
        let a = {
            let p = p.clone();
            thread::spawn(move || drop(p.route("", "ab").unwrap()))
        };
        drop(p.route("", "cd").unwrap());
        a.join().unwrap();
        let m = p.metrics();
        assert!(m.tree_chars[0].1 <= 3, "{m:?}");
        assert_eq!(m.tree_chars[0].1 + m.evicted_chars, 4, "{m:?}");
        assert!(m.eviction_passes >= 1, "{m:?}");
    });
}

/// Model 15: the work counters, with two threads reporting one ticket's first token at once
/// while another request comes and goes on the same worker. The first token is taken once (an
/// atomic swap), so the work moves once: the counters never read above what is in flight, and
/// end at zero. With `router_loom_broken_first_token` (a load and a store) both reports move
/// it, and the queued prefill wraps below zero.
#[test]
fn work_counters_with_first_token_and_drop_racing() {
    model_with_routing_loop(|| {
        let p = policy(0, 1 << 20);
        let w: Arc<dyn Worker> = Arc::new(BasicWorkerBuilder::new("http://w").build());
        p.register_worker(w.clone()).unwrap();
        let ticket = Arc::new(p.route("", "ab").unwrap());
        let other = {
            let p = p.clone();
            thread::spawn(move || {
                let t = p.route("", "cd").unwrap();
                t.first_token();
            })
        };
        let reporter = {
            let ticket = ticket.clone();
            thread::spawn(move || ticket.first_token())
        };
        let mine = ticket.first_token();
        let work = w.work().unwrap();
        assert!(work.queued_prefill() <= 4, "{}", work.queued_prefill());
        assert!(work.decoding() <= 2, "{}", work.decoding());
        let theirs = reporter.join().unwrap();
        assert!(mine ^ theirs, "exactly one report counts");
        other.join().unwrap();
        drop(ticket);
        assert_eq!(
            (w.load(), work.queued_prefill(), work.decoding()),
            (0, 0, 0)
        );
    });
}
