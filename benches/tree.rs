//! Per-char cost of the tree's match and insert on single long prompts (1 KB, 64 KB, 1 MB,
//! ASCII and multi-byte), next to the floor: comparing the prompt with an equal copy (`a == b`),
//! i.e. reading it once. Criterion reports bytes/s; the ratio to `floor` is what travels.
//!
//! `cargo bench --bench tree` (add `-- --quick` for a fast pass).
// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use cache_aware_router::Tree;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::time::Duration;

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
            let w = tree.tenant_id("w").unwrap();
            tree.insert(&text, "w");
            g.bench_function("match", |b| {
                b.iter(|| black_box(tree.match_counts(black_box(&copy))))
            });
            g.bench_function("match_and_insert_hit", |b| {
                b.iter(|| black_box(tree.match_and_insert(black_box(&copy), |_, _| Some(w))))
            });
            g.bench_function("insert_new", |b| {
                b.iter_batched(
                    Tree::new,
                    |fresh| {
                        fresh.insert(black_box(&copy), "w");
                        fresh
                    },
                    BatchSize::LargeInput,
                )
            });
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
    targets = long_prompts
}
criterion_main!(benches);
