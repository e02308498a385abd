//! Model-based test: random operation sequences against a plain sequential reference
//! (`tests/common/reference.rs`), comparing every answer. Seeded, so failures reproduce; set
//! `MODEL_SEEDS` to run more seeds.

mod common;

use cache_aware_router::{ManualClock, Tree, TreeConfig};
use common::reference::Reference;
use common::{arbitrary_text, text, Rng};

const TENANTS: &[&str] = &["w0", "w1", "w2", "w3"];

type Generator = fn(&mut Rng, Option<&str>) -> String;

fn run(seed: u64, ops: usize, shards: usize, gen: Generator) {
    let mut rng = Rng::new(seed);
    let clock = ManualClock::new();
    let tree = Tree::with_config(TreeConfig {
        shards,
        clock: clock.clone().into(),
    })
    .unwrap();
    let mut reference = Reference::new();
    let mut texts: Vec<String> = vec![];
    for step in 0..ops {
        clock.advance(1);
        let tick = clock.now();
        let base = if texts.is_empty() || rng.below(4) == 0 {
            None
        } else {
            Some(rng.pick(&texts).clone())
        };
        let t = gen(&mut rng, base.as_deref());
        let tenant = *rng.pick(TENANTS);
        let ctx = format!("seed {seed} step {step}");
        match rng.below(20) {
            0..=8 => {
                tree.insert(&t, tenant);
                reference.insert(&t, tenant, tick);
                texts.push(t);
            }
            9..=12 => {
                let (matched, got) = tree.prefix_match(&t);
                let m = reference.prefix_match(&t);
                assert_eq!(matched, m.matched, "{ctx}: prefix_match({t:?})");
                match &m.holders {
                    Some(holders) => {
                        assert!(holders.contains(&got), "{ctx}: {got} not in {holders:?}");
                        reference.refresh(&m, &got, tick);
                    }
                    None => assert_eq!(got, reference.fallback_tenant(), "{ctx}"),
                }
            }
            13..=15 => {
                let q = if texts.is_empty() {
                    t
                } else {
                    rng.pick(&texts).clone()
                };
                assert_eq!(
                    tree.prefix_match_tenant(&q, tenant),
                    reference.prefix_match_tenant(&q, tenant, tick),
                    "{ctx}: prefix_match_tenant({q:?}, {tenant})"
                );
            }
            16 | 17 => {
                let max = rng.below(30);
                tree.evict_tenant_by_size(max);
                reference.evict(max);
            }
            18 => {
                tree.remove_tenant(tenant);
                reference.remove_tenant(tenant);
            }
            _ => assert_eq!(tree.get_smallest_tenant(), reference.smallest(), "{ctx}"),
        }
        assert_eq!(
            tree.get_tenant_char_count(),
            reference.counts(),
            "{ctx}: counts"
        );
        assert_eq!(
            tree.get_used_size_per_tenant(),
            reference.counts(),
            "{ctx}: walk"
        );
        assert_eq!(
            tree.total_chars(),
            reference.counts().values().sum::<usize>(),
            "{ctx}: total"
        );
    }
    // Every text, for every tenant, matches the same prefix in both.
    clock.advance(1);
    for t in &texts {
        for tenant in TENANTS {
            assert_eq!(
                tree.prefix_match_tenant(t, tenant),
                reference.prefix_match_tenant(t, tenant, clock.now()),
                "seed {seed} final: {t:?} for {tenant}"
            );
        }
    }
}

#[test]
fn random_operations_match_the_reference() {
    let seeds: u64 = std::env::var("MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    for seed in 0..seeds {
        run(
            seed,
            300,
            if seed % 2 == 0 { 32 } else { 1 },
            |rng, base| text(rng, base, 10),
        );
    }
}

/// The fuzz target: arbitrary UTF-8 (every scalar value possible, lead-byte collisions likely)
/// with long shared prefixes, against the reference. `FUZZ_SEEDS` runs more seeds.
#[test]
fn arbitrary_utf8_with_long_shared_prefixes_matches_the_reference() {
    let seeds: u64 = std::env::var("FUZZ_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    for seed in 1000..1000 + seeds {
        run(seed, 200, 32, |rng, base| arbitrary_text(rng, base, 40));
    }
}

/// The budget's eviction (`evict_to_total`) against the reference, which never evicts: random
/// inserts, matches and budgets, and after every eviction the tree is within the budget, its
/// counts equal a walk of its nodes, and what each tenant still matches is a prefix of what it
/// matches in the reference (eviction only ever removes, and never a node from under a text
/// that still matches through it). `MODEL_SEEDS` runs more seeds.
#[test]
fn budget_eviction_only_removes_and_holds_the_budget() {
    let seeds: u64 = std::env::var("MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    for seed in 0..seeds {
        let mut rng = Rng::new(seed + 5000);
        let clock = ManualClock::new();
        let tree = Tree::with_config(TreeConfig {
            shards: if seed % 2 == 0 { 32 } else { 1 },
            clock: clock.clone().into(),
        })
        .unwrap();
        let mut reference = Reference::new();
        let mut texts: Vec<String> = vec![];
        let mut evictions = 0;
        for step in 0..300 {
            clock.advance(1);
            let tick = clock.now();
            let base = (!texts.is_empty() && rng.below(4) != 0).then(|| rng.pick(&texts).clone());
            let t = text(&mut rng, base.as_deref(), 10);
            let tenant = *rng.pick(TENANTS);
            let ctx = format!("seed {seed} step {step}");
            match rng.below(10) {
                0..=5 => {
                    tree.insert(&t, tenant);
                    reference.insert(&t, tenant, tick);
                    texts.push(t);
                }
                6 | 7 => {
                    tree.prefix_match_tenant(&t, tenant);
                    reference.prefix_match_tenant(&t, tenant, tick);
                }
                _ => {
                    let before = tree.total_chars();
                    let max = rng.below(before + 1);
                    let stats = tree.evict_to_total(max);
                    evictions += 1;
                    assert!(tree.total_chars() <= max, "{ctx}: over {max}");
                    assert_eq!(before - tree.total_chars(), stats.chars_freed, "{ctx}");
                    assert_eq!(
                        tree.get_tenant_char_count(),
                        tree.get_used_size_per_tenant(),
                        "{ctx}: counts"
                    );
                    for q in &texts {
                        for tenant in TENANTS {
                            // Both refresh along what they match, with the same tick.
                            let got = tree.prefix_match_tenant(q, tenant);
                            let full = reference.prefix_match_tenant(q, tenant, tick);
                            assert!(
                                full.starts_with(&got),
                                "{ctx}: {tenant} matches {got:?} of {q:?}, beyond {full:?}"
                            );
                        }
                    }
                }
            }
        }
        assert!(evictions > 10, "seed {seed}: {evictions} evictions");
    }
}
