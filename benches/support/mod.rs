//! Workloads, the floor, and the one trait both engines are driven through.
#![allow(dead_code)]

pub(crate) mod counting;
pub(crate) mod dispatch;

use crate::baseline::{BaseWorker, BaselinePolicy, Config};
use cache_aware_router::{
    BasicWorkerBuilder, CacheAwareConfig, CacheAwarePolicy, LoadBalancingPolicy, SelectionRule,
    Worker,
};
use std::path::Path;
use std::sync::Arc;

/// A numeric bench setting from the environment (`BENCH_BLOCK`, `BENCH_WORKERS`, ...).
pub(crate) fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: deterministic text.
pub(crate) struct Rng(u64);
impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// `len` chars of pseudo-random prompt-like text (words of lowercase letters).
pub(crate) fn random_text(rng: &mut Rng, len: usize) -> String {
    let mut s = String::with_capacity(len);
    while s.len() < len {
        let r = rng.next();
        s.push(if r % 7 == 0 {
            ' '
        } else {
            char::from(b'a' + (r >> 8) as u8 % 26)
        });
    }
    s
}

/// `shared-prefix`: 64 groups x 16 requests, each an 8,192-char group prompt plus a 512-char
/// question (the shape of SGLang's generated-shared-prefix benchmark), interleaved by group.
pub(crate) fn shared_prefix() -> Vec<String> {
    let mut rng = Rng::new(1);
    let systems: Vec<String> = (0..64).map(|_| random_text(&mut rng, 8192)).collect();
    let mut out = Vec::new();
    for q in 0..16 {
        for s in &systems {
            let _ = q;
            out.push(format!("{s}{}", random_text(&mut rng, 512)));
        }
    }
    out
}

/// The hash ids of each request of a Mooncake trace (JSONL with `hash_ids`).
fn read_trace(path: &Path) -> Option<Vec<Vec<u64>>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let start = line.find("\"hash_ids\"")?;
        let open = start + line[start..].find('[')?;
        let close = open + line[open..].find(']')?;
        let ids = line[open + 1..close]
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().ok())
            .collect::<Option<Vec<u64>>>()?;
        out.push(ids);
    }
    Some(out)
}

/// A trace of the same shape when the real one is absent: multi-turn sessions that extend
/// earlier prompts, groups sharing long system prompts, and one-off requests.
fn synthetic_trace(n: usize) -> Vec<Vec<u64>> {
    let mut rng = Rng::new(7);
    let mut next_id = 0u64;
    let fresh = |k: usize, next_id: &mut u64| -> Vec<u64> {
        let v: Vec<u64> = (*next_id..*next_id + k as u64).collect();
        *next_id += k as u64;
        v
    };
    let systems: Vec<Vec<u64>> = (0..16).map(|_| fresh(20, &mut next_id)).collect();
    let mut sessions: Vec<Vec<u64>> = Vec::new();
    let mut out = Vec::new();
    for _ in 0..n {
        let r = rng.next() % 10;
        let ids = if r < 4 && !sessions.is_empty() {
            let i = (rng.next() as usize) % sessions.len();
            let extra = fresh(1 + (rng.next() % 6) as usize, &mut next_id);
            sessions[i].extend(extra);
            sessions[i].clone()
        } else if r < 8 {
            let mut ids = systems[(rng.next() as usize) % systems.len()].clone();
            ids.extend(fresh(2 + (rng.next() % 20) as usize, &mut next_id));
            sessions.push(ids.clone());
            ids
        } else {
            fresh(5 + (rng.next() % 60) as usize, &mut next_id)
        };
        out.push(ids);
    }
    out
}

/// The hash ids of each request of `../shared/traces/mooncake_synthetic_trace.jsonl` (the
/// synthetic trace of the same shape when the file is absent), and where they came from.
pub(crate) fn mooncake_ids() -> (Vec<Vec<u64>>, &'static str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/traces/mooncake_synthetic_trace.jsonl");
    match read_trace(&path) {
        Some(t) => (t, "shared/traces/mooncake_synthetic_trace.jsonl"),
        None => (
            synthetic_trace(4000),
            "built-in synthetic trace (shared trace absent)",
        ),
    }
}

/// `mooncake`: `../shared/traces/mooncake_synthetic_trace.jsonl` as text, each hash id a fixed
/// pseudo-random block of `block_chars` chars (2,048 is the real scale of a 512-token block);
/// the synthetic trace of the same shape when the file is absent. Returns the texts and the
/// number of distinct blocks (so distinct stored chars = blocks x block_chars).
pub(crate) fn mooncake(block_chars: usize) -> (Vec<String>, usize, &'static str) {
    let (trace, source) = mooncake_ids();
    let mut blocks = std::collections::HashMap::new();
    let texts = trace
        .iter()
        .map(|ids| {
            let mut s = String::with_capacity(ids.len() * block_chars);
            for id in ids {
                let block = blocks
                    .entry(*id)
                    .or_insert_with(|| random_text(&mut Rng::new(id + 1_000_003), block_chars));
                s.push_str(block);
            }
            s
        })
        .collect();
    (texts, blocks.len(), source)
}

/// The floor: reading each prompt once, `a == b` against an equal copy.
pub(crate) fn floor(texts: &[String], copies: &[String]) -> usize {
    texts
        .iter()
        .zip(copies)
        .filter(|(a, b)| std::hint::black_box(a.as_bytes()) == std::hint::black_box(b.as_bytes()))
        .count()
}

/// A router under test: one routing decision for a prompt.
pub(crate) trait Router: Sync {
    fn route(&self, text: &str) -> Option<usize>;
}

pub(crate) struct Ours {
    pub(crate) policy: CacheAwarePolicy,
    pub(crate) workers: Vec<Arc<dyn Worker>>,
}

impl Ours {
    pub(crate) fn new(workers: usize, eviction_secs: u64, max_tree_size: usize) -> Self {
        // The seed's rule, as the baseline makes its decisions.
        let policy = CacheAwarePolicy::builder()
            .selection(SelectionRule::Threshold)
            .config(CacheAwareConfig {
                eviction_interval_secs: eviction_secs,
                max_tree_size,
                ..CacheAwareConfig::default()
            })
            .build()
            .expect("a valid config");
        let workers: Vec<Arc<dyn Worker>> = (0..workers)
            .map(|i| {
                Arc::new(BasicWorkerBuilder::new(format!("http://worker-{i}:8000")).build()) as _
            })
            .collect();
        policy.init_workers(&workers);
        Self { policy, workers }
    }
}

impl Router for Ours {
    fn route(&self, text: &str) -> Option<usize> {
        self.policy.select_worker(&self.workers, Some(text))
    }
}

pub(crate) struct Base {
    pub(crate) policy: BaselinePolicy,
    pub(crate) workers: Vec<Arc<BaseWorker>>,
}

impl Base {
    pub(crate) fn new(
        workers: usize,
        eviction: Option<std::time::Duration>,
        max_tree_size: usize,
    ) -> Self {
        let defaults = CacheAwareConfig::default();
        let policy = BaselinePolicy::new(Config {
            cache_threshold: defaults.cache_threshold,
            balance_abs_threshold: defaults.balance_abs_threshold,
            balance_rel_threshold: defaults.balance_rel_threshold,
            eviction_interval: eviction,
            max_tree_size,
        });
        let workers: Vec<Arc<BaseWorker>> = (0..workers)
            .map(|i| Arc::new(BaseWorker::new(format!("http://worker-{i}:8000"))))
            .collect();
        policy.init_workers(&workers);
        Self { policy, workers }
    }
}

impl Router for Base {
    fn route(&self, text: &str) -> Option<usize> {
        self.policy.select_worker(&self.workers, text)
    }
}

/// Routes `texts[start..]`, every `step`-th one: a fixed share, for threads that each route
/// into a router of their own.
pub(crate) fn replay_slice(router: &dyn Router, texts: &[String], start: usize, step: usize) {
    for t in texts.iter().skip(start).step_by(step) {
        std::hint::black_box(router.route(t));
    }
}

/// Requests a replay thread claims at a time. Consecutive, so the replay keeps trace order as
/// far as threads running side by side allow; few, so no thread is left holding much when the
/// others run out.
const REPLAY_CHUNK: usize = 8;

/// When one thread started its first piece of work and finished its last; `None` if it did
/// none.
pub(crate) type Span = Option<(std::time::Instant, std::time::Instant)>;

/// The span of running `f`.
pub(crate) fn timed(f: impl FnOnce()) -> Span {
    let start = std::time::Instant::now();
    f();
    Some((start, std::time::Instant::now()))
}

/// Runs `work(t)` on `threads` scoped threads, `t` in `0..threads`, and returns the time from
/// the first piece of work starting to the last one finishing, as the threads report their
/// spans. The threads are spawned (and joined) outside it: they wait at a barrier first, since
/// spawning is not routing work and was not small here (8 threads took about a tenth of a
/// 2 ms `shared-prefix` replay). Threads that found no work left do not count either: with
/// more threads than cores, some are first scheduled after the others have done everything,
/// and waiting for them timed the scheduler (a 250 us floor replay read 370-430 us on 8
/// threads, of which 6 did nothing).
pub(crate) fn timed_threads(
    threads: usize,
    work: impl Fn(usize) -> Span + Sync,
) -> std::time::Duration {
    // Arrived threads spin, yielding (with more threads than cores the late ones must get to
    // run), until all are there. Behind std's `Barrier` (a condvar) they could leave it far
    // apart against replays of a millisecond: in three alternating pairs of allocator-bench
    // runs, the shared-prefix floor's 2-thread scaling read 1.24x-1.69x with it and
    // 1.84x-1.95x spinning. (Ours moved both ways in those pairs; see BENCHMARKS.md.)
    let arrived = std::sync::atomic::AtomicUsize::new(0);
    let spans: Vec<Span> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (arrived, work) = (&arrived, &work);
                s.spawn(move || {
                    arrived.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    while arrived.load(std::sync::atomic::Ordering::Acquire) < threads {
                        std::thread::yield_now();
                    }
                    work(t)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let spans = spans.into_iter().flatten();
    let (first, last) = spans
        .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)))
        .expect("some thread did the work");
    last - first
}

/// Runs `each(i)` once for every `i` in `0..len` on `threads` threads, which claim
/// consecutive chunks from a shared cursor; returns the wall time (see [`timed_threads`]).
///
/// Claimed, not split in fixed shares: with fixed shares the wall time is that of the thread
/// the scheduler served least, and with more threads than cores that measured the scheduler
/// (in session 2's full run on the 2-core machine the Mooncake floor itself ran 1.34x its
/// 1-thread speed on 4 threads, against 1.87x on 2); with claiming, a preempted thread delays
/// only the chunk it holds.
pub(crate) fn run_claimed(
    len: usize,
    threads: usize,
    each: impl Fn(usize) + Sync,
) -> std::time::Duration {
    let cursor = std::sync::atomic::AtomicUsize::new(0);
    timed_threads(threads, |_| {
        let mut span: Span = None;
        loop {
            let first = cursor.fetch_add(REPLAY_CHUNK, std::sync::atomic::Ordering::Relaxed);
            if first >= len {
                return span;
            }
            let start = span.map_or_else(std::time::Instant::now, |s| s.0);
            (first..len.min(first + REPLAY_CHUNK)).for_each(&each);
            span = Some((start, std::time::Instant::now()));
        }
    })
}

/// The floor on `threads` threads, claiming requests like a replay does: each text compared
/// with its equal copy in `copies`.
pub(crate) fn parallel_floor(
    texts: &[String],
    copies: &[String],
    threads: usize,
) -> std::time::Duration {
    run_claimed(texts.len(), threads, |i| {
        std::hint::black_box(
            std::hint::black_box(texts[i].as_bytes()) == std::hint::black_box(copies[i].as_bytes()),
        );
    })
}

/// One replay of `texts`, in order, on `threads` threads claiming requests as they go (see
/// [`run_claimed`]); returns the wall time.
pub(crate) fn replay(router: &dyn Router, texts: &[String], threads: usize) -> std::time::Duration {
    run_claimed(texts.len(), threads, |i| {
        std::hint::black_box(router.route(&texts[i]));
    })
}
