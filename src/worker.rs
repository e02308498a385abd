//! Workers: the seed's `Worker` trait, `BasicWorker` with atomic counters, and the load ticket.
//!
//! Load and health are independent atomics, and the processed count a striped counter (see
//! `metrics.rs`). `Relaxed` throughout: each is a counter or flag read on its own, nothing is
//! published through it, and a router tolerates a load that is a few requests stale. The load
//! counter saturates at zero on decrement, so a stray extra decrement cannot wrap it to
//! `usize::MAX` (which would starve the worker forever).

use crate::metrics::StripedCounter;
use crate::sync::{AtomicBool, AtomicUsize, Ordering};
use std::fmt;
use std::sync::Arc;

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
}

/// A worker with atomic load, processed and health state.
pub struct BasicWorker {
    url: String,
    model_id: String,
    worker_type: WorkerType,
    api_key: Option<String>,
    load: AtomicUsize,
    healthy: AtomicBool,
    /// Bumped on every request routed here, by whichever thread routed it: striped over
    /// cache-padded cells (as one shared cell, a contended read-modify-write per request whose
    /// `perf` samples grew 5x from 1 to 2 routing threads in a warm Mooncake replay), and apart
    /// from `load` and `healthy`, which every routing decision reads.
    processed: StripedCounter,
}

impl BasicWorker {
    /// The API key requests to this worker carry, if any.
    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
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
        self.load.load(Ordering::Relaxed)
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
            healthy: AtomicBool::new(true),
            processed: StripedCounter::new(),
        }
    }
}

/// Proof that one request is in flight on a worker: holds one unit of the worker's load and
/// gives it back when dropped, so an early return or a panic cannot leak load.
#[must_use = "dropping the ticket at once ends the request's load on the worker"]
pub struct LoadTicket {
    worker: Arc<dyn Worker>,
    index: usize,
    cache_hit: bool,
}

impl LoadTicket {
    /// Takes one unit of load on `worker`.
    pub(crate) fn new(worker: Arc<dyn Worker>, index: usize, cache_hit: bool) -> Self {
        worker.increment_load();
        Self {
            worker,
            index,
            cache_hit,
        }
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
}

impl Drop for LoadTicket {
    fn drop(&mut self) {
        self.worker.decrement_load();
    }
}

impl fmt::Debug for LoadTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadTicket")
            .field("url", &self.url())
            .field("index", &self.index)
            .field("cache_hit", &self.cache_hit)
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

    #[test]
    fn ticket_gives_load_back_on_drop() {
        let w: Arc<dyn Worker> = Arc::new(BasicWorkerBuilder::new("u").build());
        let t = LoadTicket::new(w.clone(), 0, false);
        assert_eq!(w.load(), 1);
        drop(t);
        assert_eq!(w.load(), 0);
    }
}
