//! Workers: the seed's `Worker` trait, `BasicWorker` with atomic counters, the work a worker
//! has outstanding, and the load ticket.
//!
//! Load and health are independent atomics, and the processed count a striped counter (see
//! `metrics.rs`). `Relaxed` throughout: each is a counter or flag read on its own, nothing is
//! published through it, and a router tolerates a load that is a few requests stale. The load
//! counter saturates at zero on decrement, so a stray extra decrement cannot wrap it to
//! `usize::MAX` (which would starve the worker forever).
//!
//! **Work** ([`WorkCounters`]): the prompt chars a worker still has to prefill (requests routed
//! and not past their first token) and the requests it is decoding. Only load tickets change
//! them, each undoing exactly what it did: a ticket adds its prefill when made, moves it to
//! decoding on its first token, and takes back whichever it holds when dropped, on every path
//! (an error, a panic, a removed worker). `Relaxed` here too: a ticket's subtraction follows its
//! own addition in the counter's modification order (the same thread, or a later one the ticket
//! was handed to, which the hand-over orders), so no reader sees a counter below what the other
//! tickets hold, and nothing is published through them. The first token is taken once by an
//! atomic swap of the ticket's flag, so two threads reporting it at once move the work once
//! (loom model `work_counters_with_first_token_and_drop_racing`).
//!
//! **Peer work** ([`PeerWork`]): with several router replicas in front of one fleet, each
//! replica's tickets count only its own requests. What the other replicas report is set as a
//! whole (`Worker::set_peer_work`, by the replica sync) and added to `load()` and the work
//! counters' readings, so the rules see the fleet's work. `Relaxed`: a hint like the rest.

use crate::estimate::TtftModel;
use crate::metrics::StripedCounter;
use crate::sync::{AtomicBool, AtomicUsize, Ordering};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a worker does in a (possibly disaggregated) serving fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WorkerType {
    /// Prefill and decode on one worker.
    #[default]
    Regular,
    /// Prefill only (disaggregated serving), with its KV bootstrap port.
    Prefill {
        /// The port decode workers fetch KV from, if any.
        bootstrap_port: Option<u16>,
    },
    /// Decode only (disaggregated serving).
    Decode,
}

/// An inference worker as the router sees it (the seed's trait).
pub trait Worker: Send + Sync + fmt::Debug {
    /// The worker's base URL; also its identity in the routing trees.
    fn url(&self) -> &str;
    /// The model it serves; `""` or `"unknown"` mean the default model.
    fn model_id(&self) -> &str;
    /// What kind of worker it is.
    fn worker_type(&self) -> WorkerType {
        WorkerType::Regular
    }
    /// Requests in flight.
    fn load(&self) -> usize;
    /// One more request in flight.
    fn increment_load(&self);
    /// One fewer request in flight (never below zero).
    fn decrement_load(&self);
    /// Whether the worker may be routed to.
    fn is_healthy(&self) -> bool;
    /// Marks the worker healthy or not.
    fn set_healthy(&self, healthy: bool);
    /// Requests routed to it so far.
    fn processed_requests(&self) -> usize;
    /// Counts one more routed request.
    fn increment_processed(&self);
    /// The work outstanding on this worker, if it keeps count ([`BasicWorker`] does): what
    /// load tickets add, move and give back.
    fn work(&self) -> Option<&WorkCounters> {
        None
    }
    /// What the other router replicas have outstanding on this worker, summed over them;
    /// `load()` and `work()` include it from now on. The default ignores it.
    fn set_peer_work(&self, _work: PeerWork) {}
}

/// Work other router replicas have outstanding on a worker (see `Worker::set_peer_work`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerWork {
    /// Requests in flight.
    pub in_flight: usize,
    /// Prompt units routed and not past their first token.
    pub queued_prefill: usize,
    /// Requests decoding.
    pub decoding: usize,
}

/// The work outstanding on one worker, kept by the load tickets of the native API (plus what
/// other router replicas report, if any).
#[derive(Debug, Default)]
pub struct WorkCounters {
    queued_prefill: AtomicUsize,
    decoding: AtomicUsize,
    peer_prefill: AtomicUsize,
    peer_decoding: AtomicUsize,
}

impl WorkCounters {
    /// Prompt chars of requests routed here that have not had their first token: prefill
    /// still queued or running.
    pub fn queued_prefill(&self) -> usize {
        self.queued_prefill.load(Ordering::Relaxed) + self.peer_prefill.load(Ordering::Relaxed)
    }

    /// Requests past their first token and not yet finished: decoding.
    pub fn decoding(&self) -> usize {
        self.decoding.load(Ordering::Relaxed) + self.peer_decoding.load(Ordering::Relaxed)
    }
}

/// A worker with atomic load, processed and health state.
pub struct BasicWorker {
    url: String,
    model_id: String,
    worker_type: WorkerType,
    api_key: Option<String>,
    load: AtomicUsize,
    /// In flight from other router replicas (`set_peer_work`).
    peer_load: AtomicUsize,
    healthy: AtomicBool,
    /// Bumped on every request routed here, by whichever thread routed it: striped over
    /// cache-padded cells (as one shared cell, a contended read-modify-write per request whose
    /// `perf` samples grew 5x from 1 to 2 routing threads in a warm Mooncake replay), and apart
    /// from `load` and `healthy`, which every routing decision reads.
    processed: StripedCounter,
    work: WorkCounters,
}

impl BasicWorker {
    /// The API key requests to this worker carry, if any.
    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    /// This replica's own work here, without what other replicas reported: what it tells
    /// them (`replica::ReplicaEvent::Work`).
    pub fn own_work(&self) -> PeerWork {
        PeerWork {
            in_flight: self.load.load(Ordering::Relaxed),
            queued_prefill: self.work.queued_prefill.load(Ordering::Relaxed),
            decoding: self.work.decoding.load(Ordering::Relaxed),
        }
    }
}

impl Worker for BasicWorker {
    fn url(&self) -> &str {
        &self.url
    }
    fn model_id(&self) -> &str {
        &self.model_id
    }
    fn worker_type(&self) -> WorkerType {
        self.worker_type
    }
    fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed) + self.peer_load.load(Ordering::Relaxed)
    }
    fn increment_load(&self) {
        self.load.fetch_add(1, Ordering::Relaxed);
    }
    fn decrement_load(&self) {
        let _ = self
            .load
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
    fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }
    fn processed_requests(&self) -> usize {
        self.processed.get() as usize
    }
    fn increment_processed(&self) {
        self.processed.add(1);
    }
    fn work(&self) -> Option<&WorkCounters> {
        Some(&self.work)
    }
    fn set_peer_work(&self, work: PeerWork) {
        self.peer_load.store(work.in_flight, Ordering::Relaxed);
        self.work
            .peer_prefill
            .store(work.queued_prefill, Ordering::Relaxed);
        self.work
            .peer_decoding
            .store(work.decoding, Ordering::Relaxed);
    }
}

impl fmt::Debug for BasicWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The API key is deliberately left out.
        f.debug_struct("BasicWorker")
            .field("url", &self.url)
            .field("model_id", &self.model_id)
            .field("worker_type", &self.worker_type)
            .field("load", &self.load())
            .field("healthy", &self.is_healthy())
            .finish()
    }
}

/// Builds a [`BasicWorker`] (the seed's builder).
#[derive(Debug, Clone)]
pub struct BasicWorkerBuilder {
    url: String,
    model_id: String,
    worker_type: WorkerType,
    api_key: Option<String>,
}

impl BasicWorkerBuilder {
    /// A regular, healthy worker for the default model at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            model_id: String::new(),
            worker_type: WorkerType::Regular,
            api_key: None,
        }
    }

    /// Sets the worker type.
    pub fn worker_type(mut self, worker_type: WorkerType) -> Self {
        self.worker_type = worker_type;
        self
    }

    /// Sets the API key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Sets the model the worker serves.
    pub fn model_id(mut self, model_id: impl Into<String>) -> Self {
        self.model_id = model_id.into();
        self
    }

    /// The worker, healthy and idle.
    pub fn build(self) -> BasicWorker {
        BasicWorker {
            url: self.url,
            model_id: self.model_id,
            worker_type: self.worker_type,
            api_key: self.api_key,
            load: AtomicUsize::new(0),
            peer_load: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            processed: StripedCounter::new(),
            work: WorkCounters::default(),
        }
    }
}

/// Proof that one request is in flight on a worker: holds one unit of the worker's load and
/// its prompt's prefill work, moves that work to decoding at [`LoadTicket::first_token`], and
/// gives back whatever it holds when dropped, so an early return or a panic cannot leak either.
#[must_use = "dropping the ticket at once ends the request's load on the worker"]
pub struct LoadTicket {
    worker: Arc<dyn Worker>,
    index: usize,
    cache_hit: bool,
    /// Prompt chars the worker is expected to prefill (what it did not hold).
    prefill: usize,
    /// Whether the first token has been reported (the work moved to decoding).
    first_token: AtomicBool,
    /// Under the estimated-TTFT rule: the estimate, and the model its first token refines.
    observer: Option<Observer>,
}

/// What a ticket routed by the estimated-TTFT rule reports its first token to.
pub(crate) struct Observer {
    pub(crate) model: Arc<TtftModel>,
    pub(crate) routed_at: Instant,
    /// The estimate's inputs: prefill chars ahead of and in the request, requests decoding.
    pub(crate) prefill_chars: usize,
    pub(crate) decoding: usize,
    pub(crate) estimate_ns: f64,
}

impl LoadTicket {
    /// Takes one unit of load on `worker`, and `prefill` chars of its queued prefill.
    pub(crate) fn new(
        worker: Arc<dyn Worker>,
        index: usize,
        cache_hit: bool,
        prefill: usize,
    ) -> Self {
        worker.increment_load();
        if let Some(work) = worker.work() {
            work.queued_prefill.fetch_add(prefill, Ordering::Relaxed);
        }
        Self {
            worker,
            index,
            cache_hit,
            prefill,
            first_token: AtomicBool::new(false),
            observer: None,
        }
    }

    /// The ticket, reporting its first token to `observer`.
    pub(crate) fn observed_by(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The worker the request was routed to.
    pub fn worker(&self) -> &Arc<dyn Worker> {
        &self.worker
    }

    /// The worker's URL.
    pub fn url(&self) -> &str {
        self.worker.url()
    }

    /// The worker's position in registration order within its model (stable while registered).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether the decision followed a cached prefix (match ratio above the threshold).
    pub fn cache_hit(&self) -> bool {
        self.cache_hit
    }

    /// Prompt chars the worker was expected to prefill for this request: the prompt less the
    /// prefix the router saw it holding (on a miss, the whole prompt).
    pub fn prefill_chars(&self) -> usize {
        self.prefill
    }

    /// Reports the request's first token (its prefill is done): the worker's queued prefill
    /// drops by this request's and its decoding count grows by one, and under the
    /// estimated-TTFT rule the time since routing refines the estimate's prefill cost. Only the
    /// first call counts (it returns `true`), from any thread.
    pub fn first_token(&self) -> bool {
        self.report_first_token(|o| o.routed_at.elapsed())
    }

    /// [`LoadTicket::first_token`], with the time from routing to the first token measured by
    /// the caller (a simulator or a replay, whose clock is not the wall clock).
    pub fn first_token_after(&self, elapsed: Duration) -> bool {
        self.report_first_token(|_| elapsed)
    }

    /// The TTFT the estimated-TTFT rule predicted for this request (`None` under other rules).
    pub fn estimated_ttft(&self) -> Option<Duration> {
        self.observer
            .as_ref()
            .map(|o| Duration::from_nanos(o.estimate_ns.max(0.0) as u64))
    }

    fn report_first_token(&self, elapsed: impl FnOnce(&Observer) -> Duration) -> bool {
        #[cfg(not(router_loom_broken_first_token))]
        let first = !self.first_token.swap(true, Ordering::Relaxed);
        // Test-only broken variant (loom must catch it): a load and a store, so two threads
        // can both take the first token.
        #[cfg(router_loom_broken_first_token)]
        let first = !self.first_token.load(Ordering::Relaxed) && {
            self.first_token.store(true, Ordering::Relaxed);
            true
        };
        if first {
            if let Some(work) = self.worker.work() {
                work.queued_prefill
                    .fetch_sub(self.prefill, Ordering::Relaxed);
                work.decoding.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(o) = &self.observer {
                o.model.observe(elapsed(o), o.prefill_chars, o.decoding);
            }
        }
        first
    }

    /// Whether the first token has been reported.
    pub fn has_first_token(&self) -> bool {
        self.first_token.load(Ordering::Relaxed)
    }
}

impl Drop for LoadTicket {
    fn drop(&mut self) {
        self.worker.decrement_load();
        if let Some(work) = self.worker.work() {
            if self.first_token.load(Ordering::Relaxed) {
                work.decoding.fetch_sub(1, Ordering::Relaxed);
            } else {
                work.queued_prefill
                    .fetch_sub(self.prefill, Ordering::Relaxed);
            }
        }
    }
}

impl fmt::Debug for LoadTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadTicket")
            .field("url", &self.url())
            .field("index", &self.index)
            .field("cache_hit", &self.cache_hit)
            .field("prefill", &self.prefill)
            .field("first_token", &self.has_first_token())
            .finish()
    }
}

#[cfg(all(test, not(router_loom)))]
mod tests {
    use super::*;

    #[test]
    fn counters_and_health() {
        let w = BasicWorkerBuilder::new("http://w:1")
            .api_key("k")
            .model_id("m")
            .worker_type(WorkerType::Decode)
            .build();
        assert_eq!(
            (w.url(), w.model_id(), w.api_key()),
            ("http://w:1", "m", Some("k"))
        );
        assert_eq!(w.worker_type(), WorkerType::Decode);
        assert!(w.is_healthy());
        w.set_healthy(false);
        assert!(!w.is_healthy());
        w.decrement_load();
        assert_eq!(w.load(), 0, "load saturates at zero");
        w.increment_load();
        w.increment_processed();
        assert_eq!((w.load(), w.processed_requests()), (1, 1));
        assert!(
            !format!("{w:?}").contains("api_key"),
            "Debug must not print the key"
        );
    }

    #[test]
    fn processed_counts_every_thread_once() {
        let w = BasicWorkerBuilder::new("http://w:1").build();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..1000).for_each(|_| w.increment_processed()));
            }
        });
        assert_eq!(w.processed_requests(), 4000);
    }

    fn work_of(w: &Arc<dyn Worker>) -> (usize, usize, usize) {
        let work = w.work().unwrap();
        (w.load(), work.queued_prefill(), work.decoding())
    }

    #[test]
    fn ticket_gives_load_and_work_back_on_every_path() {
        let w: Arc<dyn Worker> = Arc::new(BasicWorkerBuilder::new("u").build());
        // Dropped before its first token.
        let t = LoadTicket::new(w.clone(), 0, false, 100);
        assert_eq!(work_of(&w), (1, 100, 0));
        drop(t);
        assert_eq!(work_of(&w), (0, 0, 0));
        // First token, then done; a second report changes nothing.
        let t = LoadTicket::new(w.clone(), 0, false, 100);
        let u = LoadTicket::new(w.clone(), 0, true, 30);
        assert_eq!(work_of(&w), (2, 130, 0));
        assert!(t.first_token());
        assert!(!t.first_token(), "only the first report counts");
        assert!(t.has_first_token() && !u.has_first_token());
        assert_eq!(work_of(&w), (2, 30, 1));
        drop(t);
        assert_eq!(work_of(&w), (1, 30, 0));
        // A panic while the ticket is held, before and after its first token.
        for report in [false, true] {
            let handle = w.clone();
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                let t = LoadTicket::new(handle, 0, false, 7);
                if report {
                    t.first_token();
                }
                panic!("the request failed");
            }));
            assert!(panicked.is_err());
            assert_eq!(work_of(&w), (1, 30, 0), "report {report}");
        }
        drop(u);
        assert_eq!(work_of(&w), (0, 0, 0));
    }

    /// A worker that keeps no work counters still gets its load back.
    #[test]
    fn a_worker_without_work_counters_keeps_only_load() {
        #[derive(Debug)]
        struct Plain(AtomicUsize);
        impl Worker for Plain {
            fn url(&self) -> &str {
                "plain"
            }
            fn model_id(&self) -> &str {
                ""
            }
            fn load(&self) -> usize {
                self.0.load(Ordering::Relaxed)
            }
            fn increment_load(&self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
            fn decrement_load(&self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
            fn is_healthy(&self) -> bool {
                true
            }
            fn set_healthy(&self, _: bool) {}
            fn processed_requests(&self) -> usize {
                0
            }
            fn increment_processed(&self) {}
        }
        let w: Arc<dyn Worker> = Arc::new(Plain(AtomicUsize::new(0)));
        let t = LoadTicket::new(w.clone(), 0, false, 5);
        assert!(t.first_token());
        assert_eq!(w.load(), 1);
        drop(t);
        assert_eq!(w.load(), 0);
    }
}
