//! Model-based test: random operation sequences against a plain sequential reference
//! (`tests/common/reference.rs`), comparing every answer, for each key unit: text through the
//! seed's API, and token ids and block hashes through the native API, with every char of the
//! generated texts mapped to one token or one block (so the reference's char counts are the
//! expected unit counts). Seeded, so failures reproduce; set `MODEL_SEEDS` to run more seeds.

mod common;

use cache_aware_router::{BlockTree, KeyUnit, KeyedTree, ManualClock, TokenTree, Tree, TreeConfig};
use common::reference::Reference;
use common::{arbitrary_text, text, Rng};
use std::collections::HashMap;

const TENANTS: &[&str] = &["w0", "w1", "w2", "w3"];

type Generator = fn(&mut Rng, Option<&str>) -> String;

/// A tree under test, asked in chars of the generated texts.
trait UnderTest {
    fn insert(&self, t: &str, tenant: &str);
    /// Chars matched, and the tenant named (`None`: nothing matched, no tenant named).
    fn prefix_match(&self, t: &str) -> (usize, Option<String>);
    fn prefix_match_tenant(&self, t: &str, tenant: &str) -> usize;
    fn evict_tenant_by_size(&self, max: usize);
    fn remove_tenant(&self, tenant: &str);
    fn get_smallest_tenant(&self) -> String;
    fn get_tenant_char_count(&self) -> HashMap<String, usize>;
    fn get_used_size_per_tenant(&self) -> HashMap<String, usize>;
    fn total_units(&self) -> usize;
}

/// Text through the seed API.
impl UnderTest for Tree {
    fn insert(&self, t: &str, tenant: &str) {
        Tree::insert(self, t, tenant)
    }
    fn prefix_match(&self, t: &str) -> (usize, Option<String>) {
        let (matched, tenant) = Tree::prefix_match(self, t);
        assert!(t.starts_with(&matched));
        (matched.chars().count(), Some(tenant))
    }
    fn prefix_match_tenant(&self, t: &str, tenant: &str) -> usize {
        let matched = Tree::prefix_match_tenant(self, t, tenant);
        assert!(t.starts_with(&matched));
        matched.chars().count()
    }
    fn evict_tenant_by_size(&self, max: usize) {
        Tree::evict_tenant_by_size(self, max)
    }
    fn remove_tenant(&self, tenant: &str) {
        Tree::remove_tenant(self, tenant)
    }
    fn get_smallest_tenant(&self) -> String {
        Tree::get_smallest_tenant(self)
    }
    fn get_tenant_char_count(&self) -> HashMap<String, usize> {
        Tree::get_tenant_char_count(self)
    }
    fn get_used_size_per_tenant(&self) -> HashMap<String, usize> {
        Tree::get_used_size_per_tenant(self)
    }
    fn total_units(&self) -> usize {
        Tree::total_units(self)
    }
}

/// An integer-keyed tree through the native API, each char of a text one unit.
struct Native<K: KeyUnit> {
    tree: KeyedTree<K>,
    encode: fn(&str) -> Box<K::Key>,
}

impl<K: KeyUnit> UnderTest for Native<K> {
    fn insert(&self, t: &str, tenant: &str) {
        self.tree.insert(&(self.encode)(t), tenant)
    }
    fn prefix_match(&self, t: &str) -> (usize, Option<String>) {
        let (counts, holder) = self.tree.best_match(&(self.encode)(t));
        assert_eq!(counts.total, t.chars().count());
        (
            counts.matched,
            holder.map(|id| self.tree.tenant_name(id).to_string()),
        )
    }
    fn prefix_match_tenant(&self, t: &str, tenant: &str) -> usize {
        match self.tree.lookup_tenant(tenant) {
            Some(id) => self.tree.tenant_match(&(self.encode)(t), id),
            None => 0,
        }
    }
    fn evict_tenant_by_size(&self, max: usize) {
        self.tree.evict_tenant_by_size(max)
    }
    fn remove_tenant(&self, tenant: &str) {
        self.tree.remove_tenant(tenant)
    }
    fn get_smallest_tenant(&self) -> String {
        self.tree.get_smallest_tenant()
    }
    fn get_tenant_char_count(&self) -> HashMap<String, usize> {
        self.tree.get_tenant_char_count()
    }
    fn get_used_size_per_tenant(&self) -> HashMap<String, usize> {
        self.tree.get_used_size_per_tenant()
    }
    fn total_units(&self) -> usize {
        self.tree.total_units()
    }
}

/// Tokens whose low byte is shared by all of them: in memory, two different tokens agree on
/// their first byte, so a match must stop on a token boundary, not a byte one.
fn tokens(t: &str) -> Box<[u32]> {
    t.chars().map(|c| ((c as u32) << 8) | 0x41).collect()
}

/// Block hashes spread over all 64 bits, sharing their low five bytes.
fn blocks(t: &str) -> Box<[u64]> {
    t.chars()
        .map(|c| ((c as u64) << 40) ^ 0x00AB_CDEF_0123 ^ ((c as u64) << 61))
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Unit {
    Text,
    Tokens,
    Blocks,
}

fn build(unit: Unit, config: TreeConfig) -> Box<dyn UnderTest> {
    match unit {
        Unit::Text => Box::new(Tree::with_config(config).unwrap()),
        Unit::Tokens => Box::new(Native {
            tree: TokenTree::with_config(config).unwrap(),
            encode: tokens,
        }),
        Unit::Blocks => Box::new(Native {
            tree: BlockTree::with_config(config).unwrap(),
            encode: blocks,
        }),
    }
}

fn run(unit: Unit, seed: u64, ops: usize, shards: usize, gen: Generator) {
    let mut rng = Rng::new(seed);
    let clock = ManualClock::new();
    let tree = build(
        unit,
        TreeConfig {
            shards,
            clock: clock.clone().into(),
        },
    );
    let mut reference = Reference::new();
    let mut texts: Vec<String> = vec![];
    let chars = |s: &str| s.chars().count();
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
        let ctx = format!("{unit:?} seed {seed} step {step}");
        match rng.below(20) {
            0..=8 => {
                tree.insert(&t, tenant);
                reference.insert(&t, tenant, tick);
                texts.push(t);
            }
            9..=12 => {
                let (matched, got) = tree.prefix_match(&t);
                let m = reference.prefix_match(&t);
                assert_eq!(matched, chars(&m.matched), "{ctx}: prefix_match({t:?})");
                match (&m.holders, got) {
                    (Some(holders), Some(got)) => {
                        assert!(holders.contains(&got), "{ctx}: {got} not in {holders:?}");
                        reference.refresh(&m, &got, tick);
                    }
                    (Some(holders), None) => panic!("{ctx}: no tenant, expected {holders:?}"),
                    // Only the seed API names a fallback tenant.
                    (None, Some(got)) => assert_eq!(got, reference.fallback_tenant(), "{ctx}"),
                    (None, None) => assert!(!matches!(unit, Unit::Text), "{ctx}"),
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
                    chars(&reference.prefix_match_tenant(&q, tenant, tick)),
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
            tree.total_units(),
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
                chars(&reference.prefix_match_tenant(t, tenant, clock.now())),
                "{unit:?} seed {seed} final: {t:?} for {tenant}"
            );
        }
    }
}

fn seeds(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_operations_match_the_reference() {
    for seed in 0..seeds("MODEL_SEEDS", 200) {
        let shards = if seed % 2 == 0 { 32 } else { 1 };
        run(Unit::Text, seed, 300, shards, |rng, base| {
            text(rng, base, 10)
        });
    }
}

#[test]
fn token_keys_match_the_reference() {
    for seed in 0..seeds("MODEL_SEEDS", 200) {
        let shards = if seed % 2 == 0 { 32 } else { 1 };
        run(Unit::Tokens, seed, 300, shards, |rng, base| {
            text(rng, base, 10)
        });
    }
}

#[test]
fn block_keys_match_the_reference() {
    for seed in 0..seeds("MODEL_SEEDS", 200) {
        let shards = if seed % 2 == 0 { 32 } else { 1 };
        run(Unit::Blocks, seed, 300, shards, |rng, base| {
            text(rng, base, 10)
        });
    }
}

/// The fuzz target: arbitrary UTF-8 (every scalar value possible, lead-byte collisions likely)
/// with long shared prefixes, against the reference, for every unit. `FUZZ_SEEDS` runs more
/// seeds.
#[test]
fn arbitrary_utf8_with_long_shared_prefixes_matches_the_reference() {
    for seed in 1000..1000 + seeds("FUZZ_SEEDS", 100) {
        for unit in [Unit::Text, Unit::Tokens, Unit::Blocks] {
            run(unit, seed, 200, 32, |rng, base| {
                arbitrary_text(rng, base, 40)
            });
        }
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
                    let before = tree.total_units();
                    let max = rng.below(before + 1);
                    let stats = tree.evict_to_total(max);
                    evictions += 1;
                    assert!(tree.total_units() <= max, "{ctx}: over {max}");
                    assert_eq!(before - tree.total_units(), stats.units_freed, "{ctx}");
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
