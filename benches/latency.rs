//! Latency percentiles of single routing decisions at 2 threads on `mooncake`, ours vs the
//! seed's design: first with no eviction, then while eviction runs passes that really remove
//! nodes (a budget of a quarter of the workload). Every figure is also given as a multiple of
//! the floor of the median request (comparing it with an equal copy). On Linux it also counts
//! how often the routing threads slept (voluntary context switches: lock waits, which lock-free
//! code should not have, but glibc's malloc arenas do) and how much CPU the evictor took. The
//! floor is also timed request by request, the same way, so the table shows what the machine
//! itself adds to a tail.
//!
//! `cargo bench --bench latency` (env: `BENCH_BLOCK` block chars, default 256; `BENCH_PASSES`
//! replays per scenario, default 3).
#![allow(missing_docs)]

mod baseline;
mod support;

use hdrhistogram::Histogram;
use std::time::{Duration, Instant};
use support::{env, mooncake, Base, Ours, Router};

/// Times the calling thread went to sleep voluntarily (waiting on a lock, mostly): Linux's
/// `/proc/thread-self/status`; 0 where that is not available.
fn voluntary_switches() -> u64 {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Milliseconds the evictor thread (`router-evictor`) has run on a CPU so far: Linux's
/// per-thread `schedstat`; `None` where that is not available.
fn evictor_cpu_ms() -> Option<f64> {
    std::fs::read_dir("/proc/self/task").ok()?.find_map(|task| {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() != "router-evictor" {
            return None;
        }
        let stat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
        let ns: f64 = stat.split_whitespace().next()?.parse().ok()?;
        Some(ns / 1e6)
    })
}

/// What one scenario measured.
struct Run {
    latency: Histogram<u64>,
    /// Voluntary sleeps of the two routing threads, together.
    sleeps: u64,
    wall: Duration,
}

/// Replays `texts` `passes` times through `router` on 2 threads, recording each decision's
/// latency in ns.
fn record(router: &dyn Router, texts: &[String], passes: usize) -> Run {
    record_each(texts.len(), passes, |i| {
        std::hint::black_box(router.route(&texts[i]));
    })
}

/// Runs `each(i)` for every request index `passes` times over, on 2 threads (even indexes on
/// one, odd on the other), timing each call in ns.
fn record_each(len: usize, passes: usize, each: impl Fn(usize) + Sync) -> Run {
    let mut latency = Histogram::<u64>::new(3).unwrap();
    let mut sleeps = 0;
    let start = Instant::now();
    std::thread::scope(|s| {
        let each = &each;
        let handles: Vec<_> = (0..2)
            .map(|t| {
                s.spawn(move || {
                    let mut h = Histogram::<u64>::new(3).unwrap();
                    let before = voluntary_switches();
                    for _ in 0..passes {
                        for i in (t..len).step_by(2) {
                            let start = Instant::now();
                            each(i);
                            h.record(start.elapsed().as_nanos() as u64).unwrap();
                        }
                    }
                    (h, voluntary_switches() - before)
                })
            })
            .collect();
        for handle in handles {
            let (h, n) = handle.join().unwrap();
            latency.add(h).unwrap();
            sleeps += n;
        }
    });
    Run {
        latency,
        sleeps,
        wall: start.elapsed(),
    }
}

/// The floor of the median request: ns to compare it with an equal copy.
fn median_floor(texts: &[String]) -> f64 {
    let mut lens: Vec<&String> = texts.iter().collect();
    lens.sort_by_key(|t| t.len());
    let median = lens[lens.len() / 2];
    let copy = median.clone();
    let reps = 20_000;
    let start = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(
            std::hint::black_box(median.as_bytes()) == std::hint::black_box(copy.as_bytes()),
        );
    }
    start.elapsed().as_nanos() as f64 / reps as f64
}

fn row(name: &str, run: &Run, floor: f64) {
    let h = &run.latency;
    let q = |p: f64| h.value_at_quantile(p) as f64;
    println!(
        "| {name:<26} | {:>9.1} | {:>9.1} | {:>9.1} | {:>9.1} | {:>6.0}x | {:>7.0}x | {:>6} |",
        q(0.5) / 1e3,
        q(0.99) / 1e3,
        q(0.999) / 1e3,
        h.max() as f64 / 1e3,
        q(0.5) / floor,
        q(0.999) / floor,
        run.sleeps,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; criterion-style filters are not supported here.
    let block = env("BENCH_BLOCK", 256);
    let passes = env("BENCH_PASSES", 3);
    let (texts, blocks, source) = mooncake(block);
    let distinct_chars = blocks * block;
    let budget = distinct_chars / 4;
    let floor = median_floor(&texts);
    println!(
        "mooncake from {source}: {} requests, block {block} chars",
        texts.len()
    );
    println!(
        "floor of the median request: {floor:.0} ns; 2 threads, {passes} replays per scenario"
    );
    println!("eviction scenario budget: {budget} chars (a quarter of the {distinct_chars} distinct chars)\n");
    println!("| scenario                   | p50 (us)  | p99 (us)  | p99.9 (us)| max (us)  | p50/fl  | p99.9/fl | sleeps |");
    println!("|----------------------------|-----------|-----------|-----------|-----------|---------|----------|--------|");

    // The floor itself, request by request, timed the same way: what this machine does to a
    // loop that only reads each prompt once (its interrupts, preemptions and page faults, and
    // the two clock reads around each request).
    let copies = texts.clone();
    let floor_run = record_each(texts.len(), passes, |i| {
        std::hint::black_box(
            std::hint::black_box(texts[i].as_bytes()) == std::hint::black_box(copies[i].as_bytes()),
        );
    });
    row("floor (each request)", &floor_run, floor);

    let ours = Ours::new(8, 0, 1 << 40);
    let ours_plain = record(&ours, &texts, passes);
    row("ours, no eviction", &ours_plain, floor);
    drop(ours);

    // Evictor thread on: a tick every second plus early wakes whenever a tree crosses the
    // budget, which this workload does continually.
    let ours = Ours::new(8, 1, budget);
    let ours_evict = record(&ours, &texts, passes);
    let m = ours.policy.metrics();
    let evictor_ms = evictor_cpu_ms();
    row("ours, evicting", &ours_evict, floor);
    drop(ours);

    let base = Base::new(8, None, usize::MAX);
    let base_plain = record(&base, &texts, passes);
    row("baseline, no eviction", &base_plain, floor);
    drop(base);

    // The seed's eviction thread: a pass (holding the global mutex) every 20 ms, per-tenant
    // budget of budget / 8 workers.
    let base = Base::new(8, Some(Duration::from_millis(20)), budget / 8);
    let base_evict = record(&base, &texts, passes);
    row("baseline, evicting", &base_evict, floor);
    // The seed's thread cannot be stopped; it is leaked with the policy's trees.
    std::mem::forget(base);

    println!(
        "\nours, evicting: {} passes removed {} nodes ({} chars);",
        m.eviction_passes, m.evicted_nodes, m.evicted_chars
    );
    if let Some(ms) = evictor_ms {
        println!(
            "the evictor ran {ms:.1} ms on a CPU in {:.1} ms of replay ({:.0}% of the 2 cores);",
            ours_evict.wall.as_secs_f64() * 1e3,
            ms / (ours_evict.wall.as_secs_f64() * 1e3 * 2.0) * 100.0
        );
    }
    println!(
        "sleeps: voluntary context switches of the 2 routing threads (lock waits; Linux only);"
    );
    let ratio = |a: &Run, b: &Run, p: f64| {
        a.latency.value_at_quantile(p) as f64 / b.latency.value_at_quantile(p) as f64
    };
    println!(
        "ours p99.9 evicting / not evicting: {:.2}x; ours p99.9 / floor p99.9 (no eviction): {:.1}x; baseline p99.9 / ours p99.9 (evicting): {:.0}x; p50: {:.0}x",
        ratio(&ours_evict, &ours_plain, 0.999),
        ratio(&ours_plain, &floor_run, 0.999),
        ratio(&base_evict, &ours_evict, 0.999),
        ratio(&base_evict, &ours_evict, 0.5),
    );
}
