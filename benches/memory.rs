//! Memory: bytes allocated (and still live) per distinct stored char after loading the
//! `mooncake` workload (each request routed once, 8 workers), ours vs the seed's design. A
//! counting global allocator measures live bytes before and after; the prompts themselves are
//! allocated before the first reading. Distinct stored chars = distinct blocks x block chars.
//!
//! `cargo bench --bench memory` (`BENCH_BLOCK` sets the block size, default 256).
#![allow(missing_docs)]

mod baseline;
mod support;

use std::alloc::System;
use support::counting::{live, Counting};
use support::{mooncake, Base, Ours, Router};

#[global_allocator]
static GLOBAL: Counting<System> = Counting(System);

/// Lets crossbeam-epoch free what it deferred, so only live structure is counted.
fn settle() {
    for _ in 0..256 {
        crossbeam_epoch::pin().flush();
    }
}

fn load(router: &dyn Router, texts: &[String]) {
    for t in texts {
        std::hint::black_box(router.route(t));
    }
}

fn main() {
    let block = support::env("BENCH_BLOCK", 256);
    let (texts, blocks, source) = mooncake(block);
    let distinct = (blocks * block) as f64;
    println!(
        "mooncake from {source}: {} requests, {blocks} distinct blocks of {block} chars",
        texts.len()
    );

    settle();
    let before = live();
    let ours = Ours::new(8, 0, 1 << 40);
    load(&ours, &texts);
    settle();
    let ours_bytes = (live() - before) as f64;
    let tree_chars: usize = ours
        .policy
        .metrics()
        .tree_chars
        .iter()
        .map(|(_, n)| n)
        .sum();
    drop(ours);
    settle();

    let before = live();
    let base = Base::new(8, None, usize::MAX);
    load(&base, &texts);
    let base_bytes = (live() - before) as f64;
    drop(base);

    println!("| engine   | live bytes | bytes per distinct stored char |");
    println!("|----------|------------|--------------------------------|");
    println!(
        "| ours     | {:>10.0} | {:>30.2} |",
        ours_bytes,
        ours_bytes / distinct
    );
    println!(
        "| baseline | {:>10.0} | {:>30.2} |",
        base_bytes,
        base_bytes / distinct
    );
    println!(
        "\nratio baseline / ours: {:.2}x (ours' tree holds {tree_chars} chars counted per worker)",
        base_bytes / ours_bytes
    );
}
