//! A lock-free, cache-aware request routing engine.
//!
//! An LLM-serving proxy asks, for every request, which inference worker should get it. Workers
//! keep a prefix (KV) cache, so sending a request where its prefix already lives saves prefill
//! time. This crate keeps, per model, an approximate radix tree of the texts sent to each worker
//! ([`Tree`]) and answers that question in one lock-free descent.
//!
//! The tree is sharded by first char; matches take no lock; inserts, splits, eviction and tenant
//! removal change it with compare-and-swap and reclaim memory through crossbeam-epoch. See the
//! `tree` module's files for the protocols and the orderings they rely on.
#![deny(unsafe_op_in_unsafe_fn)]

mod block_hash;
mod clock;
mod constants;
mod cow;
mod error;
mod estimate;
mod evictor;
mod index;
mod metrics;
mod policy;
pub mod replica;
mod sync;
mod tenant;
mod tree;
pub mod vllm;
mod worker;

pub use block_hash::{text_block_keys, BlockHasher, VllmSha256Cbor};
pub use clock::{Clock, ManualClock};
pub use error::{IndexError, RouteError, SyncError, TreeError};
pub use index::{
    fold_hash, fold_hash_int, KvEvent, KvIndex, KvIndexConfig, KvIndexStats, MAX_INDEX_WORKERS,
};
pub use metrics::{MetricsSnapshot, WorkerStats};
pub use policy::{
    get_healthy_worker_indices, CacheAwareConfig, CacheAwarePolicy, CacheAwarePolicyBuilder,
    ConfigError, LoadBalancingPolicy, MissRule, RoutingMode, SelectionRule,
};
pub use tenant::TenantId;
pub use tree::{
    BlockTree, Blocks, EvictionStats, Holders, KeyUnit, KeyedTree, MatchCounts, MatchOutcome, Text,
    TokenTree, Tokens, Tree, TreeConfig,
};
pub use worker::{
    BasicWorker, BasicWorkerBuilder, LoadTicket, PeerWork, WorkCounters, Worker, WorkerType,
};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
