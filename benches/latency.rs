//! Latency percentiles of single routing decisions at 2 threads on `mooncake`, ours vs the
//! seed's design: first with no eviction, then while eviction runs passes that really remove
//! nodes (a budget of a quarter of the workload). Ours is measured three ways: replays into one
//! router (after the first, a router without a budget only has hits, one with a budget keeps
//! inserting, so the pair compares different work), cold replays (a fresh router per replay:
//! both insert every prompt), and cold replays on one routing thread (the evictor has a core
//! to itself), which separates what eviction costs a request from what a third busy thread
//! on two saturated cores costs. Requests evict themselves: the one whose insert takes the tree
//! over its budget trims it back. Every figure is also given as a multiple of
//! the floor of the median request (comparing it with an equal copy). On Linux it also counts
//! how often the routing threads slept (voluntary context switches: lock waits, which lock-free
//! code should not have, but glibc's malloc arenas do) and how much CPU the evictor took. The
//! floor is also timed request by request, the same way, so the table shows what the machine
//! itself adds to a tail.
//!
//! Under mimalloc by default: with glibc's malloc the routing threads' tails were its arena
//! locks (about a thousand sleeps per scenario, none under mimalloc), which says nothing about
//! the engine. `BENCH_ALLOCATOR=system` measures glibc's.
//!
//! `cargo bench --bench latency` (env: `BENCH_BLOCK` block chars, default 256; `BENCH_PASSES`
//! replays per scenario, default 3; `BENCH_OURS_PASSES` for our scenarios, default 10, since
//! ours replay in milliseconds where the baseline takes seconds).
#![allow(missing_docs)]

mod baseline;
mod support;

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::dispatch::{use_mimalloc, Dispatch};
use support::{env, mooncake, Base, Ours, Router};

#[global_allocator]
static GLOBAL: Dispatch = Dispatch;

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
    /// Voluntary sleeps of the routing threads, together.
    sleeps: u64,
    wall: Duration,
}

/// Replays `texts` `passes` times through `router` on `threads` threads, recording each
/// decision's latency in ns.
fn record(router: &dyn Router, texts: &[String], passes: usize, threads: usize) -> Run {
    record_each(texts.len(), passes, threads, |i| {
        std::hint::black_box(router.route(&texts[i]));
    })
}

/// Eviction work a cold run's routers did, summed.
#[derive(Default)]
struct Evicted {
    passes: usize,
    nodes: usize,
}

/// Replays `texts` `passes` times, each through a fresh router from `make` (built and dropped
/// outside the timing), on `threads` threads.
fn record_cold(
    make: impl Fn() -> Ours,
    texts: &[String],
    passes: usize,
    threads: usize,
) -> (Run, Evicted) {
    let mut total: Option<Run> = None;
    let mut evicted = Evicted::default();
    for _ in 0..passes {
        let router = make();
        let run = record(&router, texts, 1, threads);
        let m = router.policy.metrics();
        evicted.passes += m.eviction_passes;
        evicted.nodes += m.evicted_nodes;
        drop(router);
        match &mut total {
            None => total = Some(run),
            Some(t) => {
                t.latency.add(&run.latency).unwrap();
                t.sleeps += run.sleeps;
                t.wall += run.wall;
            }
        }
    }
    (total.expect("at least one replay"), evicted)
}

/// Runs `each(i)` for every request index `passes` times over, on `threads` threads (thread `t`
/// takes indexes `t`, `t + threads`, ...), timing each call in ns.
fn record_each(len: usize, passes: usize, threads: usize, each: impl Fn(usize) + Sync) -> Run {
    let mut latency = Histogram::<u64>::new(3).unwrap();
    let mut sleeps = 0;
    let start = Instant::now();
    std::thread::scope(|s| {
        let each = &each;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut h = Histogram::<u64>::new(3).unwrap();
                    let before = voluntary_switches();
                    for _ in 0..passes {
                        for i in (t..len).step_by(threads) {
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

/// The largest and the mean tree size a sampler saw (every 50 us) while `router` replayed
/// `texts` once on 2 threads, as multiples of `budget`. The sampler is a third thread, so these
/// replays are separate from the timed ones.
fn tree_over_budget(router: &Ours, texts: &[String], budget: usize) -> (f64, f64) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let (mut peak, mut sum, mut samples) = (0, 0, 0);
            while !stop.load(Ordering::Relaxed) {
                let size = router
                    .policy
                    .metrics()
                    .tree_chars
                    .first()
                    .map_or(0, |t| t.1);
                (peak, sum, samples) = (peak.max(size), sum + size, samples + 1);
                std::thread::sleep(Duration::from_micros(50));
            }
            (peak, sum / samples.max(1))
        });
        record(router, texts, 1, 2);
        stop.store(true, Ordering::Relaxed);
        let (peak, mean) = sampler.join().unwrap();
        (peak as f64 / budget as f64, mean as f64 / budget as f64)
    })
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
    // mimalloc unless `BENCH_ALLOCATOR=system`: before anything is allocated for the run.
    let system = std::env::var("BENCH_ALLOCATOR").is_ok_and(|a| a == "system");
    use_mimalloc(!system);
    let allocator = if system {
        "the system's (glibc)"
    } else {
        "mimalloc"
    };
    // `cargo bench` passes `--bench`; criterion-style filters are not supported here.
    let block = env("BENCH_BLOCK", 256);
    let passes = env("BENCH_PASSES", 3);
    let ours_passes = env("BENCH_OURS_PASSES", 10);
    let (texts, blocks, source) = mooncake(block);
    let distinct_chars = blocks * block;
    let budget = distinct_chars / 4;
    let floor = median_floor(&texts);
    println!(
        "mooncake from {source}: {} requests, block {block} chars; allocator: {allocator}",
        texts.len()
    );
    println!(
        "floor of the median request: {floor:.0} ns; 2 threads unless marked 1t; {ours_passes} replays per scenario of ours and the floor, {passes} of the baseline"
    );
    println!("eviction scenario budget: {budget} chars (a quarter of the {distinct_chars} distinct chars)\n");
    println!("| scenario                   | p50 (us)  | p99 (us)  | p99.9 (us)| max (us)  | p50/fl  | p99.9/fl | sleeps |");
    println!("|----------------------------|-----------|-----------|-----------|-----------|---------|----------|--------|");

    // The floor itself, request by request, timed the same way: what this machine does to a
    // loop that only reads each prompt once (its interrupts, preemptions and page faults, and
    // the two clock reads around each request).
    let copies = texts.clone();
    let floor_run = record_each(texts.len(), ours_passes, 2, |i| {
        std::hint::black_box(
            std::hint::black_box(texts[i].as_bytes()) == std::hint::black_box(copies[i].as_bytes()),
        );
    });
    row("floor (each request)", &floor_run, floor);

    let ours = Ours::new(8, 0, 1 << 40);
    let ours_plain = record(&ours, &texts, ours_passes, 2);
    row("ours, no eviction", &ours_plain, floor);
    drop(ours);

    // Eviction on: the request that takes the tree over its budget trims it, which this
    // workload does continually; the evictor ticks every second.
    let ours = Ours::new(8, 1, budget);
    let ours_evict = record(&ours, &texts, ours_passes, 2);
    let m = ours.policy.metrics();
    let evictor_ms = evictor_cpu_ms();
    row("ours, evicting", &ours_evict, floor);
    drop(ours);

    let unbounded = || Ours::new(8, 0, 1 << 40);
    let bounded = || Ours::new(8, 1, budget);
    let (cold_plain, _) = record_cold(unbounded, &texts, ours_passes, 2);
    row("ours cold, no eviction", &cold_plain, floor);
    let (cold_evict, cold_evicted) = record_cold(bounded, &texts, ours_passes, 2);
    row("ours cold, evicting", &cold_evict, floor);
    let (cold_plain_1t, _) = record_cold(unbounded, &texts, ours_passes, 1);
    row("ours cold 1t, no eviction", &cold_plain_1t, floor);
    let (cold_evict_1t, _) = record_cold(bounded, &texts, ours_passes, 1);
    row("ours cold 1t, evicting", &cold_evict_1t, floor);

    let base = Base::new(8, None, usize::MAX);
    let base_plain = record(&base, &texts, passes, 2);
    row("baseline, no eviction", &base_plain, floor);
    drop(base);

    // The seed's eviction thread: a pass (holding the global mutex) every 20 ms, per-tenant
    // budget of budget / 8 workers.
    let base = Base::new(8, Some(Duration::from_millis(20)), budget / 8);
    let base_evict = record(&base, &texts, passes, 2);
    row("baseline, evicting", &base_evict, floor);
    // The seed's thread cannot be stopped; it is leaked with the policy's trees.
    std::mem::forget(base);

    println!(
        "\nours, evicting: {} evictions removed {} nodes ({} chars); ours cold, evicting: {} evictions removed {} nodes;",
        m.eviction_passes, m.evicted_nodes, m.evicted_chars, cold_evicted.passes, cold_evicted.nodes
    );
    if let Some(ms) = evictor_ms {
        println!(
            "the evictor ran {ms:.1} ms on a CPU in {:.1} ms of replay ({:.0}% of the 2 cores);",
            ours_evict.wall.as_secs_f64() * 1e3,
            ms / (ours_evict.wall.as_secs_f64() * 1e3 * 2.0) * 100.0
        );
    }
    println!("sleeps: voluntary context switches of the routing threads (lock waits; Linux only);");
    let ratio = |a: &Run, b: &Run, p: f64| {
        a.latency.value_at_quantile(p) as f64 / b.latency.value_at_quantile(p) as f64
    };
    println!(
        "ours p99.9 evicting / not evicting: {:.2}x replaying into one router, {:.2}x cold, {:.2}x cold on 1 thread (p99: {:.2}x, {:.2}x, {:.2}x)",
        ratio(&ours_evict, &ours_plain, 0.999),
        ratio(&cold_evict, &cold_plain, 0.999),
        ratio(&cold_evict_1t, &cold_plain_1t, 0.999),
        ratio(&ours_evict, &ours_plain, 0.99),
        ratio(&cold_evict, &cold_plain, 0.99),
        ratio(&cold_evict_1t, &cold_plain_1t, 0.99),
    );
    let sizes = || {
        (0..5)
            .map(|_| {
                let router = Ours::new(8, 1, budget);
                let (peak, mean) = tree_over_budget(&router, &texts, budget);
                format!("{peak:.2} ({mean:.2})")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "tree size / budget, peak (mean), in 5 cold 2-thread replays (sampled every 50 us): {}",
        sizes()
    );
    println!(
        "ours p99.9 / floor p99.9 (no eviction): {:.1}x; baseline p99.9 / ours p99.9 (evicting): {:.0}x; p50: {:.0}x",
        ratio(&ours_plain, &floor_run, 0.999),
        ratio(&base_evict, &ours_evict, 0.999),
        ratio(&base_evict, &ours_evict, 0.5),
    );
}
