//! Public errors: small enums whose messages say what to change.

use std::fmt;

/// Why a tree could not be built or a call on it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeError {
    /// `TreeConfig::shards` was not a power of two in `1..=4096`.
    InvalidShards(usize),
    /// The tree already holds the most tenants it can intern.
    TooManyTenants {
        /// The capacity that was reached.
        limit: usize,
    },
    /// A tenant id that this tree never handed out.
    UnknownTenant(u32),
}

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TreeError::InvalidShards(n) => write!(
                f,
                "invalid shard count {n}: TreeConfig::shards must be a power of two between 1 and 4096"
            ),
            TreeError::TooManyTenants { limit } => write!(
                f,
                "this tree already interns {limit} tenants, its limit: remove unused tenants or split workers across models"
            ),
            TreeError::UnknownTenant(id) => write!(
                f,
                "tenant id {id} was not issued by this tree: get ids from Tree::tenant_id on the same tree"
            ),
        }
    }
}

impl std::error::Error for TreeError {}

/// Why the native API could not route a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No worker was ever registered for this model.
    UnknownModel(String),
    /// Every worker of the model is unhealthy or removed.
    NoHealthyWorker(String),
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::UnknownModel(m) => write!(
                f,
                "no worker is registered for model {m:?}: register one with CacheAwarePolicy::register_worker (\"\" and \"unknown\" mean the default model)"
            ),
            RouteError::NoHealthyWorker(m) => write!(
                f,
                "every worker of model {m:?} is unhealthy or removed: mark one healthy or add a worker"
            ),
        }
    }
}

impl std::error::Error for RouteError {}

/// Why a [`crate::KvIndex`] could not be built, or an event was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexError {
    /// `KvIndexConfig::max_workers` was not in `1..=256`.
    InvalidMaxWorkers(usize),
    /// `KvIndexConfig::shards` was not a power of two in `1..=4096`.
    InvalidShards(usize),
    /// An event for a model no worker was registered for.
    UnknownModel(String),
    /// An event from a worker not registered for its model.
    UnknownWorker {
        /// The model.
        model: String,
        /// The worker's URL.
        url: String,
    },
    /// A worker number at or past the index's `max_workers`.
    WorkerOutOfRange {
        /// The worker number given.
        worker: usize,
        /// The index's capacity.
        max_workers: usize,
    },
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexError::InvalidMaxWorkers(n) => write!(
                f,
                "invalid worker count {n}: KvIndexConfig::max_workers must be between 1 and 256"
            ),
            IndexError::InvalidShards(n) => write!(
                f,
                "invalid shard count {n}: KvIndexConfig::shards must be a power of two between 1 and 4096"
            ),
            IndexError::UnknownModel(m) => write!(
                f,
                "KV event for model {m:?}, which has no registered worker: register the worker before subscribing to its events"
            ),
            IndexError::UnknownWorker { model, url } => write!(
                f,
                "KV event from {url:?}, which is not registered for model {model:?}: register it (same URL and model) before subscribing to its events"
            ),
            IndexError::WorkerOutOfRange {
                worker,
                max_workers,
            } => write!(
                f,
                "worker {worker} is out of range: this index tracks workers 0..{max_workers}; build it with a larger KvIndexConfig::max_workers (CacheAwarePolicyBuilder::index_workers)"
            ),
        }
    }
}

impl std::error::Error for IndexError {}

/// Why a replica event could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncError {
    /// An event for a model this replica has no worker of.
    UnknownModel(String),
    /// An event for a worker this replica does not know under that model.
    UnknownWorker {
        /// The model.
        model: String,
        /// The worker's URL.
        url: String,
    },
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncError::UnknownModel(m) => write!(
                f,
                "replica event for model {m:?}, which has no worker here: register the same workers on every replica"
            ),
            SyncError::UnknownWorker { model, url } => write!(
                f,
                "replica event for {url:?} of model {model:?}, not registered here: register the same workers on every replica"
            ),
        }
    }
}

impl std::error::Error for SyncError {}
