//! `select_worker` throughput, ours vs the seed's design (benches/baseline), next to the floor
//! (reading each prompt once), on the `shared-prefix` and `mooncake` workloads at 1, 2, 4 and 8
//! threads. One iteration replays the whole workload, in order, through a fresh router (so
//! misses, splits and tree growth are all in it), on threads that claim 8 consecutive requests
//! at a time (`support::run_claimed`), the floor likewise. Throughput is in requests.
//!
//! `cargo bench --bench routing` (`-- --quick` for a fast pass; `BENCH_BLOCK` sets the Mooncake
//! block size in chars, default 256; `BENCH_WORKERS` the worker count, default 8).
#![allow(missing_docs)]

mod baseline;
mod support;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use std::time::Duration;
use support::{
    env, mooncake, parallel_floor, replay, replay_slice, shared_prefix, timed, timed_threads, Base,
    Ours, Router,
};

/// One replay of `texts` split round-robin over one thread per router, each thread routing
/// its share through its own router; returns the wall time.
fn replay_own(routers: &[Ours], texts: &[String]) -> Duration {
    timed_threads(routers.len(), |t| {
        timed(|| replay_slice(&routers[t], texts, t, routers.len()))
    })
}

fn bench_workload(c: &mut Criterion, name: &str, texts: &[String]) {
    let copies: Vec<String> = texts.to_vec();
    let workers = env("BENCH_WORKERS", 8);
    let mut g = c.benchmark_group(format!("routing/{name}/{workers}w"));
    g.throughput(Throughput::Elements(texts.len() as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    for threads in [1, 2, 4, 8] {
        // The floor on as many threads: the memory bandwidth the replay shares.
        g.bench_function(format!("floor/{threads}t"), |b| {
            b.iter(|| parallel_floor(texts, &copies, threads))
        });
    }
    for threads in [1, 2, 4, 8] {
        g.bench_function(format!("ours/{threads}t"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| replay(&Ours::new(workers, 0, 1 << 30), texts, threads))
                    .sum()
            })
        });
    }
    // Scaling diagnostics, ours only. `ours-warm`: the router already holds the workload (one
    // untimed replay first), so the timed replay is nearly all hits and inserts almost
    // nothing. `ours-own`: each thread replays its share into a router of its own, so threads
    // share no memory at all; if this scales no better than `ours`, shared state is not what
    // limits it.
    for threads in [1, 2, 4, 8] {
        g.bench_function(format!("ours-warm/{threads}t"), |b| {
            let warm = Ours::new(workers, 0, 1 << 30);
            replay(&warm, texts, 1);
            b.iter_custom(|iters| (0..iters).map(|_| replay(&warm, texts, threads)).sum())
        });
    }
    for threads in [1, 2, 4, 8] {
        g.bench_function(format!("ours-own/{threads}t"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let own: Vec<Ours> = (0..threads)
                            .map(|_| Ours::new(workers, 0, 1 << 30))
                            .collect();
                        replay_own(&own, texts)
                    })
                    .sum()
            })
        });
    }
    for threads in [1, 2, 4, 8] {
        g.bench_function(format!("baseline/{threads}t"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let r = Base::new(workers, None, 1 << 30);
                        let d = replay(&r as &dyn Router, texts, threads);
                        drop(r);
                        d
                    })
                    .sum()
            })
        });
    }
    g.finish();
}

fn routing(c: &mut Criterion) {
    bench_workload(c, "shared-prefix", &shared_prefix());
    let (texts, _, _) = mooncake(env("BENCH_BLOCK", 256));
    bench_workload(c, "mooncake", &texts);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(2));
    targets = routing
}
criterion_main!(benches);
