//! Churn: 2 threads loop over the `mooncake` workload for a fixed time, each request routed
//! through one router, with a budget of a quarter of the workload's distinct chars (so the tree
//! keeps evicting), against the same loop with no budget, the floor (reading each prompt once)
//! and the seed's design with its own eviction thread, all in one run. Reports, per scenario:
//! decisions per second, p50/p99/p99.9 latency of single decisions, the tree's size as a
//! multiple of the budget (sampled every 10 ms: the largest sample and the last), and the bytes
//! still allocated per stored char once the loop has stopped and `run_eviction` has collected
//! what evictions retired (a counting allocator over mimalloc; the prompts are allocated
//! before the first reading).
//!
//! `cargo bench --bench churn` (env: `BENCH_BLOCK` block chars, default 256; `BENCH_SECS`
//! seconds per scenario, default 3; `BENCH_THREADS`, default 2).
#![allow(missing_docs)]

mod baseline;
mod support;

use hdrhistogram::Histogram;
use mimalloc::MiMalloc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::counting::{live, Counting};
use support::{env, mooncake, Base, Ours, Router};

#[global_allocator]
static GLOBAL: Counting<MiMalloc> = Counting(MiMalloc);

/// What one scenario measured.
struct Run {
    latency: Histogram<u64>,
    decisions: u64,
    wall: Duration,
    /// Tree chars at each 10 ms sample (empty for routers without a tree size).
    sizes: Vec<usize>,
}

impl Run {
    fn per_sec(&self) -> f64 {
        self.decisions as f64 / self.wall.as_secs_f64()
    }
    fn q(&self, p: f64) -> f64 {
        self.latency.value_at_quantile(p) as f64
    }
}

/// `threads` threads call `each(i)` over `0..len` in a loop, thread `t` starting at
/// `t * len / threads`, for `secs`; `size()` is sampled every 10 ms meanwhile.
fn churn(
    len: usize,
    threads: usize,
    secs: f64,
    each: impl Fn(usize) + Sync,
    size: impl Fn() -> Option<usize> + Sync,
) -> Run {
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (latency, decisions, sizes) = std::thread::scope(|s| {
        let (each, stop) = (&each, &stop);
        let routers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut h = Histogram::<u64>::new(3).unwrap();
                    let mut i = t * len / threads;
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let at = Instant::now();
                        each(i);
                        h.record(at.elapsed().as_nanos() as u64).unwrap();
                        i = (i + 1) % len;
                        n += 1;
                    }
                    (h, n)
                })
            })
            .collect();
        let mut sizes = Vec::new();
        let deadline = start + Duration::from_secs_f64(secs);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            sizes.extend(size());
        }
        stop.store(true, Ordering::Relaxed);
        let mut latency = Histogram::<u64>::new(3).unwrap();
        let mut decisions = 0;
        for r in routers {
            let (h, n) = r.join().unwrap();
            latency.add(h).unwrap();
            decisions += n;
        }
        (latency, decisions, sizes)
    });
    Run {
        latency,
        decisions,
        wall: start.elapsed(),
        sizes,
    }
}

fn tree_chars(router: &Ours) -> usize {
    router
        .policy
        .metrics()
        .tree_chars
        .first()
        .map_or(0, |t| t.1)
}

/// Runs `router` through the churn loop; returns the run and the bytes per stored char left
/// allocated after it stopped and `run_eviction` collected what evictions retired.
fn churn_ours(router: Ours, texts: &[String], threads: usize, secs: f64) -> (Run, f64) {
    let live_before = live();
    let run = churn(
        texts.len(),
        threads,
        secs,
        |i| {
            std::hint::black_box(router.route(&texts[i]));
        },
        || Some(tree_chars(&router)),
    );
    router.policy.run_eviction();
    let stored = tree_chars(&router).max(1);
    let bytes = (live() - live_before) as f64;
    drop(router);
    (run, bytes / stored as f64)
}

/// Replays the workload once per fresh router (no budget) on `threads` threads, thread `t`
/// taking every `threads`-th request from `t`, until `secs` of replay have run; only the
/// replays are timed.
fn churn_cold(texts: &[String], threads: usize, secs: f64) -> Run {
    let mut latency = Histogram::<u64>::new(3).unwrap();
    let (mut decisions, mut wall) = (0, Duration::ZERO);
    while wall.as_secs_f64() < secs {
        let router = Ours::new(8, 0, 1 << 40);
        let start = Instant::now();
        std::thread::scope(|s| {
            let router = &router;
            let replays: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || {
                        let mut h = Histogram::<u64>::new(3).unwrap();
                        for text in texts.iter().skip(t).step_by(threads) {
                            let at = Instant::now();
                            std::hint::black_box(router.route(text));
                            h.record(at.elapsed().as_nanos() as u64).unwrap();
                        }
                        h
                    })
                })
                .collect();
            for r in replays {
                latency.add(r.join().unwrap()).unwrap();
            }
        });
        wall += start.elapsed();
        decisions += texts.len() as u64;
    }
    Run {
        latency,
        decisions,
        wall,
        sizes: Vec::new(),
    }
}

fn main() {
    let block = env("BENCH_BLOCK", 256);
    let secs = env("BENCH_SECS", 3) as f64;
    let threads = env("BENCH_THREADS", 2);
    let (texts, blocks, source) = mooncake(block);
    let distinct = blocks * block;
    let budget = distinct / 4;
    println!(
        "churn: mooncake from {source}, {} requests, block {block} chars, {threads} threads looping for {secs} s per scenario; budget {budget} chars (a quarter of the {distinct} distinct chars); allocator mimalloc (counted)\n",
        texts.len()
    );

    let copies = texts.clone();
    let floor = churn(
        texts.len(),
        threads,
        secs,
        |i| {
            std::hint::black_box(
                std::hint::black_box(texts[i].as_bytes())
                    == std::hint::black_box(copies[i].as_bytes()),
            );
        },
        || None,
    );
    // The router is built before the count starts, so its fixed allocations (workers, tables,
    // shard roots) count as stored structure; they are small against megabytes of text.
    let (plain, plain_bytes) = churn_ours(Ours::new(8, 0, 1 << 40), &texts, threads, secs);
    let (evict, evict_bytes) = churn_ours(Ours::new(8, 1, budget), &texts, threads, secs);
    // The bound for the budget's loop: a request there mostly inserts what an eviction took,
    // so the same loop with nothing evicted but every prompt new (a fresh router, no budget,
    // for each replay of the workload; building and dropping it is not timed).
    let cold = churn_cold(&texts, threads, secs);
    // The seed's design with its eviction thread (every 20 ms, per-tenant budget / 8 workers).
    let base = Base::new(8, Some(Duration::from_millis(20)), budget / 8);
    let base_run = churn(
        texts.len(),
        threads,
        secs,
        |i| {
            std::hint::black_box(base.route(&texts[i]));
        },
        || None,
    );
    // The seed's thread cannot be stopped; it is leaked with the policy's trees.
    std::mem::forget(base);

    println!("| scenario               | decisions/s | p50 (us) | p99 (us) | p99.9 (us) | tree/budget max | at end | bytes/char |");
    println!("|------------------------|-------------|----------|----------|------------|-----------------|--------|------------|");
    let row = |name: &str, r: &Run, sizes: Option<(f64, f64)>, bytes: Option<f64>| {
        let (max, end) = sizes.map_or(("-".into(), "-".into()), |(m, e)| {
            (format!("{m:.3}"), format!("{e:.3}"))
        });
        let bytes = bytes.map_or("-".into(), |b| format!("{b:.2}"));
        println!(
            "| {name:<22} | {:>11.0} | {:>8.2} | {:>8.2} | {:>10.2} | {max:>15} | {end:>6} | {bytes:>10} |",
            r.per_sec(),
            r.q(0.5) / 1e3,
            r.q(0.99) / 1e3,
            r.q(0.999) / 1e3,
        );
    };
    let over = |r: &Run| {
        let max = r.sizes.iter().copied().max().unwrap_or(0) as f64 / budget as f64;
        let end = r.sizes.last().copied().unwrap_or(0) as f64 / budget as f64;
        (max, end)
    };
    row("floor (read once)", &floor, None, None);
    row("ours, no budget", &plain, None, Some(plain_bytes));
    row(
        "ours, budget 1/4",
        &evict,
        Some(over(&evict)),
        Some(evict_bytes),
    );
    row("ours, cold, no budget", &cold, None, None);
    row("seed design, evicting", &base_run, None, None);
    println!(
        "\nours with the budget / without: decisions/s {:.2}x, p50 {:.2}x, p99 {:.2}x, p99.9 {:.2}x; bytes per stored char {:.2}x; tree at most {:.3}x its budget over {} samples",
        evict.per_sec() / plain.per_sec(),
        evict.q(0.5) / plain.q(0.5),
        evict.q(0.99) / plain.q(0.99),
        evict.q(0.999) / plain.q(0.999),
        evict_bytes / plain_bytes,
        over(&evict).0,
        evict.sizes.len(),
    );
    println!(
        "ours with the budget / cold inserts with no budget (every prompt new, nothing evicted): decisions/s {:.2}x, p50 {:.2}x, p99 {:.2}x, p99.9 {:.2}x",
        evict.per_sec() / cold.per_sec(),
        evict.q(0.5) / cold.q(0.5),
        evict.q(0.99) / cold.q(0.99),
        evict.q(0.999) / cold.q(0.999),
    );
    println!(
        "floor / ours with the budget, decisions/s: {:.1}x; ours with the budget / seed design evicting: {:.0}x decisions/s, p99.9 {:.3}x",
        floor.per_sec() / evict.per_sec(),
        evict.per_sec() / base_run.per_sec(),
        evict.q(0.999) / base_run.q(0.999),
    );
}
