//! The continuous-batching serving model: each worker runs steps, as vLLM and SGLang do.
//!
//! A step takes, in arrival order, up to a token budget: one decode token for every running
//! request past its prefill, and the rest of the budget as prefill chunks of the running
//! requests still prefilling (chunked prefill). It lasts `base + prefill tokens x
//! prefill_per_token + running requests x per_request`. A request whose prefill completes in a
//! step gets its first token at the step's end (TTFT = that end - arrival); every later step
//! gives it one more token, and it finishes with its last.
//!
//! KV memory is counted in 512-token blocks. A running request pins the blocks of its prompt
//! and its output; the rest of the worker's capacity is its prefix cache (an LRU of blocks).
//! Requests wait, in arrival order, until their blocks fit beside the running ones (a request
//! larger than the whole capacity runs alone). On admission a request hits the longest run of
//! its leading blocks in the cache, prefills only the rest, and its prompt blocks become the
//! most recently used. The cache's changes are the worker's KV cache events, stamped with the
//! start of the step that made them (`take_kv_events`).

use crate::cache::BlockCache;
use crate::model::{outcome, Cluster, Engine, Outcome, Router, SimConfig};
use crate::trace::{Request, TOKENS_PER_BLOCK};
use cache_aware_router::KvEvent;
use std::collections::VecDeque;
use std::time::Instant;

/// How long a step takes, and how much it may prefill.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepModel {
    /// Fixed cost of a step (weights read once per step), in microseconds.
    pub base_us: f64,
    /// Per prefill token in the step, in microseconds.
    pub prefill_us_per_token: f64,
    /// Per running request (its decode token and attention), in microseconds.
    pub per_request_us: f64,
    /// Tokens one step may process (decode tokens and prefill chunks together).
    pub token_budget: u64,
}

impl StepModel {
    fn step_us(&self, prefill_tokens: u64, running: usize) -> f64 {
        self.base_us
            + prefill_tokens as f64 * self.prefill_us_per_token
            + running as f64 * self.per_request_us
    }
}

/// A request on a worker.
#[derive(Debug, Clone)]
struct Job {
    id: usize,
    /// Prompt tokens still to prefill (set at admission, from the cache hit).
    prefill_left: u64,
    /// Output tokens still to generate (the first comes with the end of the prefill).
    output_left: u64,
    /// Blocks it pins while running.
    blocks: usize,
    hash_ids: Vec<u64>,
    input_tokens: u64,
}

/// What a worker reports as its steps run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// Request `id` was admitted and hit `hit_tokens` of its prompt in the cache, its first
    /// `hit_blocks` blocks.
    Admitted {
        id: usize,
        hit_tokens: u64,
        hit_blocks: usize,
    },
    /// Request `id` got its first token at `at_us`.
    FirstToken { id: usize, at_us: f64 },
    /// Request `id` finished at `at_us`.
    Finished { id: usize, at_us: f64 },
}

fn blocks_for(tokens: u64) -> usize {
    tokens.div_ceil(TOKENS_PER_BLOCK) as usize
}

/// Prompt tokens a request prefills when `cached_blocks` of its leading blocks are cached: at
/// least one, since the engine recomputes the last prompt token to produce the first output.
fn prefill_after(input_tokens: u64, cached_blocks: usize) -> u64 {
    input_tokens
        .saturating_sub(cached_blocks as u64 * TOKENS_PER_BLOCK)
        .max(1)
        .min(input_tokens.max(1))
}

/// The queue and the batch of one worker, without its cache: what a step runs on.
#[derive(Debug, Clone, Default)]
struct Batch {
    waiting: VecDeque<Job>,
    running: Vec<Job>,
    pinned: usize,
    /// When the current step ends (or when the worker went idle).
    clock_us: f64,
}

impl Batch {
    fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Admits waiting requests in arrival order while their blocks fit (a request larger than
    /// the whole capacity runs alone); `prefill` gives each its prefill at admission.
    fn admit(&mut self, capacity: usize, mut prefill: impl FnMut(&Job) -> u64) -> Vec<Job> {
        let mut admitted = Vec::new();
        while let Some(job) = self.waiting.front() {
            if self.pinned + job.blocks > capacity && !self.running.is_empty() {
                break;
            }
            let mut job = self.waiting.pop_front().expect("just looked");
            job.prefill_left = prefill(&job);
            self.pinned += job.blocks;
            admitted.push(job.clone());
            self.running.push(job);
        }
        admitted
    }

    /// One step over the running requests: a decode token for each past its prefill, prefill
    /// chunks in arrival order with the rest of the budget. Reports first tokens and
    /// finishes.
    fn step(&mut self, model: &StepModel, on: &mut impl FnMut(Event)) {
        let decoding = self.running.iter().filter(|j| j.prefill_left == 0).count() as u64;
        let mut budget = model.token_budget.saturating_sub(decoding);
        // Prefill tokens each running request takes this step (0 for those decoding).
        let takes: Vec<u64> = self
            .running
            .iter()
            .map(|job| {
                let take = job.prefill_left.min(budget);
                budget -= take;
                take
            })
            .collect();
        let prefill: u64 = takes.iter().sum();
        let end = self.clock_us + model.step_us(prefill, self.running.len());
        self.clock_us = end;
        let mut done = Vec::new();
        for (i, (job, take)) in self.running.iter_mut().zip(takes).enumerate() {
            if job.prefill_left == 0 {
                job.output_left -= 1;
            } else if take > 0 {
                job.prefill_left -= take;
                if job.prefill_left > 0 {
                    continue;
                }
                // Prefill done: the first token comes with this step.
                on(Event::FirstToken {
                    id: job.id,
                    at_us: end,
                });
                job.output_left -= 1;
            } else {
                continue;
            }
            if job.output_left == 0 {
                done.push(i);
            }
        }
        for i in done.into_iter().rev() {
            let job = self.running.remove(i);
            self.pinned -= job.blocks;
            on(Event::Finished {
                id: job.id,
                at_us: end,
            });
        }
    }
}

/// One worker of the batching model.
#[derive(Debug, Clone)]
pub struct Worker {
    capacity_blocks: usize,
    cache: BlockCache,
    batch: Batch,
    /// KV cache events not yet taken, with when they happened.
    kv_events: Vec<(f64, KvEvent)>,
}

impl Worker {
    pub fn new(capacity_blocks: usize) -> Self {
        Self {
            capacity_blocks,
            cache: BlockCache::new(capacity_blocks),
            batch: Batch::default(),
            kv_events: Vec::new(),
        }
    }

    /// The KV cache events since the last call, oldest first, with when they happened.
    pub fn take_kv_events(&mut self) -> Vec<(f64, KvEvent)> {
        std::mem::take(&mut self.kv_events)
    }

    fn job(id: usize, req: &Request) -> Job {
        let output = req.output_length.max(1);
        Job {
            id,
            prefill_left: req.input_length.max(1),
            output_left: output,
            blocks: blocks_for(req.input_length + output).max(1),
            hash_ids: req.hash_ids.clone(),
            input_tokens: req.input_length,
        }
    }

    /// Queues request `id`, arriving at `now_us`.
    pub fn submit(&mut self, id: usize, req: &Request, now_us: f64) {
        if self.batch.is_idle() {
            self.batch.clock_us = self.batch.clock_us.max(now_us);
        }
        self.batch.waiting.push_back(Self::job(id, req));
    }

    /// Runs every step that starts before `until_us` (a step that starts runs to its end),
    /// reporting what happens.
    pub fn run_until(&mut self, until_us: f64, model: &StepModel, on: &mut impl FnMut(Event)) {
        let mut events = Vec::new();
        while !self.batch.is_idle() && self.batch.clock_us < until_us {
            let start = self.batch.clock_us;
            let cache = &self.cache;
            let mut hits = Vec::new();
            let admitted = self.batch.admit(self.capacity_blocks, |job| {
                let hit = cache.leading_hits(&job.hash_ids);
                hits.push(hit);
                prefill_after(job.input_tokens, hit)
            });
            let free = self.capacity_blocks.saturating_sub(self.batch.pinned);
            self.cache.set_capacity(free, &mut events);
            for (job, hit_blocks) in admitted.into_iter().zip(hits) {
                self.cache.touch(&job.hash_ids, &mut events);
                on(Event::Admitted {
                    id: job.id,
                    hit_tokens: job.input_tokens - job.prefill_left.min(job.input_tokens),
                    hit_blocks,
                });
            }
            self.batch.step(model, on);
            let free = self.capacity_blocks.saturating_sub(self.batch.pinned);
            self.cache.set_capacity(free, &mut events);
            self.kv_events.extend(events.drain(..).map(|e| (start, e)));
        }
    }

    /// The TTFT `req` would get here if it arrived at `now_us` and nothing else arrived after
    /// it, in microseconds: the queue and batch run forward (a copy, without the cache; the
    /// requests still waiting hit what the cache holds now).
    pub fn forecast_ttft_us(&self, req: &Request, now_us: f64, model: &StepModel) -> f64 {
        const ME: usize = usize::MAX;
        let mut batch = self.batch.clone();
        if batch.is_idle() {
            batch.clock_us = batch.clock_us.max(now_us);
        }
        batch.waiting.push_back(Self::job(ME, req));
        let mut first = None;
        while first.is_none() && !batch.is_idle() {
            batch.admit(self.capacity_blocks, |job| {
                prefill_after(job.input_tokens, self.cache.leading_hits(&job.hash_ids))
            });
            batch.step(model, &mut |e| {
                if let Event::FirstToken { id: ME, at_us } = e {
                    first = Some(at_us);
                }
            });
        }
        first.expect("every request gets its first token") - now_us
    }
}

/// Replays `requests` (with their prompt `texts`) through `router` on batching workers.
/// Before each arrival every worker runs the steps that start before it; what those steps
/// report by the arrival (first tokens, finishes) reaches the router first, what they report
/// later reaches it before the next arrival after that.
pub fn simulate(
    name: &str,
    router: &mut dyn Router,
    requests: &[Request],
    texts: &[String],
    cfg: &SimConfig,
    model: StepModel,
    mut progress: impl FnMut(),
) -> Outcome {
    let n = cfg.workers;
    let mut cluster = Cluster {
        in_flight: vec![0; n],
        engine: Engine::Batched {
            workers: vec![Worker::new(cfg.cache_blocks); n],
            model,
        },
    };
    let mut out = outcome(name, requests.len(), n);
    out.ttft_ms = vec![0.0; requests.len()];
    let arrival = |i: usize| requests[i].timestamp as f64 * 1000.0 / cfg.speedup;
    let mut first_token_at = vec![0.0; requests.len()];
    let mut last_finish: f64 = 0.0;
    // (time, worker, event), reported by steps already run and not yet delivered.
    let mut pending: Vec<(f64, usize, Event)> = Vec::new();
    let mut deliver = |until: f64,
                       pending: &mut Vec<(f64, usize, Event)>,
                       cluster: &mut Cluster,
                       router: &mut dyn Router,
                       out: &mut Outcome| {
        pending.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let due = pending.partition_point(|e| e.0 <= until);
        for (at, w, event) in pending.drain(..due) {
            match event {
                Event::Admitted {
                    id,
                    hit_tokens,
                    hit_blocks,
                } => {
                    out.hit_tokens += hit_tokens;
                    out.score_prediction(router, id, hit_blocks);
                }
                Event::FirstToken { id, .. } => {
                    let ttft_us = at - arrival(id);
                    out.ttft_ms[id] = ttft_us / 1000.0;
                    first_token_at[id] = at;
                    if let Some(predicted) = router.first_token(w, id, ttft_us) {
                        out.estimate_errors
                            .push((predicted - ttft_us).abs() / ttft_us.max(1.0));
                    }
                }
                Event::Finished { id, .. } => {
                    let outputs = requests[id].output_length;
                    if outputs > 1 {
                        let tpot = (at - first_token_at[id]) / (outputs - 1) as f64;
                        out.tpot_ms.push(tpot / 1000.0);
                    }
                    last_finish = last_finish.max(at);
                    cluster.in_flight[w] -= 1;
                    router.complete(w, id);
                }
            }
        }
    };
    let run_all = |until: f64,
                   cluster: &mut Cluster,
                   pending: &mut Vec<(f64, usize, Event)>,
                   router: &mut dyn Router| {
        let Engine::Batched { workers, model } = &mut cluster.engine else {
            unreachable!("built as Batched above")
        };
        for (w, worker) in workers.iter_mut().enumerate() {
            worker.run_until(until, model, &mut |e| {
                let at = match e {
                    // Admission happens as its step starts; report it with the step's end,
                    // like the rest, since only hits are taken from it.
                    Event::Admitted { .. } => f64::NEG_INFINITY,
                    Event::FirstToken { at_us, .. } | Event::Finished { at_us, .. } => at_us,
                };
                pending.push((at, w, e));
            });
            for (at, event) in worker.take_kv_events() {
                router.kv_events(w, at, std::slice::from_ref(&event));
            }
        }
    };
    for (i, req) in requests.iter().enumerate() {
        let now = arrival(i);
        run_all(now, &mut cluster, &mut pending, router);
        deliver(now, &mut pending, &mut cluster, router, &mut out);
        let start = Instant::now();
        let w = router.route(req, &texts[i], now, &cluster);
        out.route_ns.push(start.elapsed().as_nanos() as u64);
        let Engine::Batched { workers, .. } = &mut cluster.engine else {
            unreachable!("built as Batched above")
        };
        workers[w].submit(i, req, now);
        cluster.in_flight[w] += 1;
        out.input_tokens += req.input_length;
        out.output_tokens += req.output_length.max(1);
        out.per_worker[w] += 1;
        progress();
    }
    run_all(f64::INFINITY, &mut cluster, &mut pending, router);
    deliver(f64::INFINITY, &mut pending, &mut cluster, router, &mut out);
    let first = requests.first().map_or(0.0, |_| arrival(0));
    out.span_ms = (last_finish - first).max(0.0) / 1000.0;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step of 1 ms, 10 us per prefill token, 0.1 ms per running request.
    const MODEL: StepModel = StepModel {
        base_us: 1000.0,
        prefill_us_per_token: 10.0,
        per_request_us: 100.0,
        token_budget: 1000,
    };

    fn req(input: u64, output: u64, ids: &[u64]) -> Request {
        Request {
            timestamp: 0,
            input_length: input,
            output_length: output,
            hash_ids: ids.to_vec(),
        }
    }

    fn run(worker: &mut Worker, model: &StepModel) -> Vec<Event> {
        let mut events = Vec::new();
        worker.run_until(f64::INFINITY, model, &mut |e| events.push(e));
        events
    }

    fn first_tokens(events: &[Event]) -> Vec<(usize, f64)> {
        events
            .iter()
            .filter_map(|e| match *e {
                Event::FirstToken { id, at_us } => Some((id, at_us)),
                _ => None,
            })
            .collect()
    }

    fn finishes(events: &[Event]) -> Vec<(usize, f64)> {
        events
            .iter()
            .filter_map(|e| match *e {
                Event::Finished { id, at_us } => Some((id, at_us)),
                _ => None,
            })
            .collect()
    }

    /// Two requests of 512 prompt tokens arrive together. Step 1 (budget 1,000) prefills all of
    /// the first and 488 of the second: 1 ms + 1,000 x 10 us + 2 x 0.1 ms = 11.2 ms, the
    /// first's first token. Step 2 decodes the first and prefills the last 24: 1 ms + 240 us +
    /// 0.2 ms = 1.44 ms, the second's first token at 12.64 ms. Step 3 decodes both: 1.2 ms;
    /// the first's third token and the second's second end both at 13.84 ms.
    #[test]
    fn one_worker_two_requests_share_steps() {
        let mut w = Worker::new(100);
        w.submit(0, &req(512, 3, &[1]), 0.0);
        w.submit(1, &req(512, 2, &[2]), 0.0);
        let events = run(&mut w, &MODEL);
        assert_eq!(first_tokens(&events), vec![(0, 11_200.0), (1, 12_640.0)]);
        assert_eq!(finishes(&events), vec![(1, 13_840.0), (0, 13_840.0)]);
    }

    /// A prompt of 700 tokens with a budget of 300 is prefilled in three chunks (300, 300,
    /// 100): its first token comes at the end of the third step.
    #[test]
    fn chunked_prefill_spans_steps() {
        let model = StepModel {
            token_budget: 300,
            ..MODEL
        };
        let mut w = Worker::new(100);
        w.submit(0, &req(700, 1, &[1, 2]), 0.0);
        let events = run(&mut w, &model);
        let steps = [300.0, 300.0, 100.0].map(|t| 1000.0 + t * 10.0 + 100.0);
        let end: f64 = steps.iter().sum();
        assert_eq!(first_tokens(&events), vec![(0, end)]);
        assert_eq!(
            finishes(&events),
            vec![(0, end)],
            "one output token: done with it"
        );
    }

    /// Capacity 3 blocks; each request pins 2 (512 prompt + 2 output tokens), so the second
    /// waits for the first to finish: the first prefills (1 ms + 5.12 ms + 0.1 ms = 6.22 ms)
    /// and decodes once (1.1 ms: done at 7.32 ms); then the second runs the same 6.22 ms.
    #[test]
    fn a_request_waits_until_its_blocks_fit() {
        let mut w = Worker::new(3);
        w.submit(0, &req(512, 2, &[1]), 0.0);
        w.submit(1, &req(512, 2, &[2]), 0.0);
        let events = run(&mut w, &MODEL);
        assert_eq!(
            first_tokens(&events),
            vec![(0, 6_220.0), (1, 7_320.0 + 6_220.0)]
        );
        let admitted: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, Event::Admitted { .. }))
            .collect();
        assert_eq!(admitted.len(), 2);
        assert!(matches!(events[0], Event::Admitted { id: 0, .. }));
        assert!(
            matches!(events[2], Event::Finished { id: 0, .. }),
            "the second was admitted only after the first finished: {events:?}"
        );
    }

    /// A request whose leading block is cached prefills only the rest (and at least the last
    /// token, as engines recompute it); the forecast of a request on an idle worker is exactly
    /// its simulated TTFT.
    #[test]
    fn cache_hits_shorten_prefill_and_the_forecast_matches() {
        let mut w = Worker::new(100);
        w.submit(0, &req(1024, 1, &[1, 2]), 0.0);
        run(&mut w, &MODEL);
        let now = 100_000.0;
        let next = req(1024, 1, &[1, 3]);
        let forecast = w.forecast_ttft_us(&next, now, &MODEL);
        w.submit(1, &next, now);
        let events = run(&mut w, &MODEL);
        assert_eq!(
            events[0],
            Event::Admitted {
                id: 1,
                hit_tokens: 512,
                hit_blocks: 1
            }
        );
        let ttft = first_tokens(&events)[0].1 - now;
        assert_eq!(ttft, 1000.0 + 512.0 * 10.0 + 100.0);
        assert_eq!(forecast, ttft);
        // Fully cached: one token is still prefilled.
        let again = req(1024, 1, &[1, 3]);
        assert_eq!(
            w.forecast_ttft_us(&again, 200_000.0, &MODEL),
            1000.0 + 10.0 + 100.0
        );
    }
}
