//! Per-char cost of the tree's match and insert on single long prompts (1 KB, 64 KB, 1 MB,
//! ASCII and multi-byte), next to the floor: comparing the prompt with an equal copy (`a == b`),
//! i.e. reading it once. Criterion reports bytes/s; the ratio to `floor` is what travels.
//!
//! The same for token-id keys (`TokenTree`, prompts of 256, 16 K and 256 K `u32` tokens: the same
//! bytes), next to the floor of comparing the same `u32` slices: as one leaf, and split over 16
//! nodes by 16 other prompts branching off it along the way.
//!
//! Also the bare tree under mixed load: 70/30 and 50/50 match/insert mixes on 1 and 2 threads,
//! ours vs the seed's tree (`benches/baseline`), over the shared-prefix prompts.
//!
//! `cargo bench --bench tree` (add `-- --quick` for a fast pass).
// criterion's macros generate undocumented items.
#![allow(missing_docs)]

mod baseline;
mod support;

use cache_aware_router::{KeyUnit, KeyedTree, TokenTree, Tree};
use criterion::measurement::WallTime;
use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use std::time::Duration;
use support::{shared_prefix, timed, timed_threads, Rng};

/// The bare tree operations both engines offer.
trait BareTree: Sync {
    fn insert(&self, text: &str, tenant: usize);
    fn matches(&self, text: &str) -> usize;
}

struct OursTree(Tree, Vec<cache_aware_router::TenantId>);
impl BareTree for OursTree {
    fn insert(&self, text: &str, tenant: usize) {
        self.0.insert_for(text, self.1[tenant]).unwrap();
    }
    fn matches(&self, text: &str) -> usize {
        self.0.match_counts(text).matched
    }
}

struct BaseTree(baseline::Tree, Vec<String>);
impl BareTree for BaseTree {
    fn insert(&self, text: &str, tenant: usize) {
        self.0.insert(text, &self.1[tenant]);
    }
    fn matches(&self, text: &str) -> usize {
        self.0.prefix_match(text).0.len()
    }
}

fn names() -> Vec<String> {
    (0..8).map(|i| format!("http://worker-{i}:8000")).collect()
}

fn ours_tree() -> OursTree {
    let t = Tree::new();
    let ids = names().iter().map(|n| t.tenant_id(n).unwrap()).collect();
    OursTree(t, ids)
}

/// `ops` operations on `threads` threads: `match_pct`% matches, the rest inserts, random
/// prompts and tenants (seeded per thread).
fn mixed(
    tree: &dyn BareTree,
    texts: &[String],
    ops: u64,
    threads: u64,
    match_pct: u64,
) -> Duration {
    timed_threads(threads as usize, |t| {
        timed(|| mixed_share(tree, texts, ops / threads, t as u64, match_pct))
    })
}

/// One thread's `ops` operations of [`mixed`], seeded by its index.
fn mixed_share(tree: &dyn BareTree, texts: &[String], ops: u64, t: u64, match_pct: u64) {
    let mut rng = Rng::new(t + 1);
    for _ in 0..ops {
        let r = rng.next();
        let text = &texts[(r >> 8) as usize % texts.len()];
        if r % 100 < match_pct {
            black_box(tree.matches(text));
        } else {
            tree.insert(text, (r >> 40) as usize % 8);
        }
    }
}

fn bare_tree_mixes(c: &mut Criterion) {
    let texts = shared_prefix();
    for match_pct in [70, 50] {
        let mut g = c.benchmark_group(format!("mix/{match_pct}-{}", 100 - match_pct));
        g.throughput(Throughput::Elements(1));
        g.sample_size(10);
        for threads in [1u64, 2] {
            let ours = ours_tree();
            for t in &texts[..256] {
                ours.insert(t, 0);
            }
            g.bench_function(format!("ours/{threads}t"), |b| {
                b.iter_custom(|iters| mixed(&ours, &texts, iters.max(threads), threads, match_pct))
            });
            let base = BaseTree(baseline::Tree::new(), names());
            for t in &texts[..256] {
                base.insert(t, 0);
            }
            g.bench_function(format!("baseline/{threads}t"), |b| {
                b.iter_custom(|iters| mixed(&base, &texts, iters.max(threads), threads, match_pct))
            });
        }
        g.finish();
    }
}

fn prompt(bytes: usize, multibyte: bool) -> String {
    let mut s = String::with_capacity(bytes + 4);
    let mut x: u32 = 12345;
    while s.len() < bytes {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let c = if multibyte && x % 3 == 0 {
            ['é', '你', 'ß', '好'][(x >> 8) as usize % 4]
        } else {
            char::from(b'a' + ((x >> 16) % 26) as u8)
        };
        s.push(c);
    }
    s
}

fn long_prompts(c: &mut Criterion) {
    for (name, bytes) in [("1KB", 1 << 10), ("64KB", 64 << 10), ("1MB", 1 << 20)] {
        for multibyte in [false, true] {
            let text = prompt(bytes, multibyte);
            let copy = text.clone();
            let kind = if multibyte { "utf8" } else { "ascii" };
            let mut g = c.benchmark_group(format!("long/{name}/{kind}"));
            g.throughput(Throughput::Bytes(text.len() as u64));
            g.bench_function("floor", |b| {
                b.iter(|| black_box(black_box(text.as_bytes()) == black_box(copy.as_bytes())))
            });
            let tree = Tree::new();
            tree.insert(&text, "w");
            key_ops(&mut g, &tree, copy.as_str());
            g.finish();
        }
    }
}

/// `match`, `match_and_insert_hit` (for tenant "w") and `insert_new` (into a fresh tree) of
/// `key`, which `tree` holds.
fn key_ops<K: KeyUnit>(g: &mut BenchmarkGroup<'_, WallTime>, tree: &KeyedTree<K>, key: &K::Key) {
    let w = tree.tenant_id("w").unwrap();
    g.bench_function("match", |b| {
        b.iter(|| black_box(tree.match_counts(black_box(key))))
    });
    g.bench_function("match_and_insert_hit", |b| {
        b.iter(|| black_box(tree.match_and_insert(black_box(key), |_, _| Some(w))))
    });
    g.bench_function("insert_new", |b| {
        b.iter_batched(
            KeyedTree::<K>::new,
            |fresh| {
                fresh.insert(black_box(key), "w");
                fresh
            },
            BatchSize::LargeInput,
        )
    });
}

fn token_prompt(tokens: usize, seed: u32) -> Vec<u32> {
    let mut x = seed;
    (0..tokens)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            x >> 8
        })
        .collect()
}

fn long_token_prompts(c: &mut Criterion) {
    for (name, bytes) in [("1KB", 1 << 10), ("64KB", 64 << 10), ("1MB", 1 << 20)] {
        let tokens = bytes / 4;
        let prompt = token_prompt(tokens, 7);
        let copy = prompt.clone();
        for nodes in [1, 16] {
            let kind = if nodes == 1 { "tokens" } else { "tokens16" };
            let mut g = c.benchmark_group(format!("long/{name}/{kind}"));
            g.throughput(Throughput::Bytes(bytes as u64));
            g.bench_function("floor", |b| {
                b.iter(|| black_box(black_box(&prompt[..]) == black_box(&copy[..])))
            });
            let tree = TokenTree::new();
            let w = tree.tenant_id("w").unwrap();
            tree.insert_for(&prompt, w).unwrap();
            // Prompts branching off at 1/16, 2/16, ...: the prompt's path crosses 16 nodes.
            for i in 1..nodes {
                let mut other = prompt[..tokens * i / nodes].to_vec();
                other.extend(token_prompt(8, 1000 + i as u32));
                tree.insert_for(&other, w).unwrap();
            }
            assert_eq!(tree.match_counts(&copy).matched, tokens);
            key_ops(&mut g, &tree, &copy[..]);
            g.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = long_prompts, long_token_prompts, bare_tree_mixes
}
criterion_main!(benches);
