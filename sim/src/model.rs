//! The simulation: routing policies, and the replay loop over one of two serving models.
//!
//! - **fifo**: a worker serves one request at a time, in arrival order. A request routed to it
//!   hits the longest run of its leading blocks in that worker's cache; its prefill takes
//!   `prefill_us_per_token` per uncached prompt token, then decoding takes
//!   `decode_ms_per_token` per output token. TTFT = queue wait + prefill.
//! - **batched** (`batched.rs`): continuous batching with chunked prefill and KV memory in
//!   blocks, as vLLM and SGLang serve.
//!
//! A worker's load is its queued and running requests. The router sees the prompt's text, or
//! (the `precise` and `hybrid` policies) its block ids as block hashes, and the KV cache events
//! the workers' caches publish, `event_delay_ms` after they happen.

use crate::batched::{self, StepModel};
use crate::cache::BlockCache;
use crate::delayed::Delayed;
use crate::replicas::{Replicated, SyncMode};
use crate::tickets::Tickets;
use crate::trace::{Request, Rng, TOKENS_PER_BLOCK};
use cache_aware_router::{
    BasicWorkerBuilder, CacheAwareConfig, CacheAwarePolicy, KvEvent, ManualClock, RoutingMode,
    SelectionRule, Worker,
};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Instant;

/// Everything the simulation is run with.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub workers: usize,
    /// Blocks each worker's KV cache holds.
    pub cache_blocks: usize,
    pub prefill_us_per_token: f64,
    pub decode_ms_per_token: f64,
    /// Replay this many times faster than the trace's timestamps.
    pub speedup: f64,
    pub chars_per_block: usize,
    pub cache_aware: CacheAwareConfig,
    pub seed: u64,
    pub serving: Serving,
    /// How long a worker's KV cache events take to reach the router, in milliseconds.
    pub event_delay_ms: f64,
    /// `replicated`: router replicas the requests are spread over, round-robin.
    pub replicas: usize,
    /// `replicated`: how the replicas share what they learn.
    pub sync: SyncMode,
    /// `replicated`, `stream`: how late a replica's events reach the others, in milliseconds.
    pub sync_delay_ms: f64,
}

/// How workers serve their requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Serving {
    /// One request at a time, in arrival order.
    Fifo,
    /// Continuous batching with chunked prefill (`batched.rs`).
    Batched(StepModel),
}

/// What the routers may look at: in-flight counts, and (for the oracle only) the real caches
/// and queues.
pub struct Cluster {
    pub in_flight: Vec<usize>,
    pub engine: Engine,
}

/// The workers' real state, per serving model.
pub enum Engine {
    Fifo {
        busy_until_us: Vec<f64>,
        caches: Vec<BlockCache>,
    },
    Batched {
        workers: Vec<batched::Worker>,
        model: StepModel,
    },
}

/// Every policy the simulator compares.
pub const POLICIES: &[&str] = &[
    "cache-aware",
    "cache-aware-cost",
    "cache-aware-ttft",
    "precise",
    "hybrid",
    "round-robin",
    "random",
    "power-of-two",
    "least-load",
    "prefix-hash",
    "oracle",
];

/// A routing policy under simulation.
pub trait Router: Send {
    /// The worker for `req` (whose prompt text is `text`), arriving at `now_us`.
    fn route(&mut self, req: &Request, text: &str, now_us: f64, cluster: &Cluster) -> usize;
    /// Called when a request routed to `worker` gets its first token, `ttft_us` after it
    /// arrived; returns the TTFT the router had predicted for it, if it predicts one.
    fn first_token(&mut self, _worker: usize, _request: usize, _ttft_us: f64) -> Option<f64> {
        None
    }
    /// Called when a request routed to `worker` finishes.
    fn complete(&mut self, _worker: usize, _request: usize) {}
    /// The KV cache events `worker`'s cache published at `at_us`, in order.
    fn kv_events(&mut self, _worker: usize, _at_us: f64, _events: &[KvEvent]) {}
    /// The leading blocks of request `request`'s prompt the router expected its worker to
    /// hold when it routed it (routers that predict hits).
    fn predicted_hit_blocks(&self, _request: usize) -> Option<u64> {
        None
    }
}

pub fn make_router(name: &str, cfg: &SimConfig) -> Result<Box<dyn Router>, String> {
    let n = cfg.workers;
    Ok(match name {
        "cache-aware" => Box::new(CacheAware::new(cfg, SelectionRule::Threshold, None)?),
        "cache-aware-cost" => Box::new(CacheAware::new(cfg, SelectionRule::CostAware, None)?),
        "cache-aware-ttft" => Box::new(CacheAware::new(cfg, SelectionRule::EstimatedTtft, None)?),
        "precise" => Box::new(CacheAware::new(
            cfg,
            SelectionRule::EstimatedTtft,
            Some(RoutingMode::Precise),
        )?),
        "hybrid" => Box::new(CacheAware::new(
            cfg,
            SelectionRule::EstimatedTtft,
            Some(RoutingMode::Hybrid),
        )?),
        "round-robin" => Box::new(RoundRobin(0)),
        "random" => Box::new(RandomPick(Rng::new(cfg.seed))),
        "power-of-two" => Box::new(PowerOfTwo(Rng::new(cfg.seed))),
        "least-load" => Box::new(LeastLoad),
        "prefix-hash" => Box::new(PrefixHash::new(n, cfg.chars_per_block)),
        "replicated" => Box::new(Replicated::new(cfg)?),
        "oracle" => Box::new(Oracle {
            prefill_us_per_token: cfg.prefill_us_per_token,
        }),
        other => {
            return Err(format!(
                "unknown policy {other:?}: choose from {}, replicated",
                POLICIES.join(", ")
            ))
        }
    })
}

/// Our engine, through its native API: the ticket holds the worker's load until the simulated
/// request finishes. Text policies route the prompt's text; `precise` and `hybrid` route its
/// block ids as block hashes, and apply the workers' KV cache events `event_delay_ms` after
/// they happen.
struct CacheAware {
    policy: CacheAwarePolicy,
    /// `None`: text routing; else the mode `route_blocks` runs in.
    mode: Option<RoutingMode>,
    tickets: Tickets,
    urls: Vec<String>,
    /// Events not yet delivered: (worker, event).
    in_flight: Delayed<(usize, KvEvent)>,
    delay_us: f64,
    /// The policy's trees' clock: simulated milliseconds.
    clock: ManualClock,
    chars_per_block: usize,
}

impl CacheAware {
    fn new(
        cfg: &SimConfig,
        selection: SelectionRule,
        mode: Option<RoutingMode>,
    ) -> Result<Self, String> {
        let clock = ManualClock::new();
        let policy = CacheAwarePolicy::builder()
            .selection(selection)
            .mode(mode.unwrap_or_default())
            .clock(clock.clone().into())
            .config(CacheAwareConfig {
                eviction_interval_secs: 0,
                ..cfg.cache_aware.clone()
            })
            .tie_seed(cfg.seed)
            .index_workers(cfg.workers.clamp(1, cache_aware_router::MAX_INDEX_WORKERS))
            .build()
            .map_err(|e| e.to_string())?;
        let urls: Vec<String> = (0..cfg.workers)
            .map(|i| format!("sim://worker-{i}"))
            .collect();
        for url in &urls {
            let w: Arc<dyn Worker> = Arc::new(BasicWorkerBuilder::new(url.clone()).build());
            policy.register_worker(w).map_err(|e| e.to_string())?;
        }
        Ok(Self {
            policy,
            mode,
            tickets: Tickets::default(),
            urls,
            in_flight: Delayed::new(),
            delay_us: cfg.event_delay_ms * 1000.0,
            clock,
            chars_per_block: cfg.chars_per_block,
        })
    }
}

impl Router for CacheAware {
    fn route(&mut self, req: &Request, text: &str, now: f64, _cluster: &Cluster) -> usize {
        self.clock.set((now / 1000.0) as u64);
        while let Some((worker, event)) = self.in_flight.pop_due(now) {
            self.policy
                .apply_kv_event("", &self.urls[worker], &event)
                .expect("simulated workers are registered and in range");
        }
        let (ticket, predicted) = match self.mode {
            None => {
                let t = self.policy.route("", text).expect("workers are healthy");
                let matched = text.chars().count() - t.prefill_chars();
                let blocks = (matched / self.chars_per_block) as u64;
                (t, blocks)
            }
            Some(_) => {
                let t = self
                    .policy
                    .route_blocks("", &req.hash_ids)
                    .expect("workers are healthy");
                let blocks = (req.hash_ids.len() - t.prefill_chars()) as u64;
                (t, blocks)
            }
        };
        self.tickets.hold(ticket, predicted)
    }
    fn kv_events(&mut self, worker: usize, at_us: f64, events: &[KvEvent]) {
        if self.mode.is_some_and(|m| m != RoutingMode::Approximate) {
            for event in events {
                self.in_flight
                    .push(at_us + self.delay_us, (worker, event.clone()));
            }
        }
    }
    fn predicted_hit_blocks(&self, request: usize) -> Option<u64> {
        self.tickets.predicted(request)
    }
    fn first_token(&mut self, _worker: usize, request: usize, ttft_us: f64) -> Option<f64> {
        self.tickets.first_token(request, ttft_us)
    }
    fn complete(&mut self, _worker: usize, request: usize) {
        self.tickets.complete(request);
    }
}

struct RoundRobin(usize);
impl Router for RoundRobin {
    fn route(&mut self, _: &Request, _: &str, _: f64, c: &Cluster) -> usize {
        self.0 += 1;
        (self.0 - 1) % c.in_flight.len()
    }
}

struct RandomPick(Rng);
impl Router for RandomPick {
    fn route(&mut self, _: &Request, _: &str, _: f64, c: &Cluster) -> usize {
        self.0.below(c.in_flight.len() as u64) as usize
    }
}

struct PowerOfTwo(Rng);
impl Router for PowerOfTwo {
    fn route(&mut self, _: &Request, _: &str, _: f64, c: &Cluster) -> usize {
        let n = c.in_flight.len() as u64;
        let (a, b) = (self.0.below(n) as usize, self.0.below(n) as usize);
        if c.in_flight[b] < c.in_flight[a] {
            b
        } else {
            a
        }
    }
}

struct LeastLoad;
impl Router for LeastLoad {
    fn route(&mut self, _: &Request, _: &str, _: f64, c: &Cluster) -> usize {
        (0..c.in_flight.len())
            .min_by_key(|&i| c.in_flight[i])
            .unwrap_or(0)
    }
}

/// Consistent hashing of the first block's text on a ring of virtual nodes, with bounded load:
/// a worker over `(1 + EPSILON)` times the mean in-flight load is skipped for the next one on
/// the ring.
struct PrefixHash {
    ring: Vec<(u64, usize)>,
    chars_per_block: usize,
}

impl PrefixHash {
    const VIRTUAL_NODES: u64 = 64;
    const EPSILON: f64 = 0.25;

    fn new(workers: usize, chars_per_block: usize) -> Self {
        let mut ring: Vec<(u64, usize)> = (0..workers)
            .flat_map(|w| {
                (0..Self::VIRTUAL_NODES).map(move |v| (fnv(format!("{w}/{v}").as_bytes()), w))
            })
            .collect();
        ring.sort();
        Self {
            ring,
            chars_per_block,
        }
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl Router for PrefixHash {
    fn route(&mut self, _: &Request, text: &str, _: f64, c: &Cluster) -> usize {
        let first = &text.as_bytes()[..text.len().min(self.chars_per_block)];
        let h = fnv(first);
        let total: usize = c.in_flight.iter().sum();
        let bound =
            ((1.0 + Self::EPSILON) * (total + 1) as f64 / c.in_flight.len() as f64).ceil() as usize;
        let start = self.ring.partition_point(|(k, _)| *k < h);
        (0..self.ring.len())
            .map(|i| self.ring[(start + i) % self.ring.len()].1)
            .find(|&w| c.in_flight[w] < bound)
            .unwrap_or(self.ring[start % self.ring.len()].1)
    }
}

/// Exact knowledge of every cache and queue: the worker with the lowest modelled TTFT.
struct Oracle {
    prefill_us_per_token: f64,
}

impl Router for Oracle {
    fn route(&mut self, req: &Request, _: &str, now: f64, c: &Cluster) -> usize {
        let ttft = |w: usize| match &c.engine {
            Engine::Fifo {
                busy_until_us,
                caches,
            } => {
                let hit = caches[w].leading_hits(&req.hash_ids) as u64 * TOKENS_PER_BLOCK;
                let wait = (busy_until_us[w] - now).max(0.0);
                wait + req.input_length.saturating_sub(hit) as f64 * self.prefill_us_per_token
            }
            // The worker's queue and batch run forward with this request added.
            Engine::Batched { workers, model } => workers[w].forecast_ttft_us(req, now, model),
        };
        (0..c.in_flight.len())
            .min_by(|&a, &b| ttft(a).total_cmp(&ttft(b)))
            .unwrap_or(0)
    }
}

/// What one policy's replay measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub policy: String,
    pub requests: usize,
    pub input_tokens: u64,
    pub hit_tokens: u64,
    pub ttft_ms: Vec<f64>,
    /// Per request with more than one output token: ms per output token after the first.
    pub tpot_ms: Vec<f64>,
    /// Per request the router predicted a TTFT for: |predicted - simulated| / simulated.
    pub estimate_errors: Vec<f64>,
    pub output_tokens: u64,
    /// From the first arrival to the last finish, in ms.
    pub span_ms: f64,
    pub per_worker: Vec<usize>,
    /// Wall-clock ns of each routing decision (the router's own cost).
    pub route_ns: Vec<u64>,
    /// Leading blocks the router expected its picks to hold, summed over requests (routers
    /// that predict hits).
    pub predicted_blocks: u64,
    /// Of those, the blocks the worker really held when the request was admitted.
    pub predicted_and_hit: u64,
}

impl Outcome {
    /// Counts request `request`'s real hit (`hit_blocks` leading blocks) against what
    /// `router` predicted for it.
    pub(crate) fn score_prediction(
        &mut self,
        router: &dyn Router,
        request: usize,
        hit_blocks: usize,
    ) {
        if let Some(p) = router.predicted_hit_blocks(request) {
            self.predicted_blocks += p;
            self.predicted_and_hit += p.min(hit_blocks as u64);
        }
    }
}

/// Replays `requests` (with their prompt `texts`) through `router`, on the serving model
/// `cfg.serving`.
pub fn simulate(
    name: &str,
    router: &mut dyn Router,
    requests: &[Request],
    texts: &[String],
    cfg: &SimConfig,
    progress: impl FnMut(),
) -> Outcome {
    match cfg.serving {
        Serving::Fifo => simulate_fifo(name, router, requests, texts, cfg, progress),
        Serving::Batched(model) => {
            batched::simulate(name, router, requests, texts, cfg, model, progress)
        }
    }
}

/// An empty outcome for `requests` over `workers`.
pub(crate) fn outcome(name: &str, requests: usize, workers: usize) -> Outcome {
    Outcome {
        policy: name.to_string(),
        requests,
        input_tokens: 0,
        hit_tokens: 0,
        ttft_ms: Vec::with_capacity(requests),
        tpot_ms: Vec::new(),
        estimate_errors: Vec::new(),
        output_tokens: 0,
        span_ms: 0.0,
        per_worker: vec![0; workers],
        route_ns: Vec::with_capacity(requests),
        predicted_blocks: 0,
        predicted_and_hit: 0,
    }
}

fn simulate_fifo(
    name: &str,
    router: &mut dyn Router,
    requests: &[Request],
    texts: &[String],
    cfg: &SimConfig,
    mut progress: impl FnMut(),
) -> Outcome {
    let n = cfg.workers;
    let mut cluster = Cluster {
        in_flight: vec![0; n],
        engine: Engine::Fifo {
            busy_until_us: vec![0.0; n],
            caches: vec![BlockCache::new(cfg.cache_blocks); n],
        },
    };
    // (finish time in ns as an integer for ordering, worker, request index)
    let mut running: BinaryHeap<Reverse<(u64, usize, usize)>> = BinaryHeap::new();
    // (first-token time in ns, worker, request index), reported to the router in time order.
    let mut firsts: BinaryHeap<Reverse<(u64, usize, usize)>> = BinaryHeap::new();
    let mut out = outcome(name, requests.len(), n);
    let mut last_finish: f64 = 0.0;
    for (i, req) in requests.iter().enumerate() {
        let now = req.timestamp as f64 * 1000.0 / cfg.speedup;
        while let Some(Reverse((at, w, r))) = firsts.peek().copied() {
            if at as f64 / 1000.0 > now {
                break;
            }
            firsts.pop();
            let ttft_us = out.ttft_ms[r] * 1000.0;
            if let Some(predicted) = router.first_token(w, r, ttft_us) {
                out.estimate_errors
                    .push((predicted - ttft_us).abs() / ttft_us.max(1.0));
            }
        }
        while let Some(Reverse((finish, w, r))) = running.peek().copied() {
            if finish as f64 / 1000.0 > now {
                break;
            }
            running.pop();
            cluster.in_flight[w] -= 1;
            router.complete(w, r);
        }
        let start = Instant::now();
        let w = router.route(req, &texts[i], now, &cluster);
        out.route_ns.push(start.elapsed().as_nanos() as u64);
        let Engine::Fifo {
            busy_until_us,
            caches,
        } = &mut cluster.engine
        else {
            unreachable!("built as Fifo above")
        };
        let hit_blocks = caches[w].leading_hits(&req.hash_ids);
        out.score_prediction(router, i, hit_blocks);
        let hit = (hit_blocks as u64 * TOKENS_PER_BLOCK).min(req.input_length);
        let prefill = (req.input_length - hit) as f64 * cfg.prefill_us_per_token;
        let begin = now.max(busy_until_us[w]);
        let finish = begin + prefill + req.output_length as f64 * cfg.decode_ms_per_token * 1000.0;
        busy_until_us[w] = finish;
        cluster.in_flight[w] += 1;
        let mut events = Vec::new();
        caches[w].touch(&req.hash_ids, &mut events);
        router.kv_events(w, now, &events);
        running.push(Reverse(((finish * 1000.0) as u64, w, i)));
        firsts.push(Reverse((((begin + prefill) * 1000.0) as u64, w, i)));
        out.input_tokens += req.input_length;
        out.hit_tokens += hit;
        out.ttft_ms.push((begin - now + prefill) / 1000.0);
        if req.output_length > 1 {
            out.tpot_ms.push(cfg.decode_ms_per_token);
        }
        out.output_tokens += req.output_length;
        last_finish = last_finish.max(finish);
        out.per_worker[w] += 1;
        progress();
    }
    let first = requests
        .first()
        .map_or(0.0, |r| r.timestamp as f64 * 1000.0 / cfg.speedup);
    out.span_ms = (last_finish - first).max(0.0) / 1000.0;
    out
}

/// Per request, a TTFT no policy can beat: no queueing, and every leading block that any
/// earlier request brought already cached on the chosen worker, so only blocks the trace has
/// never seen before are prefilled (batched: at least the last prompt token, in as few steps as
/// the token budget allows, each with its fixed cost and this one request in it). Each
/// replay's TTFT for a request is at least this (a worker can only hold blocks earlier requests
/// brought), so every percentile of it is at least the same percentile of these.
pub fn ttft_lower_bound_ms(requests: &[Request], cfg: &SimConfig) -> Vec<f64> {
    let mut seen = std::collections::HashSet::new();
    requests
        .iter()
        .map(|req| {
            let known = req
                .hash_ids
                .iter()
                .take_while(|h| seen.contains(*h))
                .count() as u64;
            let hit = (known * TOKENS_PER_BLOCK).min(req.input_length);
            seen.extend(req.hash_ids.iter().copied());
            let prefill = req.input_length - hit;
            let us = match cfg.serving {
                Serving::Fifo => prefill as f64 * cfg.prefill_us_per_token,
                Serving::Batched(m) => {
                    let tokens = prefill.max(1);
                    let steps = tokens.div_ceil(m.token_budget) as f64;
                    steps * (m.base_us + m.per_request_us) + tokens as f64 * m.prefill_us_per_token
                }
            };
            us / 1000.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{generate, text_of};

    fn cfg() -> SimConfig {
        SimConfig {
            workers: 4,
            cache_blocks: 200,
            prefill_us_per_token: 25.0,
            decode_ms_per_token: 2.0,
            speedup: 1.0,
            chars_per_block: 32,
            cache_aware: CacheAwareConfig::default(),
            seed: 1,
            serving: Serving::Fifo,
            event_delay_ms: 0.0,
            replicas: 4,
            sync: SyncMode::Stream,
            sync_delay_ms: 10.0,
        }
    }

    /// The same with batching workers, small enough that queues form.
    fn batched_cfg() -> SimConfig {
        SimConfig {
            serving: Serving::Batched(StepModel {
                base_us: 4600.0,
                prefill_us_per_token: 25.0,
                per_request_us: 30.0,
                token_budget: 2048,
            }),
            ..cfg()
        }
    }

    fn run(policy: &str, reqs: &[Request], cfg: &SimConfig) -> Outcome {
        let texts: Vec<String> = reqs
            .iter()
            .map(|r| text_of(r, cfg.chars_per_block))
            .collect();
        let mut router = make_router(policy, cfg).unwrap();
        simulate(policy, &mut *router, reqs, &texts, cfg, || {})
    }

    #[test]
    fn the_oracle_has_the_lowest_mean_ttft_on_the_built_in_trace() {
        let reqs = generate(1500, 3);
        let cfg = cfg();
        let mean = |o: &Outcome| o.ttft_ms.iter().sum::<f64>() / o.ttft_ms.len() as f64;
        let oracle = mean(&run("oracle", &reqs, &cfg));
        for p in POLICIES.iter().filter(|p| **p != "oracle") {
            let m = mean(&run(p, &reqs, &cfg));
            assert!(oracle <= m, "oracle {oracle:.1} ms vs {p} {m:.1} ms");
        }
    }

    #[test]
    fn a_replay_is_deterministic_apart_from_router_time() {
        let reqs = generate(400, 9);
        for (p, c) in POLICIES
            .iter()
            .flat_map(|p| [(p, cfg()), (p, batched_cfg())])
        {
            let (a, b) = (run(p, &reqs, &c), run(p, &reqs, &c));
            assert_eq!(
                (a.hit_tokens, &a.per_worker),
                (b.hit_tokens, &b.per_worker),
                "{p}"
            );
            assert_eq!(a.ttft_ms, b.ttft_ms, "{p}");
        }
    }

    #[test]
    fn no_policy_beats_the_lower_bound_on_any_request() {
        let reqs = generate(800, 5);
        for c in [cfg(), batched_cfg()] {
            let bound = ttft_lower_bound_ms(&reqs, &c);
            let full = |r: &Request| r.input_length as f64 * c.prefill_us_per_token / 1000.0;
            // The bound credits earlier blocks on some requests, and is not zero everywhere.
            assert!(reqs.iter().zip(&bound).any(|(r, b)| *b < full(r)));
            assert!(bound.iter().any(|&b| b > 0.0));
            for p in POLICIES {
                let o = run(p, &reqs, &c);
                for (i, (ttft, lb)) in o.ttft_ms.iter().zip(&bound).enumerate() {
                    assert!(
                        ttft + 1e-9 >= *lb,
                        "{p} {:?}: request {i} took {ttft} ms, bound {lb}",
                        c.serving
                    );
                }
            }
        }
    }

    /// Under cache pressure (the caches hold a fraction of the trace), the precise router's
    /// predicted hits are held when its requests are admitted, the approximate tree's go
    /// stale, and the precise router hits at least as much. Events that never arrive leave it
    /// predicting nothing.
    #[test]
    fn precise_routing_predicts_what_the_caches_hold() {
        let reqs = generate(1500, 5);
        let distinct: std::collections::HashSet<u64> = reqs
            .iter()
            .flat_map(|r| r.hash_ids.iter().copied())
            .collect();
        // `--cache-pressure`: all caches together hold an eighth of the trace.
        let cfg = SimConfig {
            cache_blocks: distinct.len() / (8 * batched_cfg().workers),
            ..batched_cfg()
        };
        let accuracy = |o: &Outcome| o.predicted_and_hit as f64 / o.predicted_blocks as f64;
        let precise = run("precise", &reqs, &cfg);
        let approximate = run("cache-aware-ttft", &reqs, &cfg);
        assert!(precise.predicted_blocks > 0);
        assert!(accuracy(&precise) >= 0.95, "{}", accuracy(&precise));
        assert!(
            accuracy(&approximate) < accuracy(&precise),
            "{} vs {}",
            accuracy(&approximate),
            accuracy(&precise)
        );
        assert!(precise.hit_tokens >= approximate.hit_tokens);
        let never = SimConfig {
            event_delay_ms: 1e12,
            ..cfg.clone()
        };
        assert_eq!(run("precise", &reqs, &never).predicted_blocks, 0);
        // Hybrid without events is approximate routing on blocks: it predicts hits.
        assert!(run("hybrid", &reqs, &never).predicted_blocks > 0);
    }

    /// Four replicas that share nothing lose hits against one router; streaming their
    /// decisions and work to each other (10 ms late) wins back most of it; one shared policy
    /// is the single router.
    #[test]
    fn replicas_that_stream_their_decisions_recover_what_independent_ones_lose() {
        let reqs = generate(1500, 5);
        let cfg = batched_cfg();
        let with = |replicas, sync| {
            let c = SimConfig {
                replicas,
                sync,
                sync_delay_ms: 10.0,
                ..cfg.clone()
            };
            run("replicated", &reqs, &c).hit_tokens as f64
        };
        let single = with(1, SyncMode::None);
        let none = with(4, SyncMode::None);
        let stream = with(4, SyncMode::Stream);
        assert_eq!(with(4, SyncMode::Shared), single);
        assert!(none < 0.95 * single, "independent: {none} vs {single}");
        assert!(
            stream - none >= 0.9 * (single - none),
            "stream recovers {:.0}% of the loss",
            100.0 * (stream - none) / (single - none)
        );
    }

    #[test]
    fn cache_aware_wins_hits_over_round_robin() {
        let reqs = generate(1500, 5);
        let cfg = cfg();
        let ca = run("cache-aware", &reqs, &cfg);
        let rr = run("round-robin", &reqs, &cfg);
        assert!(
            ca.hit_tokens > rr.hit_tokens,
            "{} vs {}",
            ca.hit_tokens,
            rr.hit_tokens
        );
        assert!(make_router("fastest", &cfg).is_err());
    }
}
