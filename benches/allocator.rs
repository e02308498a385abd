//! mimalloc vs the system allocator for our engine, and thread scaling under each. The library
//! never sets a global allocator; this bench installs a dispatcher that sends allocations to
//! mimalloc or to the system allocator by a flag, and frees each block with the allocator that
//! owns it (`mi_is_in_heap_region`).
//!
//! Each allocator runs in a process of its own: the bench starts itself again as a child per
//! allocator (`BENCH_ALLOCATOR_CHILD`), which sets the flag before any replay and keeps it.
//! Until session 4 both shared one process, phase by phase, and each disturbed the other (with
//! only mimalloc in use, the same binary scaled Mooncake 1.84x–2.04x at 2 threads where the
//! mixed process read 1.52x–1.68x; glibc's 1-thread replay took 12.9 ms mixed, 9.1–9.9 ms
//! alone): what the table compares is an allocator, not what another left behind.
//!
//! Scaling is measured so that the machine's drift cancels: every round replays cold (a fresh
//! router) at 1, 2, 4 and 8 threads in a random order, next to the floor at the same thread
//! count, and the parent alternates children (`BENCH_ROUNDS` rounds in all per allocator,
//! default 15, in 3 children each). Criterion's figures in `routing` are taken seconds apart per
//! thread count, and their ratios carry the drift of a shared machine.
//!
//! `cargo bench --bench allocator`.
#![allow(missing_docs)]

mod baseline;
mod support;

use support::dispatch::{use_mimalloc, Dispatch};
use support::{mooncake, replay, shared_prefix, Ours};

#[global_allocator]
static GLOBAL: Dispatch = Dispatch;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

const THREADS: [usize; 4] = [1, 2, 4, 8];

/// Per thread count, ours and the floor: ms per replay, from every child of one allocator.
type Samples = Vec<[Vec<f64>; 2]>;

const WORKLOADS: [&str; 2] = ["shared-prefix", "mooncake"];
const CHILD_ENV: &str = "BENCH_ALLOCATOR_CHILD";
/// Children per allocator: alternating them spreads the machine's drift over both.
const CHILDREN: usize = 3;

fn main() {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok(allocator) => child(allocator == "mimalloc"),
        Err(_) => parent(),
    }
}

/// Replays every workload `BENCH_CHILD_ROUNDS` rounds under one allocator, printing one line
/// per replay: `workload threads ours_ms floor_ms`. `BENCH_CHILD_SEED` orders the rounds.
fn child(mimalloc: bool) {
    use_mimalloc(mimalloc);
    let rounds = support::env("BENCH_CHILD_ROUNDS", 5);
    let workloads = [shared_prefix(), mooncake(256).0];
    let mut rng = support::Rng::new(support::env("BENCH_CHILD_SEED", 7) as u64);
    for (name, texts) in WORKLOADS.iter().zip(&workloads) {
        let copies = texts.clone();
        for _ in 0..rounds {
            // Every round visits each thread count in a fresh random order: drift and whatever
            // one replay leaves behind fall on every thread count alike.
            let mut order: Vec<usize> = (0..THREADS.len()).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.next() as usize % (i + 1));
            }
            for &k in &order {
                let router = Ours::new(8, 0, 1 << 40);
                let ours = replay(&router, texts, THREADS[k]);
                drop(router);
                let floor = support::parallel_floor(texts, &copies, THREADS[k]);
                println!(
                    "{name} {} {} {}",
                    THREADS[k],
                    ours.as_secs_f64() * 1e3,
                    floor.as_secs_f64() * 1e3
                );
            }
        }
    }
}

/// Runs the children, alternating allocators, and prints the table from all their replays.
fn parent() {
    let rounds = support::env("BENCH_ROUNDS", 15);
    let per_child = rounds.div_ceil(CHILDREN);
    let exe = std::env::current_exe().expect("the bench's own path");
    // [allocator: system, mimalloc][workload][thread count]
    let mut all: Vec<Vec<Samples>> =
        vec![vec![vec![[Vec::new(), Vec::new()]; THREADS.len()]; 2]; 2];
    for turn in 0..2 * CHILDREN {
        let mi = turn % 2;
        let out = std::process::Command::new(&exe)
            .args(std::env::args().skip(1))
            .env(CHILD_ENV, if mi == 1 { "mimalloc" } else { "system" })
            .env("BENCH_CHILD_ROUNDS", per_child.to_string())
            .env("BENCH_CHILD_SEED", (7 + turn).to_string())
            .output()
            .expect("the bench can start itself");
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let w = WORKLOADS
                .iter()
                .position(|n| *n == f[0])
                .expect("a known workload");
            let k = THREADS
                .iter()
                .position(|t| t.to_string() == f[1])
                .expect("a thread count");
            all[mi][w][k][0].push(f[2].parse().expect("ms"));
            all[mi][w][k][1].push(f[3].parse().expect("ms"));
        }
    }
    println!(
        "{} rounds per allocator, each allocator in its own processes; scaling: median replay time at 1 thread / at n\n",
        per_child * CHILDREN
    );
    println!("| workload      | threads | system (ms) | mimalloc (ms) | system / mimalloc | floor scaling | system scaling | mimalloc scaling |");
    println!("|---------------|---------|-------------|---------------|-------------------|---------------|----------------|------------------|");
    for (w, name) in WORKLOADS.iter().enumerate() {
        // [thread count][system, mimalloc, floor (both children's)]
        let med: Vec<[f64; 3]> = (0..THREADS.len())
            .map(|k| {
                let mut floor = all[0][w][k][1].clone();
                floor.extend_from_slice(&all[1][w][k][1]);
                [
                    median(&mut all[0][w][k][0].clone()),
                    median(&mut all[1][w][k][0].clone()),
                    median(&mut floor),
                ]
            })
            .collect();
        for (k, t) in THREADS.iter().enumerate() {
            let [s, m, f] = med[k];
            println!(
                "| {name:<13} | {t:>7} | {s:>11.2} | {m:>13.2} | {:>16.2}x | {:>12.2}x | {:>13.2}x | {:>15.2}x |",
                s / m,
                med[0][2] / f,
                med[0][0] / s,
                med[0][1] / m,
            );
        }
    }
}
