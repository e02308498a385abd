//! The cache-aware policy's rules, its native API, the evictor, and bad input.

use cache_aware_router::{
    BasicWorkerBuilder, CacheAwareConfig, CacheAwarePolicy, ConfigError, IndexError, KvEvent,
    LoadBalancingPolicy, MissRule, RouteError, RoutingMode, SelectionRule, Worker,
};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

fn no_evictor() -> CacheAwareConfig {
    CacheAwareConfig {
        eviction_interval_secs: 0,
        cache_threshold: 0.5,
        ..Default::default()
    }
}

fn workers(n: usize, model: &str) -> Vec<Arc<dyn Worker>> {
    (0..n)
        .map(|i| {
            Arc::new(
                BasicWorkerBuilder::new(format!("http://{model}-w{i}:8000"))
                    .model_id(model)
                    .build(),
            ) as Arc<dyn Worker>
        })
        .collect()
}

#[test]
fn hits_follow_the_cache_and_prefer_the_least_loaded_holder() {
    let policy = CacheAwarePolicy::with_config(no_evictor());
    let ws = workers(3, "");
    policy.init_workers(&ws);
    let prompt = "shared system prompt, long enough to matter. ".repeat(4);
    let first = policy.select_worker(&ws, Some(&prompt)).unwrap();
    for _ in 0..5 {
        assert_eq!(
            policy.select_worker(&ws, Some(&format!("{prompt}q?"))),
            Some(first)
        );
    }
    // A second holder of the same prefix, less loaded than the first: it wins.
    let other = (first + 1) % 3;
    let native = policy.metrics();
    assert_eq!(native.cache_hits, 5);
    // Force `other` to hold the prompt by making it the only eligible worker once.
    ws[first].set_healthy(false);
    ws[(first + 2) % 3].set_healthy(false);
    assert_eq!(policy.select_worker(&ws, Some(&prompt)), Some(other));
    for w in &ws {
        w.set_healthy(true);
    }
    ws[first].increment_load();
    assert_eq!(policy.select_worker(&ws, Some(&prompt)), Some(other));
    ws[first].decrement_load();
    ws[other].increment_load();
    ws[other].increment_load();
    assert_eq!(policy.select_worker(&ws, Some(&prompt)), Some(first));
}

#[test]
fn misses_pick_evenly_among_tied_idle_workers() {
    let policy = CacheAwarePolicy::with_config(no_evictor());
    let ws = workers(8, "");
    let mut counts = [0usize; 8];
    for i in 0..8000 {
        let text = format!("{i:05} a prompt that shares nothing past its number");
        counts[policy.select_worker(&ws, Some(&text)).unwrap()] += 1;
    }
    // 1,000 expected each; a standard deviation is about 30.
    assert!(
        counts.iter().all(|&n| (800..=1200).contains(&n)),
        "ties are not picked evenly: {counts:?}"
    );
}

#[test]
fn misses_spread_over_idle_workers_by_default_and_pile_up_under_the_seed_rule() {
    let spread = CacheAwarePolicy::with_config(no_evictor());
    let piled = CacheAwarePolicy::builder()
        .config(no_evictor())
        .selection(SelectionRule::Threshold)
        .miss_rule(MissRule::SmallestTree)
        .build()
        .unwrap();
    let ws = workers(4, "");
    let (mut a, mut b) = (HashSet::new(), HashSet::new());
    for i in 0..64 {
        let text = format!("{i} distinct prompt with nothing shared");
        a.insert(spread.select_worker(&ws, Some(&text)).unwrap());
        b.insert(piled.select_worker(&ws, Some(&text)).unwrap());
    }
    assert!(a.len() >= 3, "random ties spread misses: {a:?}");
    assert_eq!(
        b,
        HashSet::from([0]),
        "the seed's rule sends every idle miss to one worker"
    );
}

#[test]
fn imbalance_routes_by_load_and_the_tree_still_learns() {
    let policy = CacheAwarePolicy::with_config(CacheAwareConfig {
        balance_abs_threshold: 2,
        balance_rel_threshold: 1.5,
        ..no_evictor()
    });
    let ws = workers(2, "");
    policy.init_workers(&ws);
    let prompt = "a prompt that worker 0 caches first";
    ws[1].increment_load(); // make 0 the least loaded for the first miss
    assert_eq!(policy.select_worker(&ws, Some(prompt)), Some(0));
    ws[1].decrement_load();
    for _ in 0..5 {
        ws[0].increment_load();
    }
    // Imbalanced (5 vs 0): load wins over the cache.
    assert_eq!(policy.select_worker(&ws, Some(prompt)), Some(1));
    assert_eq!(policy.metrics().load_balancing_events, 1);
    for _ in 0..5 {
        ws[0].decrement_load();
    }
    // Balanced again: both hold the prompt now; equal load, either is a hit.
    let before = policy.metrics().cache_hits;
    policy.select_worker(&ws, Some(prompt)).unwrap();
    assert_eq!(policy.metrics().cache_hits, before + 1);
}

#[test]
fn bad_input_never_panics() {
    let policy = CacheAwarePolicy::with_config(no_evictor());
    assert_eq!(policy.select_worker(&[], Some("x")), None, "zero workers");
    let ws = workers(2, "");
    assert!(
        policy.select_worker(&ws, None).is_some(),
        "None text is a miss"
    );
    assert!(
        policy.select_worker(&ws, Some("")).is_some(),
        "empty text is a miss"
    );
    let huge = "x".repeat(4 << 20);
    assert!(policy.select_worker(&ws, Some(&huge)).is_some());
    for w in &ws {
        w.set_healthy(false);
    }
    assert_eq!(policy.select_worker(&ws, Some("x")), None, "all unhealthy");
    assert_eq!(
        policy.metrics().no_worker,
        2,
        "zero workers and all unhealthy"
    );
    policy.remove_worker_by_url("http://never-added");
    policy.remove_worker_by_url("http://never-added");
    policy.evict_cache(0);
    assert_eq!(policy.run_eviction().detached, 0);
}

#[test]
fn removed_workers_are_never_chosen_until_added_again() {
    let policy = CacheAwarePolicy::with_config(no_evictor());
    let ws = workers(2, "");
    policy.init_workers(&ws);
    let prompt = "prompt cached on whichever worker gets it first";
    let first = policy.select_worker(&ws, Some(prompt)).unwrap();
    policy.remove_worker(&*ws[first]);
    policy.remove_worker(&*ws[first]); // twice: no-op
    for _ in 0..10 {
        assert_eq!(policy.select_worker(&ws, Some(prompt)), Some(1 - first));
    }
    policy.remove_worker(&*ws[1 - first]);
    assert_eq!(
        policy.select_worker(&ws, Some(prompt)),
        None,
        "healthy but all removed"
    );
    policy.add_worker(&*ws[first]);
    assert_eq!(policy.select_worker(&ws, Some(prompt)), Some(first));
}

#[test]
fn each_model_routes_within_its_own_tree() {
    let policy = CacheAwarePolicy::with_config(no_evictor());
    let (a, b) = (workers(2, "llama"), workers(2, "qwen"));
    for w in a.iter().chain(&b) {
        policy.register_worker(w.clone()).unwrap();
    }
    let prompt = "the same prompt sent to two models";
    let ta = policy.route("llama", prompt).unwrap();
    let tb = policy.route("qwen", prompt).unwrap();
    assert!(ta.url().contains("llama") && tb.url().contains("qwen"));
    // Each model's tree learned its own copy.
    let m = policy.metrics();
    assert_eq!(m.tree_chars.len(), 2);
    assert!(m
        .tree_chars
        .iter()
        .all(|(_, n)| *n == prompt.chars().count()));
    // A mixed slice (seed API): the model whose tree matches best wins (both match fully; the
    // first registered model wins the tie), and within it the worker holding the prompt.
    let mixed: Vec<_> = a.iter().chain(&b).cloned().collect();
    let i = policy.select_worker(&mixed, Some(prompt)).unwrap();
    assert_eq!(mixed[i].url(), ta.url());
    // A prompt only qwen's tree knows goes to qwen.
    let only_qwen = "a prompt only qwen has seen, long enough";
    drop(policy.route("qwen", only_qwen).unwrap());
    let i = policy.select_worker(&mixed, Some(only_qwen)).unwrap();
    assert_eq!(mixed[i].model_id(), "qwen");
    assert_eq!(
        policy.route("mistral", "x").unwrap_err(),
        RouteError::UnknownModel("mistral".into())
    );
}

#[test]
fn token_and_block_keys_route_by_their_own_trees() {
    let policy = CacheAwarePolicy::with_config(no_evictor());
    let ws = workers(4, "m");
    for w in &ws {
        policy.register_worker(w.clone()).unwrap();
    }
    let system: Vec<u32> = (0..200).map(|i| i * 7 + 1_000_000).collect();
    let first = policy.route_tokens("m", &system).unwrap();
    assert!(!first.cache_hit());
    assert_eq!(first.prefill_chars(), 200, "prefill counted in tokens");
    let home = first.url().to_string();
    drop(first);
    for q in 0..5u32 {
        let mut prompt = system.clone();
        prompt.extend([q, q + 1]);
        let t = policy.route_tokens("m", &prompt).unwrap();
        assert_eq!(
            (t.url(), t.cache_hit(), t.prefill_chars()),
            (&*home, true, 2)
        );
    }
    // Block hashes: a chain of 10 blocks, then the same chain extended by one.
    let chain: Vec<u64> = (0..10).map(|i| u64::MAX - i * 0x1_0000_0001).collect();
    let home_blocks = policy.route_blocks("m", &chain).unwrap().url().to_string();
    let mut longer = chain.clone();
    longer.push(42);
    let t = policy.route_blocks("m", &longer).unwrap();
    assert_eq!(
        (t.url(), t.cache_hit(), t.prefill_chars()),
        (&*home_blocks, true, 1)
    );
    drop(t);
    // The text tree learned nothing; removing a worker takes it out of every tree.
    assert_eq!(policy.metrics().tree_chars, vec![("m".to_string(), 0)]);
    let w = ws.iter().find(|w| w.url() == home).unwrap();
    policy.remove_worker(&**w);
    let t = policy.route_tokens("m", &system).unwrap();
    assert_ne!(t.url(), home);
    assert!(!t.cache_hit());
    assert_eq!(
        policy.route_blocks("other", &chain).unwrap_err(),
        RouteError::UnknownModel("other".into())
    );
}

fn moded(mode: RoutingMode, window: Duration) -> (CacheAwarePolicy, Vec<Arc<dyn Worker>>) {
    let policy = CacheAwarePolicy::builder()
        .config(no_evictor())
        .selection(SelectionRule::Threshold)
        .mode(mode)
        .hybrid_window(window)
        .build()
        .unwrap();
    let ws = workers(3, "m");
    for w in &ws {
        policy.register_worker(w.clone()).unwrap();
    }
    (policy, ws)
}

fn stored(blocks: &[u64]) -> KvEvent {
    KvEvent::Stored {
        parent: None,
        blocks: blocks.to_vec(),
    }
}

#[test]
fn precise_mode_routes_by_what_the_events_say() {
    let (policy, ws) = moded(RoutingMode::Precise, Duration::from_secs(2));
    let (w1, w2) = (ws[1].url(), ws[2].url());
    policy.apply_kv_event("m", w1, &stored(&[1, 2, 3])).unwrap();
    policy.apply_kv_event("m", w2, &stored(&[1])).unwrap();
    let t = policy.route_blocks("m", &[1, 2, 3, 4]).unwrap();
    assert_eq!((t.url(), t.cache_hit(), t.prefill_chars()), (w1, true, 1));
    drop(t);
    // The engine evicted the tail: only the first block is left anywhere, a quarter of the
    // request, under the 0.5 threshold.
    let removed = KvEvent::Removed { blocks: vec![2, 3] };
    policy.apply_kv_event("m", w1, &removed).unwrap();
    assert!(!policy.route_blocks("m", &[1, 2, 3, 4]).unwrap().cache_hit());
    // Precise routing records nothing of its own: without events, the same blocks miss again.
    for _ in 0..2 {
        assert!(!policy.route_blocks("m", &[7, 8, 9]).unwrap().cache_hit());
    }
    // A cleared worker holds nothing.
    policy.apply_kv_event("m", w1, &KvEvent::Cleared).unwrap();
    policy.apply_kv_event("m", w2, &KvEvent::Cleared).unwrap();
    assert!(!policy.route_blocks("m", &[1]).unwrap().cache_hit());
}

#[test]
fn hybrid_mode_predicts_on_route_until_the_window_passes() {
    let (policy, ws) = moded(RoutingMode::Hybrid, Duration::ZERO);
    // No events yet from anyone: the record counts as in approximate routing.
    let home = policy
        .route_blocks("m", &[5, 6, 7])
        .unwrap()
        .url()
        .to_string();
    let t = policy.route_blocks("m", &[5, 6, 7, 8]).unwrap();
    assert_eq!((t.url(), t.cache_hit()), (&*home, true));
    drop(t);
    // Once the worker publishes events, a record older than the (zero) window no longer
    // counts: its events speak for it, and they never stored these blocks.
    policy.apply_kv_event("m", &home, &stored(&[100])).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    assert!(!policy.route_blocks("m", &[5, 6, 7, 8]).unwrap().cache_hit());
    // Its events count, record or not.
    policy
        .apply_kv_event("m", &home, &stored(&[50, 51]))
        .unwrap();
    let t = policy.route_blocks("m", &[50, 51, 52]).unwrap();
    assert_eq!((t.url(), t.cache_hit()), (&*home, true));
    drop(t);
    // Within a window, the record covers what the events have not reported yet.
    let (policy, _) = moded(RoutingMode::Hybrid, Duration::from_secs(60));
    policy
        .apply_kv_event("m", ws[0].url(), &stored(&[1]))
        .unwrap();
    policy
        .apply_kv_event("m", ws[1].url(), &stored(&[1]))
        .unwrap();
    policy
        .apply_kv_event("m", ws[2].url(), &stored(&[1]))
        .unwrap();
    let first = policy
        .route_blocks("m", &[20, 21])
        .unwrap()
        .url()
        .to_string();
    let t = policy.route_blocks("m", &[20, 21, 22]).unwrap();
    assert_eq!((t.url(), t.cache_hit()), (&*first, true));
}

#[test]
fn kv_events_for_unknown_models_or_workers_are_errors() {
    let policy = CacheAwarePolicy::builder()
        .config(no_evictor())
        .index_workers(1)
        .build()
        .unwrap();
    let ws = workers(2, "m");
    for w in &ws {
        policy.register_worker(w.clone()).unwrap();
    }
    let e = stored(&[1]);
    assert_eq!(
        policy.apply_kv_event("other", ws[0].url(), &e),
        Err(IndexError::UnknownModel("other".into()))
    );
    let err = policy.apply_kv_event("m", "http://nobody", &e).unwrap_err();
    assert!(err.to_string().contains("register it"), "{err}");
    policy.apply_kv_event("m", ws[0].url(), &e).unwrap();
    let err = policy.apply_kv_event("m", ws[1].url(), &e).unwrap_err();
    assert!(err.to_string().contains("index_workers"), "{err}");
    let bad = CacheAwarePolicy::builder()
        .index_workers(0)
        .build()
        .unwrap_err();
    assert_eq!(bad, ConfigError::IndexWorkers(0));
}

#[test]
fn replicas_learn_each_others_decisions_and_work() {
    use cache_aware_router::replica::{ReplicaEvent, ReplicaMessage};
    use cache_aware_router::{PeerWork, SyncError};
    let make = || {
        let policy = CacheAwarePolicy::builder()
            .config(no_evictor())
            .selection(SelectionRule::Threshold)
            .build()
            .unwrap();
        let ws = workers(3, "m");
        for w in &ws {
            policy.register_worker(w.clone()).unwrap();
        }
        (policy, ws)
    };
    let (a, _) = make();
    let (b, b_workers) = make();
    let keys = [11u64, 12, 13, 14];
    let routed = a.route_blocks("m", &keys).unwrap();
    let message = |seq, event| ReplicaMessage {
        origin: "a".into(),
        seq,
        event,
    };
    let decision = message(
        1,
        ReplicaEvent::Routed {
            model: "m".into(),
            worker: routed.url().to_string(),
            keys: keys.to_vec(),
        },
    );
    // Through the wire format, as a transport would carry it.
    let decision = ReplicaMessage::decode(&decision.encode().unwrap()).unwrap();
    b.apply_replica(&decision).unwrap();
    let t = b.route_blocks("m", &[11, 12, 13, 14, 15]).unwrap();
    assert_eq!((t.url(), t.cache_hit()), (routed.url(), true));
    drop(t);
    // A's work on its worker counts in B's view of the load.
    let work = |n| {
        message(
            2,
            ReplicaEvent::Work {
                model: "m".into(),
                worker: routed.url().to_string(),
                work: PeerWork {
                    in_flight: n,
                    queued_prefill: 0,
                    decoding: 0,
                },
            },
        )
    };
    b.apply_replica(&work(100)).unwrap();
    let w = b_workers.iter().find(|w| w.url() == routed.url()).unwrap();
    assert_eq!(w.load(), 100);
    // Imbalanced now: B sends even the cached prompt elsewhere.
    assert_ne!(b.route_blocks("m", &keys).unwrap().url(), routed.url());
    b.apply_replica(&work(0)).unwrap();
    assert_eq!(w.load(), 0);
    let stray = ReplicaMessage {
        event: ReplicaEvent::Routed {
            model: "m".into(),
            worker: "http://nowhere".into(),
            keys: vec![1],
        },
        ..decision.clone()
    };
    assert!(matches!(
        b.apply_replica(&stray),
        Err(SyncError::UnknownWorker { .. })
    ));
    let other_model = ReplicaMessage {
        event: ReplicaEvent::Routed {
            model: "x".into(),
            worker: routed.url().to_string(),
            keys: vec![1],
        },
        ..decision
    };
    assert_eq!(
        b.apply_replica(&other_model),
        Err(SyncError::UnknownModel("x".into()))
    );
}

#[test]
fn the_native_ticket_holds_load_until_dropped() {
    let policy = CacheAwarePolicy::with_config(no_evictor());
    let ws = workers(2, "m");
    for w in &ws {
        policy.register_worker(w.clone()).unwrap();
    }
    let t1 = policy.route("m", "hello world").unwrap();
    assert_eq!(t1.worker().load(), 1);
    assert!(!t1.cache_hit());
    let t2 = policy.route("m", "hello world").unwrap();
    assert!(t2.cache_hit() && t2.url() == t1.url());
    assert_eq!(t1.worker().load(), 2);
    let w = t1.worker().clone();
    drop((t1, t2));
    assert_eq!(w.load(), 0);
    let m = policy.metrics();
    let stats = m.workers.iter().find(|s| s.url == w.url()).unwrap();
    assert_eq!(
        (stats.routed, stats.in_flight, stats.cached_chars),
        (2, 0, 11)
    );
    for w in &ws {
        w.set_healthy(false);
    }
    assert_eq!(
        policy.route("m", "x").unwrap_err(),
        RouteError::NoHealthyWorker("m".into())
    );
    assert!(policy
        .route("m", "x")
        .unwrap_err()
        .to_string()
        .contains("healthy"));
}

#[test]
fn invalid_configs_are_errors_with_the_field_named() {
    let bad = CacheAwareConfig {
        cache_threshold: f32::NAN,
        ..Default::default()
    };
    let err = CacheAwarePolicy::try_with_config(bad).unwrap_err();
    assert!(matches!(err, ConfigError::CacheThreshold(_)));
    let bad = CacheAwareConfig {
        max_tree_size: 0,
        ..Default::default()
    };
    assert_eq!(
        CacheAwarePolicy::try_with_config(bad).unwrap_err(),
        ConfigError::MaxTreeSize
    );
}

#[test]
#[should_panic(expected = "balance_rel_threshold")]
fn the_seed_constructor_panics_with_the_same_message() {
    CacheAwarePolicy::with_config(CacheAwareConfig {
        balance_rel_threshold: 0.5,
        ..Default::default()
    });
}

#[test]
fn run_eviction_keeps_every_tree_under_its_budget() {
    let policy = CacheAwarePolicy::with_config(CacheAwareConfig {
        max_tree_size: 2_000,
        ..no_evictor()
    });
    let ws = workers(4, "");
    for i in 0..200 {
        policy.select_worker(
            &ws,
            Some(&format!("{i:04} unique prompt body {}", "z".repeat(40))),
        );
    }
    let before = policy.metrics().tree_chars[0].1;
    assert!(before > 2_000);
    let stats = policy.run_eviction();
    let after = policy.metrics().tree_chars[0].1;
    // Trimmed to 63/64 of the budget (1,969), give or take the last leaf (about 60 chars).
    assert!((1_900..=1_969).contains(&after), "{after}");
    assert_eq!(before - after, stats.units_freed);
    assert!(stats.nodes_removed > 0);
    assert_eq!(policy.metrics().evicted_chars, stats.units_freed);
}

/// A policy with `budget` chars per tree whose evictor ticks once an hour: within a test,
/// evictions come only from requests that find the tree over budget.
fn hour_tick_policy(budget: usize) -> CacheAwarePolicy {
    CacheAwarePolicy::with_config(CacheAwareConfig {
        max_tree_size: budget,
        eviction_interval_secs: 3600,
        ..no_evictor()
    })
}

/// The request that takes the tree over its budget trims it before it returns: after every
/// request the tree is within budget, with the tick an hour away.
#[test]
fn every_request_leaves_the_tree_within_budget() {
    let budget = 20_000;
    let policy = hour_tick_policy(budget);
    let ws = workers(4, "");
    for i in 0..20_000 {
        policy.select_worker(&ws, Some(&format!("{i:05} {}", "z".repeat(200))));
        let chars = policy.metrics().tree_chars[0].1;
        assert!(chars <= budget, "request {i} left {chars} chars");
    }
    let m = policy.metrics();
    // 4 M chars inserted, trimmed to 63/64 of the budget each time: hundreds of evictions.
    assert!(
        m.eviction_passes >= 500,
        "only {} evictions",
        m.eviction_passes
    );
    assert!(m.evicted_chars >= 4_000_000, "{m:?}");
}

/// Several threads insert new text as fast as they can while a sampler reads the tree's size
/// every half millisecond: no sample is over the budget by more than the requests in flight
/// (each request evicts right after its own insert, so at most one prompt per thread).
#[test]
fn the_budget_holds_on_every_sample_under_multi_thread_churn() {
    let budget = 50_000;
    let prompt = 300;
    let threads = 3;
    let policy = hour_tick_policy(budget);
    let ws = workers(8, "");
    policy.init_workers(&ws);
    let done = AtomicBool::new(false);
    let mut samples = Vec::new();
    thread::scope(|s| {
        let routers: Vec<_> = (0..threads)
            .map(|t| {
                let (policy, ws) = (&policy, &ws);
                s.spawn(move || {
                    for i in 0..30_000 {
                        let text = format!("{t}-{i:06} {}", "q".repeat(prompt - 9));
                        policy.select_worker(ws, Some(&text));
                    }
                })
            })
            .collect();
        let sampler = s.spawn(|| {
            let mut seen = Vec::new();
            while !done.load(Ordering::SeqCst) {
                seen.push(policy.metrics().tree_chars[0].1);
                thread::sleep(Duration::from_micros(500));
            }
            seen
        });
        for r in routers {
            r.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
        samples = sampler.join().unwrap();
    });
    let slack = threads * prompt;
    let most = samples.iter().copied().max().unwrap_or(0);
    assert!(samples.len() > 10, "only {} samples", samples.len());
    assert!(
        most <= budget + slack,
        "a sample held {most} chars: budget {budget} + {slack} in flight"
    );
    assert!(policy.metrics().tree_chars[0].1 <= budget);
}

#[test]
fn removal_racing_routing_never_returns_a_worker_after_its_removal() {
    let policy = CacheAwarePolicy::with_config(no_evictor());
    let ws = workers(4, "");
    policy.init_workers(&ws);
    let removed = AtomicBool::new(false);
    thread::scope(|s| {
        for t in 0..3 {
            let (policy, ws, removed) = (&policy, &ws, &removed);
            s.spawn(move || {
                for i in 0..3000 {
                    let was_removed = removed.load(Ordering::SeqCst);
                    let text = format!("thread {t} prompt {}", i % 50);
                    let idx = policy.select_worker(ws, Some(&text)).unwrap();
                    if was_removed {
                        assert_ne!(idx, 0, "routed to a removed worker");
                    }
                }
            });
        }
        thread::sleep(Duration::from_millis(5));
        policy.remove_worker(&*ws[0]);
        removed.store(true, Ordering::SeqCst);
    });
    assert!(!policy
        .metrics()
        .workers
        .iter()
        .any(|w| w.url == ws[0].url()));
}

#[test]
fn fleets_larger_than_the_stack_snapshot_route_the_same() {
    // Past 64 workers the decision snapshot spills to the heap; the rules are unchanged.
    let policy = CacheAwarePolicy::with_config(no_evictor());
    let ws = workers(100, "");
    policy.init_workers(&ws);
    let prompt = "a prompt for a large fleet, long enough to be a hit";
    let first = policy.select_worker(&ws, Some(prompt)).unwrap();
    assert_eq!(policy.select_worker(&ws, Some(prompt)), Some(first));
    ws[first].set_healthy(false);
    let second = policy.select_worker(&ws, Some(prompt)).unwrap();
    assert_ne!(second, first);
    assert_eq!(policy.select_worker(&ws, Some(prompt)), Some(second));
    let mut seen = HashSet::new();
    for i in 0..300 {
        seen.insert(
            policy
                .select_worker(&ws, Some(&format!("{i} unrelated")))
                .unwrap(),
        );
    }
    assert!(
        seen.len() > 50,
        "misses spread over the fleet: {}",
        seen.len()
    );
}

#[test]
fn slices_in_another_order_or_a_subset_resolve_to_the_same_workers() {
    // Workers are found by position first (the fleet as registered), by address otherwise.
    let policy = CacheAwarePolicy::with_config(no_evictor());
    let ws = workers(6, "");
    policy.init_workers(&ws);
    let prompt = "a prompt cached on one worker of six, long enough to be a hit";
    let first = policy.select_worker(&ws, Some(prompt)).unwrap();
    let url = ws[first].url().to_string();
    let reversed: Vec<_> = ws.iter().rev().cloned().collect();
    let i = policy.select_worker(&reversed, Some(prompt)).unwrap();
    assert_eq!(
        reversed[i].url(),
        url,
        "the holder, at its index in the reversed slice"
    );
    let others: Vec<_> = ws.iter().filter(|w| w.url() != url).cloned().collect();
    for _ in 0..20 {
        let i = policy.select_worker(&others, Some(prompt)).unwrap();
        assert_ne!(others[i].url(), url, "a worker the slice does not hold");
    }
    // Unhealthy in a shifted slice: skipped wherever it sits.
    ws[first].set_healthy(false);
    let mut rotated = ws.clone();
    rotated.rotate_left(1);
    let i = policy.select_worker(&rotated, Some(prompt)).unwrap();
    assert_ne!(rotated[i].url(), url);
    assert!(rotated[i].is_healthy());
}

#[test]
fn cost_aware_selection_trades_a_match_against_a_queue() {
    let build = |rule| {
        CacheAwarePolicy::builder()
            .config(no_evictor())
            .selection(rule)
            .tie_seed(7)
            .build()
            .unwrap()
    };
    let prompt = "a long shared prefix that one worker has cached already. ".repeat(8);
    for (rule, expect_cached_worker) in [
        (SelectionRule::Threshold, true),
        (SelectionRule::CostAware, false),
    ] {
        let policy = build(rule);
        let ws = workers(2, "");
        policy.init_workers(&ws);
        let cached = policy.select_worker(&ws, Some(&prompt)).unwrap();
        // Idle cluster: both rules follow the cache.
        assert_eq!(
            policy.select_worker(&ws, Some(&prompt)),
            Some(cached),
            "{rule:?}"
        );
        // Three requests queued on the cached worker: below the imbalance threshold (64), so
        // the seed's rule still sends the prompt there; cost-aware finds three queued prompts
        // cost more than one prefill and picks the idle worker.
        for _ in 0..3 {
            ws[cached].increment_load();
        }
        let got = policy.select_worker(&ws, Some(&prompt)).unwrap();
        assert_eq!(got == cached, expect_cached_worker, "{rule:?}");
    }
}

/// The native API's tickets keep each worker's outstanding work: a miss queues the whole
/// prompt, a hit only what the worker does not hold; the first token moves a request to
/// decoding; and whatever a ticket holds comes back when it is dropped, before or after its
/// first token, in a panic, or after its worker was removed.
#[test]
fn tickets_keep_work_and_give_it_back_on_every_path() {
    let policy = CacheAwarePolicy::with_config(no_evictor());
    let w: Arc<dyn Worker> = Arc::new(BasicWorkerBuilder::new("http://w0:8000").build());
    policy.register_worker(w.clone()).unwrap();
    let work = || {
        let m = policy.metrics();
        let s = &m.workers[0];
        (s.in_flight, s.queued_prefill_chars, s.decoding)
    };
    let prompt = "p".repeat(1000);
    let miss = policy.route("", &prompt).unwrap();
    assert_eq!((miss.cache_hit(), miss.prefill_chars()), (false, 1000));
    assert_eq!(work(), (1, 1000, 0));
    let longer = format!("{prompt}{}", "q".repeat(200));
    let hit = policy.route("", &longer).unwrap();
    assert_eq!(
        (hit.cache_hit(), hit.prefill_chars()),
        (true, 200),
        "only the unmatched tail"
    );
    assert_eq!(work(), (2, 1200, 0));
    assert!(miss.first_token());
    assert_eq!(work(), (2, 200, 1));
    drop(miss);
    assert_eq!(work(), (1, 200, 0));
    drop(hit);
    assert_eq!(work(), (0, 0, 0));
    // A panic while a ticket is held.
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = policy.route("", &prompt).unwrap();
        t.first_token();
        panic!("the response failed");
    }));
    assert!(panicked.is_err());
    assert_eq!(work(), (0, 0, 0));
    // The worker is removed while a ticket is held: the ticket still gives its work back.
    let t = policy.route("", "another prompt").unwrap();
    policy.remove_worker(&*w);
    drop(t);
    assert_eq!((w.load(), w.work().unwrap().queued_prefill()), (0, 0));
    assert_eq!(w.work().unwrap().decoding(), 0);
}

/// Many threads route, report first tokens (some twice, from two threads) and drop their
/// tickets at once: the counters end at zero and never read above what is in flight.
#[test]
fn work_counters_balance_under_concurrent_tickets() {
    let policy = CacheAwarePolicy::with_config(no_evictor());
    let ws = workers(4, "");
    for w in &ws {
        policy.register_worker(w.clone()).unwrap();
    }
    thread::scope(|s| {
        for t in 0..4 {
            let policy = &policy;
            s.spawn(move || {
                for i in 0..2000 {
                    let ticket = policy
                        .route("", &format!("{t} {i} {}", "x".repeat(50)))
                        .unwrap();
                    if i % 3 != 0 {
                        thread::scope(|s| {
                            s.spawn(|| ticket.first_token());
                            ticket.first_token();
                        });
                    }
                    assert!(ticket.worker().work().unwrap().decoding() <= 4);
                }
            });
        }
    });
    for w in &ws {
        let work = w.work().unwrap();
        assert_eq!(
            (w.load(), work.queued_prefill(), work.decoding()),
            (0, 0, 0)
        );
    }
}

/// The estimated-TTFT rule weighs a worker's queued prefill against the prefill a match saves:
/// a worker holding the prompt's prefix wins while its queue is short, and loses to an idle
/// worker once its queue costs more than re-reading the prefix would.
#[test]
fn the_ttft_rule_picks_the_lower_estimate() {
    let policy = CacheAwarePolicy::builder()
        .config(no_evictor())
        .selection(SelectionRule::EstimatedTtft)
        .tie_seed(3)
        .build()
        .unwrap();
    let ws = workers(2, "");
    for w in &ws {
        policy.register_worker(w.clone()).unwrap();
    }
    let system = "s".repeat(4000);
    // A miss on two idle workers: either one; the prefix now lives there.
    let first = policy.route("", &format!("{system} first")).unwrap();
    let home = first.index();
    assert!(first.estimated_ttft().is_some());
    assert!(
        first.first_token(),
        "prefill done: the worker is decoding it"
    );
    // Same prefix, the home worker decoding one request: it holds 4,000 of the chars.
    let second = policy.route("", &format!("{system} second")).unwrap();
    assert_eq!(
        second.index(),
        home,
        "the match outweighs one decoding request"
    );
    assert!(second.cache_hit());
    assert!(second.first_token());
    // A long prompt on the same prefix: the home worker, idle but for decoding, saves its
    // 4,000 chars, so it takes it and now has about 100 K chars of prefill queued.
    let backlog = policy
        .route("", &format!("{system}{}", "q".repeat(100_000)))
        .unwrap();
    assert_eq!(backlog.index(), home);
    // The next request on the prefix: the queue costs more than the 4,000 chars it saves.
    let third = policy.route("", &format!("{system} third")).unwrap();
    assert_eq!(third.index(), 1 - home, "the idle worker, prefix or not");
    assert!(!third.cache_hit());
    // The estimates saw the queue: the backlog's own is far above the second's.
    let est = |t: &cache_aware_router::LoadTicket| t.estimated_ttft().unwrap();
    assert!(est(&backlog) > est(&second) * 10);
}

/// Reported first-token times fit the estimate's prefill cost: after a run of requests whose
/// first token comes 1 ns a char after routing, the estimate for a 10 K-char prompt on an idle
/// worker is about 10 us, not the default 60 ms.
#[test]
fn first_token_times_fit_the_ttft_estimate() {
    let policy = CacheAwarePolicy::builder()
        .config(no_evictor())
        .selection(SelectionRule::EstimatedTtft)
        .build()
        .unwrap();
    let w: Arc<dyn Worker> = Arc::new(BasicWorkerBuilder::new("http://w0:8000").build());
    policy.register_worker(w).unwrap();
    let prompt = |i: usize| format!("{i:05}{}", "z".repeat(9_995));
    let before = policy
        .route("", &prompt(99_999))
        .unwrap()
        .estimated_ttft()
        .unwrap();
    assert!(before > Duration::from_millis(50), "{before:?}");
    for i in 0..200 {
        let t = policy.route("", &prompt(i)).unwrap();
        t.first_token_after(Duration::from_nanos(t.prefill_chars() as u64));
    }
    let after = policy
        .route("", &prompt(77_777))
        .unwrap()
        .estimated_ttft()
        .unwrap();
    assert!(after < Duration::from_micros(100), "{after:?}");
}
