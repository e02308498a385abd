//! Stress: 8 threads for a few seconds (seeded), mixing inserts, matches, eviction, tenant
//! removal and worker add/remove on one tree and one policy. Afterwards: the accounting
//! invariant holds, and every text inserted by a tenant that was never evicted or removed still
//! matches fully. A second test has requests evict beside the splits their inserts make. `STRESS_MS` sets the duration (default 2000).

mod common;

use cache_aware_router::{CacheAwareConfig, CacheAwarePolicy, LoadBalancingPolicy, Tree};
use common::{assert_accounting, fleet, text, Rng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

/// `STRESS_MS`, or 2 s.
fn stress_millis() -> u64 {
    std::env::var("STRESS_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

fn long_shared_texts(rng: &mut Rng, n: usize) -> Vec<String> {
    let stems = [
        "You are a helpful assistant. Answer briefly and cite sources. ".repeat(8),
        "系统提示：你是一个乐于助人的助手。请简洁回答。".repeat(8),
        "<|im_start|>system\nYou are Qwen.<|im_end|>\n".repeat(8),
    ];
    (0..n)
        .map(|_| {
            let stem = rng.pick(&stems);
            let cut = stem
                .char_indices()
                .nth(rng.below(stem.chars().count()))
                .unwrap()
                .0;
            format!("{}{}", &stem[..cut], text(rng, None, 60))
        })
        .collect()
}

#[test]
fn eight_threads_mixing_everything() {
    let millis = stress_millis();
    let tree = Tree::new();
    let stop = AtomicBool::new(false);
    // Protected tenants insert a fixed set that stays under the eviction budget, and are never
    // removed: all their texts must survive.
    let mut rng = Rng::new(42);
    let protected_texts = long_shared_texts(&mut rng, 6);
    let budget = protected_texts
        .iter()
        .map(|t| t.chars().count())
        .sum::<usize>()
        + 1;
    let policy = CacheAwarePolicy::with_config(CacheAwareConfig {
        eviction_interval_secs: 0,
        max_tree_size: 20_000,
        ..Default::default()
    });
    let workers = fleet(6);
    policy.init_workers(&workers);

    thread::scope(|s| {
        for t in 0..8u64 {
            let (tree, stop, policy, workers) = (&tree, &stop, &policy, &workers);
            let protected_texts = &protected_texts;
            s.spawn(move || {
                let mut rng = Rng::new(t);
                let texts = long_shared_texts(&mut rng, 100);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    match (t, rng.below(100)) {
                        // Two threads are the protected tenants.
                        (0 | 1, _) => {
                            let tenant = format!("protected{t}");
                            for p in protected_texts {
                                tree.insert(p, &tenant);
                            }
                        }
                        // Thread 2 evicts and removes churn tenants.
                        (2, r) if r < 70 => {
                            tree.evict_tenant_by_size(budget);
                        }
                        (2, r) if r < 90 => tree.remove_tenant(&format!("churn{}", r % 4)),
                        (2, _) => {
                            policy.run_eviction();
                        }
                        // Thread 3 adds and removes workers while others route.
                        (3, r) if r < 50 => {
                            let w = &workers[r % workers.len()];
                            policy.remove_worker(&**w);
                            policy.add_worker(&**w);
                        }
                        (3, _) => {
                            let _ = policy.select_worker(workers, Some(rng.pick(&texts).as_str()));
                        }
                        (_, r) if r < 40 => {
                            tree.insert(rng.pick(&texts).as_str(), &format!("churn{}", r % 4))
                        }
                        (_, r) if r < 70 => {
                            let q = rng.pick(&texts);
                            let (m, _) = tree.prefix_match(q);
                            assert!(q.starts_with(&m));
                        }
                        (_, r) if r < 85 => {
                            if let Some(i) =
                                policy.select_worker(workers, Some(rng.pick(&texts).as_str()))
                            {
                                assert!(workers[i].is_healthy());
                            }
                        }
                        (_, _) => {
                            let q = rng.pick(&texts);
                            let m = tree.prefix_match_tenant(q, "churn1");
                            assert!(q.starts_with(&m));
                        }
                    }
                }
                n
            });
        }
        thread::sleep(Duration::from_millis(millis));
        stop.store(true, Ordering::Relaxed);
    });

    for t in 0..2 {
        let tenant = format!("protected{t}");
        for p in &protected_texts {
            assert_eq!(
                tree.prefix_match_tenant(p, &tenant),
                *p,
                "{tenant} lost a text"
            );
        }
    }
    assert_accounting(&tree);
    policy.run_eviction();
    let m = policy.metrics();
    assert!(
        m.tree_chars.iter().all(|(_, n)| *n <= 20_000),
        "{:?}",
        m.tree_chars
    );
    assert!(m.workers.iter().all(|w| w.in_flight == 0));
}

/// Requests evict (each that takes the tree over budget trims it) while they insert texts that
/// split the nodes other evictions are descending through, for `STRESS_MS`: under
/// AddressSanitizer (`.ci/sanitizers asan`) an eviction that read a node freed under it would
/// be caught. Afterwards evictions have run, and evicted, and the tree is within budget.
#[test]
fn four_threads_route_while_they_evict() {
    let millis = stress_millis();
    let policy = CacheAwarePolicy::with_config(CacheAwareConfig {
        // Only requests evict: the tick never comes while the test runs.
        eviction_interval_secs: 3600,
        max_tree_size: 50_000,
        ..Default::default()
    });
    let workers = fleet(4);
    policy.init_workers(&workers);
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        for t in 0..4u64 {
            let (stop, policy, workers) = (&stop, &policy, &workers);
            s.spawn(move || {
                let mut rng = Rng::new(100 + t);
                let texts = long_shared_texts(&mut rng, 1000);
                while !stop.load(Ordering::Relaxed) {
                    let i = policy.select_worker(workers, Some(rng.pick(&texts).as_str()));
                    assert!(i.is_some());
                }
            });
        }
        thread::sleep(Duration::from_millis(millis));
        stop.store(true, Ordering::Relaxed);
    });
    let m = policy.metrics();
    assert!(m.eviction_passes > 0, "no eviction ran: {m:?}");
    assert!(m.evicted_nodes > 0, "the evictions unlinked nothing: {m:?}");
    assert!(
        m.tree_chars.iter().all(|(_, n)| *n <= 50_000),
        "{:?}",
        m.tree_chars
    );
}
