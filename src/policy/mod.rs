//! Routing policies: the seed's `LoadBalancingPolicy` trait and the cache-aware policy.

mod budget;
mod cache_aware;
mod candidates;
mod config;
mod models;
mod rules;

pub use cache_aware::{CacheAwarePolicy, CacheAwarePolicyBuilder};
pub use config::{CacheAwareConfig, ConfigError, MissRule, RoutingMode, SelectionRule};

use crate::worker::Worker;
use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

/// A load-balancing policy (the seed's trait).
pub trait LoadBalancingPolicy: Send + Sync + Debug {
    /// The index of the worker that should serve a request with `request_text`, or `None` when
    /// no worker can.
    fn select_worker(
        &self,
        workers: &[Arc<dyn Worker>],
        request_text: Option<&str>,
    ) -> Option<usize>;

    /// For disaggregated serving: a prefill worker by this policy and the least-loaded healthy
    /// decode worker.
    fn select_worker_pair(
        &self,
        prefill_workers: &[Arc<dyn Worker>],
        decode_workers: &[Arc<dyn Worker>],
        request_text: Option<&str>,
    ) -> Option<(usize, usize)> {
        let prefill = self.select_worker(prefill_workers, request_text)?;
        let decode = get_healthy_worker_indices(decode_workers)
            .into_iter()
            .min_by_key(|&i| decode_workers[i].load())?;
        Some((prefill, decode))
    }

    /// Called when a request finishes; the default does nothing.
    fn on_request_complete(&self, _worker_url: &str, _success: bool) {}

    /// The policy's name.
    fn name(&self) -> &'static str;

    /// Whether `select_worker` uses the request text.
    fn needs_request_text(&self) -> bool {
        false
    }

    /// For downcasting.
    fn as_any(&self) -> &dyn Any;
}

/// Indices of the healthy workers, in order.
pub fn get_healthy_worker_indices(workers: &[Arc<dyn Worker>]) -> Vec<usize> {
    workers
        .iter()
        .enumerate()
        .filter(|(_, w)| w.is_healthy())
        .map(|(i, _)| i)
        .collect()
}
