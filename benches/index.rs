//! The precise index (`KvIndex`) on a Mooncake replay that emits KV events, against two naive
//! baselines and the floor in the same run.
//!
//! The replay: each request's hash ids become chained block keys (each key a hash of its
//! parent's and its own id, as engines chain them); 8 simulated workers keep LRU caches of a
//! sixteenth of the trace's distinct blocks each (evicting a prompt's tail before its head, as
//! vLLM does), and each request goes to the worker holding its longest prefix (round-robin on
//! a miss). What that produces is recorded once: for every request, a match of its blocks,
//! then the `Stored` event of its new blocks and the `Removed` events of what they evicted.
//!
//! Measured, one core each:
//! - the whole stream (matches, stores, removes) in block operations per second: ours, a
//!   worker -> set of blocks baseline, a block -> set of workers baseline (both std `HashMap`s
//!   with a multiplicative hasher and no synchronisation at all, which a shared index would
//!   need), the latter behind the `RwLock` that sharing it would take, and the floor (reading
//!   every block key of the stream once);
//! - the latency of 100-block matches at 8 workers (per call, `Instant` around it), idle and
//!   while a second thread streams the events in, for ours and the `RwLock` baseline;
//! - memory per stored block and per (worker, block) pair.
//!
//! `cargo bench --bench index` (env: `BENCH_PASSES` replays of the stream, default 5;
//! `BENCH_LATENCY_SECS` per latency scenario, default 2).
#![allow(missing_docs)]

mod baseline;
mod support;

use cache_aware_router::{KvEvent, KvIndex, KvIndexConfig};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};
use support::{env, mooncake_ids};

const WORKERS: usize = 8;

/// A multiplicative hasher for u64 keys (what a fair baseline would use over SipHash).
#[derive(Default)]
struct Mul(u64);

impl Hasher for Mul {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x100_0000_01B3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type Fast = BuildHasherDefault<Mul>;

/// One step of the recorded stream.
enum Op {
    Match(Vec<u64>),
    Event(usize, KvEvent),
}

/// splitmix64: the chaining hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn chain(ids: &[u64]) -> Vec<u64> {
    let mut parent = 0u64;
    ids.iter()
        .map(|id| {
            parent = mix(parent ^ mix(*id));
            parent
        })
        .collect()
}

/// One worker's LRU cache of blocks.
#[derive(Default)]
struct Lru {
    ticks: HashMap<u64, u64, Fast>,
    order: BTreeMap<u64, u64>,
}

impl Lru {
    fn touch(&mut self, block: u64, tick: u64) -> bool {
        let new = match self.ticks.insert(block, tick) {
            Some(old) => {
                self.order.remove(&old);
                false
            }
            None => true,
        };
        self.order.insert(tick, block);
        new
    }

    fn evict_over(&mut self, capacity: usize) -> Vec<u64> {
        let mut out = vec![];
        while self.ticks.len() > capacity {
            let (_, block) = self.order.pop_first().expect("non-empty");
            self.ticks.remove(&block);
            out.push(block);
        }
        out
    }
}

/// The recorded stream, and the distinct blocks of the trace.
fn record_stream() -> (Vec<Op>, usize, &'static str) {
    let (trace, source) = mooncake_ids();
    let chains: Vec<Vec<u64>> = trace.iter().map(|ids| chain(ids)).collect();
    let distinct: HashSet<u64> = chains.iter().flatten().copied().collect();
    let capacity = (distinct.len() / 16).max(1);
    let mut caches: Vec<Lru> = (0..WORKERS).map(|_| Lru::default()).collect();
    let mut ops = vec![];
    let mut tick = 0;
    for (i, blocks) in chains.iter().enumerate() {
        ops.push(Op::Match(blocks.clone()));
        let depth = |c: &Lru| {
            blocks
                .iter()
                .take_while(|b| c.ticks.contains_key(b))
                .count()
        };
        let best = (0..WORKERS).max_by_key(|w| (depth(&caches[*w]), *w == i % WORKERS));
        let w = best.expect("workers");
        let w = if depth(&caches[w]) == 0 {
            i % WORKERS
        } else {
            w
        };
        let held = depth(&caches[w]);
        // Tail first, so the tail is older than the head and evicted before it.
        let mut new = vec![];
        for b in blocks.iter().rev() {
            tick += 1;
            if caches[w].touch(*b, tick) {
                new.push(*b);
            }
        }
        new.reverse();
        if !new.is_empty() {
            let parent = if held > 0 {
                Some(blocks[held - 1])
            } else {
                None
            };
            ops.push(Op::Event(
                w,
                KvEvent::Stored {
                    parent,
                    blocks: new,
                },
            ));
        }
        let evicted = caches[w].evict_over(capacity);
        if !evicted.is_empty() {
            ops.push(Op::Event(w, KvEvent::Removed { blocks: evicted }));
        }
    }
    (ops, distinct.len(), source)
}

/// What a replay of the stream costs one engine.
trait Engine {
    fn matched(&mut self, blocks: &[u64]) -> usize;
    fn apply(&mut self, worker: usize, event: &KvEvent);
}

struct Ours(KvIndex);

impl Engine for Ours {
    fn matched(&mut self, blocks: &[u64]) -> usize {
        let mut best = 0;
        self.0.overlaps(blocks, |_, n| best = best.max(n));
        best
    }
    fn apply(&mut self, worker: usize, event: &KvEvent) {
        self.0.apply(worker, event).expect("worker in range");
    }
}

/// Baseline 1: worker -> set of blocks; a match asks every worker's set block by block.
#[derive(Default)]
struct WorkerSets(Vec<HashSet<u64, Fast>>);

impl Engine for WorkerSets {
    fn matched(&mut self, blocks: &[u64]) -> usize {
        self.0
            .iter()
            .map(|set| blocks.iter().take_while(|b| set.contains(b)).count())
            .max()
            .unwrap_or(0)
    }
    fn apply(&mut self, worker: usize, event: &KvEvent) {
        let set = &mut self.0[worker];
        match event {
            KvEvent::Stored { blocks, .. } => set.extend(blocks),
            KvEvent::Removed { blocks } => blocks.iter().for_each(|b| {
                set.remove(b);
            }),
            KvEvent::Cleared => set.clear(),
        }
    }
}

/// Baseline 2: block -> set of workers (a bitmask), entries dropped when empty.
#[derive(Default)]
struct BlockSets(HashMap<u64, u64, Fast>);

impl BlockSets {
    fn depth(&self, blocks: &[u64]) -> usize {
        let mut running = u64::MAX;
        let mut depth = 0;
        for b in blocks {
            running &= self.0.get(b).copied().unwrap_or(0);
            if running == 0 {
                break;
            }
            depth += 1;
        }
        depth
    }
}

impl Engine for BlockSets {
    fn matched(&mut self, blocks: &[u64]) -> usize {
        self.depth(blocks)
    }
    fn apply(&mut self, worker: usize, event: &KvEvent) {
        let bit = 1u64 << worker;
        match event {
            KvEvent::Stored { blocks, .. } => {
                for b in blocks {
                    *self.0.entry(*b).or_insert(0) |= bit;
                }
            }
            KvEvent::Removed { blocks } => {
                for b in blocks {
                    if let Some(m) = self.0.get_mut(b) {
                        *m &= !bit;
                        if *m == 0 {
                            self.0.remove(b);
                        }
                    }
                }
            }
            KvEvent::Cleared => self.0.retain(|_, m| {
                *m &= !bit;
                *m != 0
            }),
        }
    }
}

/// Baseline 2 shared: behind a `RwLock` (matches read, events write).
#[derive(Default)]
struct Locked(RwLock<BlockSets>);

/// An index shared between a thread that matches and one that applies events.
trait Shared: Sync {
    fn depth(&self, blocks: &[u64]) -> usize;
    fn apply_shared(&self, worker: usize, event: &KvEvent);
}

impl Shared for KvIndex {
    fn depth(&self, blocks: &[u64]) -> usize {
        let mut best = 0;
        self.overlaps(blocks, |_, n| best = best.max(n));
        best
    }
    fn apply_shared(&self, worker: usize, event: &KvEvent) {
        self.apply(worker, event).expect("worker in range");
    }
}

impl Shared for Locked {
    fn depth(&self, blocks: &[u64]) -> usize {
        self.0.read().unwrap().depth(blocks)
    }
    fn apply_shared(&self, worker: usize, event: &KvEvent) {
        self.0.write().unwrap().apply(worker, event);
    }
}

impl Engine for Locked {
    fn matched(&mut self, blocks: &[u64]) -> usize {
        Shared::depth(self, blocks)
    }
    fn apply(&mut self, worker: usize, event: &KvEvent) {
        self.apply_shared(worker, event);
    }
}

/// Block operations in the stream: blocks a match walks (up to its first block nobody
/// holds, plus that one), stored and removed blocks.
fn block_ops(ops: &[Op], walked: usize) -> usize {
    walked
        + ops
            .iter()
            .map(|op| match op {
                Op::Event(_, KvEvent::Stored { blocks, .. } | KvEvent::Removed { blocks }) => {
                    blocks.len()
                }
                _ => 0,
            })
            .sum::<usize>()
}

/// Replays the stream `passes` times into fresh engines; the fastest pass, and the blocks its
/// matches walked.
fn replay<E: Engine>(make: impl Fn() -> E, ops: &[Op], passes: usize) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut walked = 0;
    for _ in 0..passes {
        let mut engine = make();
        let mut w = 0;
        let start = Instant::now();
        for op in ops {
            match op {
                Op::Match(blocks) => {
                    let n = engine.matched(std::hint::black_box(blocks));
                    w += (n + 1).min(blocks.len());
                }
                Op::Event(worker, event) => engine.apply(*worker, event),
            }
        }
        best = best.min(start.elapsed());
        walked = w;
    }
    (best, walked)
}

/// The floor: every block key of the stream read once.
fn floor(ops: &[Op], passes: usize) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..passes {
        let start = Instant::now();
        let mut sum = 0u64;
        for op in ops {
            let blocks = match op {
                Op::Match(b) => b,
                Op::Event(_, KvEvent::Stored { blocks, .. } | KvEvent::Removed { blocks }) => {
                    blocks
                }
                Op::Event(_, KvEvent::Cleared) => continue,
            };
            for b in std::hint::black_box(blocks) {
                sum = sum.wrapping_add(*b);
            }
        }
        std::hint::black_box(sum);
        best = best.min(start.elapsed());
    }
    best
}

fn index() -> KvIndex {
    KvIndex::with_config(KvIndexConfig {
        max_workers: WORKERS,
        ..KvIndexConfig::default()
    })
    .expect("valid config")
}

/// Latency of 100-block matches, per call, on one thread, while `stream` streams the events
/// into the index on another thread (or idle).
fn latencies(
    index: &dyn Shared,
    queries: &[Vec<u64>],
    ops: &[Op],
    stream: bool,
) -> (Histogram<u64>, u64) {
    let stop = AtomicBool::new(false);
    let mut h = Histogram::<u64>::new(3).unwrap();
    let mut applied = 0u64;
    std::thread::scope(|s| {
        let writer = stream.then(|| {
            s.spawn(|| {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for op in ops {
                        if let Op::Event(w, e) = op {
                            index.apply_shared(*w, e);
                            n += 1;
                        }
                    }
                }
                n
            })
        });
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(env("BENCH_LATENCY_SECS", 2) as u64) {
            for q in queries {
                let t = Instant::now();
                std::hint::black_box(index.depth(std::hint::black_box(q)));
                h.record(t.elapsed().as_nanos() as u64).unwrap();
            }
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(w) = writer {
            applied = w.join().unwrap();
        }
    });
    (h, applied)
}

fn main() {
    let passes = env("BENCH_PASSES", 5);
    let (ops, distinct, source) = record_stream();
    let events = ops.iter().filter(|o| matches!(o, Op::Event(..))).count();
    let requests = ops.len() - events;
    println!("# precise index: {source}, {requests} requests, {distinct} distinct blocks, {WORKERS} workers");
    println!(
        "# (LRU caches of {} blocks each), {events} events",
        distinct / 16
    );

    let (ours, walked) = replay(|| Ours(index()), &ops, passes);
    let total = block_ops(&ops, walked);
    let (per_worker, _) = replay(
        || WorkerSets((0..WORKERS).map(|_| HashSet::default()).collect()),
        &ops,
        passes,
    );
    let (per_block, _) = replay(BlockSets::default, &ops, passes);
    let (locked, _) = replay(Locked::default, &ops, passes);
    let floor = floor(&ops, passes);
    let mops = |d: Duration| total as f64 / d.as_secs_f64() / 1e6;
    println!("\n## Whole stream, one core: {total} block operations (matched + stored + removed)");
    println!("| engine | time | M block ops/s | x ours |");
    println!("|---|---|---|---|");
    for (name, d) in [
        ("ours (KvIndex)", ours),
        ("baseline: worker -> set of blocks", per_worker),
        ("baseline: block -> set of workers", per_block),
        ("baseline: block -> set of workers, behind a RwLock", locked),
        ("floor: each block key read once", floor),
    ] {
        println!(
            "| {name} | {:.2} ms | {:.1} | {:.2} |",
            d.as_secs_f64() * 1e3,
            mops(d),
            d.as_secs_f64() / ours.as_secs_f64()
        );
    }

    // The index as the replay leaves it, queried with the trace's 100-block prefixes.
    let idx = index();
    for op in &ops {
        if let Op::Event(w, e) = op {
            idx.apply(*w, e).expect("worker in range");
        }
    }
    let queries: Vec<Vec<u64>> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Match(b) if b.len() >= 100 => Some(b[..100].to_vec()),
            _ => None,
        })
        .collect();
    let mut hit_blocks = 0;
    for q in &queries {
        idx.overlaps(q, |_, n| hit_blocks = hit_blocks.max(n));
    }
    println!(
        "\n## 100-block matches at {WORKERS} workers ({} queries, the trace's requests of 100+ blocks)",
        queries.len()
    );
    println!("| scenario | p50 | p99 | p99.9 | max | events applied meanwhile |");
    println!("|---|---|---|---|---|---|");
    let locked = Locked::default();
    for op in &ops {
        if let Op::Event(w, e) = op {
            locked.apply_shared(*w, e);
        }
    }
    let engines: [(&str, &dyn Shared); 2] = [("ours", &idx), ("baseline behind a RwLock", &locked)];
    for (engine, shared) in engines {
        for (scenario, stream) in [
            ("idle", false),
            ("events streaming in (1 writer thread)", true),
        ] {
            let (h, applied) = latencies(shared, &queries, &ops, stream);
            println!(
                "| {engine}, {scenario} | {} ns | {} ns | {} ns | {} ns | {applied} |",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            );
        }
    }
    let floor_call = {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for _ in 0..1000 {
            let t = Instant::now();
            std::hint::black_box(Instant::now());
            h.record(t.elapsed().as_nanos() as u64).unwrap();
        }
        h.value_at_quantile(0.5)
    };
    println!("(timer overhead per call, p50: {floor_call} ns)");

    let s = idx.stats();
    println!("\n## Memory after the replay");
    println!(
        "{} blocks held by some worker, {} (worker, block) pairs; tables {} bytes: {:.1} bytes per block, {:.1} per pair",
        s.live_blocks,
        s.held_pairs,
        s.bytes,
        s.bytes as f64 / s.live_blocks as f64,
        s.bytes as f64 / s.held_pairs as f64
    );
    println!(
        "counted: {} unknown parents, {} stored blocks already held, {} removals of blocks not held",
        s.unknown_parent, s.stored_already_held, s.removed_not_held
    );
}
