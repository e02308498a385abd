//! Races: inserts splitting the same edges, matches and inserts against eviction and tenant
//! removal. Each test is bounded in time and seeded; it checks the accounting invariant at rest
//! and that every text a tenant inserted (and never lost to eviction or removal) matches fully.

mod common;

use cache_aware_router::Tree;
use common::{assert_accounting, text, Rng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Texts that share long prefixes and diverge at many different points, so concurrent inserts
/// keep splitting the same edges.
fn overlapping_texts(seed: u64, n: usize) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let stem: String = "the system prompt: you are a helpful assistant. ".repeat(4);
    (0..n)
        .map(|_| {
            let cut = rng.below(stem.len());
            let mut s = stem[..cut].to_string();
            s.push_str(&text(&mut rng, None, 40));
            s
        })
        .collect()
}

#[test]
fn concurrent_overlapping_inserts_all_match_and_count_exactly() {
    for round in 0..20 {
        let tree = Tree::new();
        let texts = overlapping_texts(round, 64);
        thread::scope(|s| {
            for t in 0..4 {
                let (tree, texts) = (&tree, &texts);
                s.spawn(move || {
                    for (i, text) in texts.iter().enumerate() {
                        // Every thread inserts every text: half for a shared tenant (the same
                        // text for the same tenant from 4 threads), half for its own.
                        tree.insert(
                            text,
                            if i % 2 == 0 {
                                "shared"
                            } else {
                                ["a", "b", "c", "d"][t]
                            },
                        );
                    }
                });
            }
        });
        for (i, text) in texts.iter().enumerate() {
            if i % 2 == 0 {
                assert_eq!(tree.prefix_match_tenant(text, "shared"), *text);
            } else {
                for tenant in ["a", "b", "c", "d"] {
                    assert_eq!(tree.prefix_match_tenant(text, tenant), *text);
                }
            }
        }
        assert_accounting(&tree);
    }
}

#[test]
fn the_same_first_insert_from_many_threads_counts_once() {
    for _ in 0..200 {
        let tree = Tree::new();
        tree.insert("hello world", "other");
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| tree.insert("hello world", "t"));
            }
        });
        assert_eq!(tree.get_tenant_char_count()["t"], 11);
        assert_accounting(&tree);
    }
}

#[test]
fn matches_and_inserts_race_eviction_and_removal() {
    let tree = Tree::new();
    let stop = AtomicBool::new(false);
    // "keep" tenants insert a small fixed set (under the eviction budget) and are never
    // removed, so all of their texts must survive everything.
    let keep_texts = overlapping_texts(99, 12);
    let budget = keep_texts.iter().map(|t| t.chars().count()).sum::<usize>() + 1;
    let run_for = Duration::from_millis(1500);
    thread::scope(|s| {
        for k in 0..2 {
            let (tree, keep_texts, stop) = (&tree, &keep_texts, &stop);
            s.spawn(move || {
                let tenant = format!("keep{k}");
                while !stop.load(Ordering::Relaxed) {
                    for t in keep_texts {
                        tree.insert(t, &tenant);
                        assert!(tree.prefix_match(t).0.len() == t.len());
                    }
                }
            });
        }
        for c in 0..4 {
            let (tree, stop) = (&tree, &stop);
            s.spawn(move || {
                let mut rng = Rng::new(c);
                let texts = overlapping_texts(c + 10, 200);
                while !stop.load(Ordering::Relaxed) {
                    let t = rng.pick(&texts);
                    let tenant = format!("churn{}", rng.below(4));
                    match rng.below(10) {
                        0..=5 => tree.insert(t, &tenant),
                        6..=8 => {
                            let (m, _) = tree.prefix_match(t);
                            assert!(t.starts_with(&m));
                        }
                        _ => {
                            let m = tree.prefix_match_tenant(t, &tenant);
                            assert!(t.starts_with(&m));
                        }
                    }
                }
            });
        }
        {
            let (tree, stop) = (&tree, &stop);
            s.spawn(move || {
                let mut rng = Rng::new(7);
                while !stop.load(Ordering::Relaxed) {
                    tree.evict_tenant_by_size(budget);
                    if rng.below(8) == 0 {
                        tree.remove_tenant(&format!("churn{}", rng.below(4)));
                    }
                }
            });
        }
        thread::sleep(run_for);
        stop.store(true, Ordering::Relaxed);
    });
    for k in 0..2 {
        let tenant = format!("keep{k}");
        for t in &keep_texts {
            assert_eq!(
                tree.prefix_match_tenant(t, &tenant),
                *t,
                "{tenant} lost {t:?}"
            );
        }
    }
    assert_accounting(&tree);
    tree.evict_tenant_by_size(budget);
    let counts = tree.get_tenant_char_count();
    assert!(counts.values().all(|&n| n <= budget), "{counts:?}");
    assert_accounting(&tree);
    // Removing everyone leaves an empty tree.
    for name in counts.keys() {
        tree.remove_tenant(name);
    }
    assert_eq!(tree.total_units(), 0);
    assert!(tree.get_used_size_per_tenant().is_empty());
}

#[test]
fn matches_never_see_a_torn_prefix_during_splits() {
    let tree = Tree::new();
    let texts = overlapping_texts(5, 300);
    let deadline = Instant::now() + Duration::from_millis(500);
    thread::scope(|s| {
        s.spawn(|| {
            for t in &texts {
                tree.insert(t, "w");
            }
        });
        s.spawn(|| {
            while Instant::now() < deadline {
                for t in &texts {
                    let (m, _) = tree.prefix_match(t);
                    // Whatever matched is a real prefix of the query, on a char boundary.
                    assert!(t.starts_with(&m) && t.is_char_boundary(m.len()));
                }
            }
        });
    });
    for t in &texts {
        assert_eq!(tree.prefix_match(t).0, *t);
    }
    assert_accounting(&tree);
}
