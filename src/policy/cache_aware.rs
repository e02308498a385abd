//! The cache-aware policy: the seed's behaviour on the lock-free tree.
//!
//! One request's path: load the tables (epoch, no lock) → find each worker's tenant id by its
//! `Arc` address (no URL comparison) → one tree descent that matches, lets the rule choose, and
//! inserts → worker index (→ load ticket on the native API). The tables are copied on write, so
//! registrations never stop routing; see `models.rs` and `cow.rs`.
//!
//! Eviction is part of the path: a request whose insert takes its tree over the budget trims
//! it back (`tree/evict.rs`) before it returns, at a cost proportional to what it evicts.
//!
//! Orderings of the atomics here: the tie-break state and the cost-aware running mean are
//! `Relaxed` (each a hint that publishes nothing; a lost update only repeats a draw or skews
//! the mean by one request). `eviction_passes` is bumped with `Release` after an eviction's
//! other counters and read first with `Acquire` by a snapshot (`metrics.rs`).

use super::budget::Budget;
use super::candidates::{Candidate, Snapshot};
use super::config::{CacheAwareConfig, ConfigError, MissRule, RoutingMode, SelectionRule};
use super::models::{tree_key, ModelState, Registered, Tables};
use super::rules::{fill_one, Estimate, Filled, Rules};
use super::LoadBalancingPolicy;
use crate::clock::Clock;
use crate::cow::CowCell;
use crate::error::{IndexError, RouteError, SyncError};
use crate::evictor::{Evictor, Housekeeper};
use crate::index::{KvEvent, MAX_INDEX_WORKERS};
use crate::metrics::{Counters, MetricsSnapshot, WorkerStats};
use crate::replica::{PeerWorkTable, ReplicaEvent, ReplicaMessage};
use crate::sync::{AtomicU64, Ordering};
use crate::tenant::TenantId;
use crate::tree::{Blocks, EvictionStats, KeyUnit, KeyedTree, MatchCounts, Text, Tokens};
use crate::worker::{LoadTicket, Observer, Worker};
use crossbeam_epoch as epoch;
use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Routes by prefix-cache affinity while load is balanced, by load when it is not (the seed's
/// `CacheAwarePolicy`), over per-model lock-free trees. The request whose insert takes a tree
/// over `max_tree_size` evicts the stalest leaves until the tree is back under it, at a cost
/// proportional to what it evicts; an evictor thread, stopped when the policy is dropped,
/// trims idle trees and frees retired nodes on each tick.
pub struct CacheAwarePolicy {
    shared: Arc<Shared>,
    evictor: Option<Evictor>,
}

/// Builds a [`CacheAwarePolicy`] with options beyond the seed's config.
#[derive(Debug, Clone)]
pub struct CacheAwarePolicyBuilder {
    config: CacheAwareConfig,
    miss_rule: MissRule,
    selection: SelectionRule,
    tie_seed: Option<u64>,
    mode: RoutingMode,
    hybrid_window: Duration,
    index_workers: usize,
    clock: Clock,
}

impl Default for CacheAwarePolicyBuilder {
    fn default() -> Self {
        Self {
            config: CacheAwareConfig::default(),
            miss_rule: MissRule::default(),
            selection: SelectionRule::default(),
            tie_seed: None,
            mode: RoutingMode::default(),
            hybrid_window: Duration::from_secs(2),
            index_workers: 64,
            clock: Clock::default(),
        }
    }
}

impl CacheAwarePolicyBuilder {
    /// The seed's configuration.
    pub fn config(mut self, config: CacheAwareConfig) -> Self {
        self.config = config;
        self
    }

    /// How misses are routed (default: least loaded, random ties).
    pub fn miss_rule(mut self, rule: MissRule) -> Self {
        self.miss_rule = rule;
        self
    }

    /// How balanced requests pick a worker (default: [`SelectionRule::EstimatedTtft`], the
    /// lowest estimated time to first token; `new` and `with_config` keep the seed's
    /// threshold rule).
    pub fn selection(mut self, rule: SelectionRule) -> Self {
        self.selection = rule;
        self
    }

    /// Breaks load ties with one RNG seeded by `seed`, shared by all threads, so a replay is
    /// reproducible (simulations, tests). Without it each thread has its own unseeded RNG,
    /// which is what a proxy wants: no shared state on the routing path.
    pub fn tie_seed(mut self, seed: u64) -> Self {
        self.tie_seed = Some(seed);
        self
    }

    /// What `route_blocks` matches against (default: [`RoutingMode::Approximate`]).
    pub fn mode(mut self, mode: RoutingMode) -> Self {
        self.mode = mode;
        self
    }

    /// How long a decision counts, in hybrid mode, for a worker that publishes KV events
    /// (default 2 s: a prefill's time to store its blocks and the event's trip, with room).
    /// Resolution: the trees' clock (milliseconds by default).
    pub fn hybrid_window(mut self, window: Duration) -> Self {
        self.hybrid_window = window;
        self
    }

    /// Where the trees read their last-access times (default: milliseconds, monotonic): a
    /// [`crate::ManualClock`] replays a trace in its own time (the hybrid window and eviction
    /// order follow it).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Workers per model the KV event index tracks, by tenant id (`1..=256`, default 64).
    pub fn index_workers(mut self, workers: usize) -> Self {
        self.index_workers = workers;
        self
    }

    /// The policy; fails on an invalid config or if the evictor thread cannot start.
    pub fn build(self) -> Result<CacheAwarePolicy, ConfigError> {
        self.config.validate()?;
        if self.index_workers == 0 || self.index_workers > MAX_INDEX_WORKERS {
            return Err(ConfigError::IndexWorkers(self.index_workers));
        }
        let interval = self.config.eviction_interval_secs;
        let budget = Budget::new(&self.config);
        let rules = Rules::new(self.selection, self.config.cache_threshold);
        let shared = Arc::new(Shared {
            config: self.config,
            miss_rule: self.miss_rule,
            rules,
            ties: self
                .tie_seed
                .map(|seed| AtomicU64::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)),
            tables: CowCell::new(Tables::default()),
            counters: Counters::new(),
            budget,
            mode: self.mode,
            hybrid_window_ms: self.hybrid_window.as_millis() as u64,
            index_workers: self.index_workers,
            clock: self.clock,
            peer_work: Default::default(),
        });
        let evictor = if interval > 0 {
            let target: Arc<dyn Housekeeper> = shared.clone();
            Some(
                Evictor::spawn(target, Duration::from_secs(interval))
                    .map_err(|e| ConfigError::EvictorSpawn(e.to_string()))?,
            )
        } else {
            None
        };
        Ok(CacheAwarePolicy { shared, evictor })
    }
}

struct Shared {
    config: CacheAwareConfig,
    miss_rule: MissRule,
    rules: Rules,
    /// The seeded tie-breaking RNG state, if `tie_seed` was given.
    ties: Option<AtomicU64>,
    tables: CowCell<Tables>,
    counters: Counters,
    budget: Budget,
    mode: RoutingMode,
    hybrid_window_ms: u64,
    index_workers: usize,
    clock: Clock,
    /// Other replicas' latest work snapshots (`apply_replica`).
    peer_work: std::sync::Mutex<PeerWorkTable>,
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        // Seeded per thread from a stack address: ties only need to spread, not be secret.
        let local = 0u8;
        (&local as *const u8 as u64) | 1
    });
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x
}

impl Shared {
    /// A uniform draw in `0..n` (xorshift64*), for breaking ties: from the seeded shared state
    /// when there is one (`Relaxed`: only the sequence matters, and seeded runs are replays),
    /// else from this thread's own state.
    fn draw(&self, n: u64) -> u64 {
        let x = match &self.ties {
            Some(state) => {
                let next = xorshift(state.load(Ordering::Relaxed));
                state.store(next, Ordering::Relaxed);
                next
            }
            None => RNG.with(|r| {
                let next = xorshift(r.get());
                r.set(next);
                next
            }),
        };
        // The high half of a 64x64-bit product is uniform in `0..n` to within n / 2^64, and
        // costs a multiply where `%` costs a division.
        ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) as u128 * n as u128) >> 64) as u64
    }
}

/// What a decision picked: the index in the caller's list, whether it followed a cached
/// prefix, and the prompt chars the pick is expected to prefill.
struct Decision {
    index: usize,
    hit: bool,
    prefill: usize,
    /// The estimated-TTFT rule's estimate for the pick.
    estimate: Option<Estimate>,
}

impl Shared {
    /// The miss rule's pick among `list` (every eligible worker, its load read once), and
    /// whether the loads are imbalanced (`None` for an empty list).
    fn least(&self, list: &[Candidate]) -> Option<(Candidate, bool)> {
        let (mut min, mut max, mut ties) = (usize::MAX, 0, 0u64);
        let mut first_least = None;
        for c in list.iter() {
            max = max.max(c.load);
            if c.load < min {
                (min, ties, first_least) = (c.load, 1, Some(*c));
            } else if c.load == min {
                ties += 1;
            }
        }
        let least = match self.miss_rule {
            // One draw picks among the tied least loaded, uniformly. A draw per tie (reservoir
            // sampling) cost a 64-worker fleet at rest 63 draws per request.
            MissRule::LeastLoaded => {
                let pick = self.draw(ties);
                list.iter()
                    .filter(|c| c.load == min)
                    .nth(pick as usize)
                    .copied()?
            }
            MissRule::SmallestTree => first_least?,
        };
        Some((least, self.config.is_imbalanced(max, min)))
    }

    /// The rule: over the eligible `candidates`, pick by load when imbalanced, else by the
    /// selection rule (`rules.rs`), falling back to the miss rule; record `key` for the pick in
    /// `tree` in the same descent.
    ///
    /// Each candidate's load was read once, into `list`.
    fn decide<K: KeyUnit>(
        &self,
        tree: &KeyedTree<K>,
        list: &mut [Candidate],
        key: &K::Key,
    ) -> Option<Decision> {
        let (least, imbalanced) = self.least(list)?;
        let (mut chosen, mut hit) = (least, false);
        let mut total = 0;
        tree.match_and_insert(key, |counts, holders| {
            total = counts.total;
            if !imbalanced {
                (chosen, hit) = self
                    .rules
                    .choose(list, least, counts, holders, |n| self.draw(n));
            }
            Some(chosen.tenant)
        });
        if let Some(stats) = self.budget.after_insert(tree) {
            self.record(stats);
        }
        Some(self.decided(chosen, hit, imbalanced, total))
    }

    /// The rule for block hashes in precise and hybrid mode: each candidate's match is its
    /// overlap in the KV event index, or (hybrid) the longer prefix the block tree records
    /// for it, if that record is within the hybrid window or the worker publishes no events.
    /// Hybrid records the pick in the block tree in the same descent.
    fn decide_blocks(
        &self,
        model: &ModelState,
        list: &mut [Candidate],
        blocks: &[u64],
    ) -> Option<Decision> {
        let (least, imbalanced) = self.least(list)?;
        list.sort_unstable_by_key(|c| c.tenant);
        if let Some(index) = model.index.get() {
            index.overlaps(blocks, |w, n| fill_one(list, TenantId::from_index(w), n));
        }
        let choose = |list: &mut [Candidate]| {
            let longest = list.iter().map(|c| c.matched).max().unwrap_or(0);
            let counts = MatchCounts {
                matched: longest,
                total: blocks.len(),
            };
            if imbalanced {
                (least, false)
            } else {
                self.rules
                    .choose(list, least, counts, Filled { longest }, |n| self.draw(n))
            }
        };
        let (mut chosen, mut hit) = (least, false);
        if self.mode == RoutingMode::Hybrid {
            let tree = &model.blocks;
            let cutoff = tree.now().saturating_sub(self.hybrid_window_ms);
            tree.match_and_insert(blocks, |_, holders| {
                holders.for_each_prefix_tick(|tenant, units, tick| {
                    if tick >= cutoff || !model.publishes(tenant) {
                        fill_one(list, tenant, units);
                    }
                });
                (chosen, hit) = choose(list);
                Some(chosen.tenant)
            });
            if let Some(stats) = self.budget.after_insert(tree) {
                self.record(stats);
            }
        } else {
            (chosen, hit) = choose(list);
        }
        Some(self.decided(chosen, hit, imbalanced, blocks.len()))
    }

    /// Counts a decision and says what it picked: `chosen`, for a prompt of `total` units.
    fn decided(&self, chosen: Candidate, hit: bool, imbalanced: bool, total: usize) -> Decision {
        self.rules.observe(total);
        let c = &self.counters;
        if imbalanced {
            c.load_balancing_events.add(1);
        } else if hit {
            c.cache_hits.add(1);
        } else {
            c.cache_misses.add(1);
        }
        Decision {
            index: chosen.index,
            hit,
            prefill: total.saturating_sub(chosen.matched),
            estimate: self.rules.estimate(&chosen, total),
        }
    }

    /// Registers workers `select_worker` sees for the first time.
    fn register_unseen(&self, workers: &[Arc<dyn Worker>]) {
        self.tables.update(|t| {
            for w in workers {
                if t.find(w).is_none() {
                    let model = t.model_or_insert(tree_key(w.model_id()), &self.clock);
                    if let Ok(tenant) = model.intern(w.url()) {
                        t.insert(Registered {
                            worker: w.clone(),
                            model,
                            tenant,
                        });
                    }
                }
            }
        });
    }

    /// Registers `worker` for both APIs and clears its removal.
    fn register(&self, worker: &Arc<dyn Worker>) -> Result<(), crate::TreeError> {
        self.tables.update(|t| {
            let model = t.model_or_insert(tree_key(worker.model_id()), &self.clock);
            let tenant = model.intern(worker.url())?;
            model.set_removed(tenant, false);
            let entry = Registered {
                worker: worker.clone(),
                model,
                tenant,
            };
            t.insert(entry.clone());
            t.add_native(entry);
            Ok(())
        })
    }

    /// For a slice that spans several models (the seed's cross-model rule): the model with the
    /// best match ratio if it clears the threshold, else the one with the smallest tree.
    fn pick_model<'g>(
        &self,
        tables: &'g Tables,
        eligible: impl Fn(&ModelState) -> bool,
        text: &str,
    ) -> Option<&'g Arc<ModelState>> {
        let candidates = || tables.models.iter().filter(|m| eligible(m));
        let best = candidates()
            .map(|m| (m.tree.match_counts(text).ratio(), m))
            .fold(None, |best: Option<(f32, _)>, (r, m)| match best {
                Some((b, _)) if b >= r => best,
                _ => Some((r, m)),
            });
        match best {
            Some((r, m)) if r > self.config.cache_threshold => Some(m),
            _ => candidates().min_by_key(|m| m.tree.total_units()),
        }
    }

    fn models(&self) -> Vec<Arc<ModelState>> {
        let guard = epoch::pin();
        self.tables.load(&guard).models.clone()
    }

    /// Every tree over the budget trimmed to the eviction target, in this thread, then what
    /// evictions retired freed as far as no reader holds it.
    fn evict_all(&self) -> EvictionStats {
        let mut total = EvictionStats::default();
        for m in self.models() {
            let trims = [
                self.budget.trim(&m.tree),
                self.budget.trim(&m.tokens),
                self.budget.trim(&m.blocks),
            ];
            for stats in trims.into_iter().flatten() {
                self.record(stats);
                total.add(stats);
            }
        }
        crate::tree::collect_retired();
        total
    }

    fn record(&self, s: EvictionStats) {
        let c = &self.counters;
        c.evicted_chars.fetch_add(s.units_freed, Ordering::Relaxed);
        c.evicted_nodes
            .fetch_add(s.nodes_removed, Ordering::Relaxed);
        // Last, with Release: a snapshot that sees this eviction counted sees its effects.
        c.eviction_passes.fetch_add(1, Ordering::Release);
    }
}

impl Housekeeper for Shared {
    fn tick(&self) {
        self.evict_all();
    }
}

impl CacheAwarePolicy {
    /// The policy with the default configuration (starts the evictor thread).
    pub fn new() -> Self {
        Self::with_config(CacheAwareConfig::default())
    }

    /// The seed's constructor. Panics, with the message of [`ConfigError`], if `config` is
    /// invalid; use [`CacheAwarePolicy::try_with_config`] to get the error instead.
    pub fn with_config(config: CacheAwareConfig) -> Self {
        Self::try_with_config(config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The policy, or why `config` cannot be used.
    pub fn try_with_config(config: CacheAwareConfig) -> Result<Self, ConfigError> {
        Self::builder()
            .config(config)
            .selection(SelectionRule::Threshold)
            .build()
    }

    /// A builder for options beyond the seed's config.
    pub fn builder() -> CacheAwarePolicyBuilder {
        CacheAwarePolicyBuilder::default()
    }

    /// The configuration in use.
    pub fn config(&self) -> &CacheAwareConfig {
        &self.shared.config
    }

    // ----- seed API -----

    /// Registers `workers` (each in its model's tree); workers removed before are routable
    /// again. Past 16,384 workers in one model, the extra ones are skipped.
    pub fn init_workers(&self, workers: &[Arc<dyn Worker>]) {
        for w in workers {
            let _ = self.shared.register(w);
        }
    }

    /// Adds one worker's URL to its model's tree (routable again if it was removed).
    pub fn add_worker(&self, worker: &dyn Worker) {
        self.add_worker_by_url(worker.url(), worker.model_id());
    }

    /// Adds `url` to the tree of `model_id` (`""`/`"unknown"`: the default model).
    pub fn add_worker_by_url(&self, url: &str, model_id: &str) {
        self.shared.tables.update(|t| {
            let model = t.model_or_insert(tree_key(model_id), &self.shared.clock);
            if let Ok(tenant) = model.intern(url) {
                model.set_removed(tenant, false);
            }
        });
    }

    /// Removes a worker from its model's tree; it is not routed to until added again.
    /// Unknown workers and removing twice are no-ops.
    pub fn remove_worker(&self, worker: &dyn Worker) {
        self.remove(worker.url(), Some(tree_key(worker.model_id())));
    }

    /// Removes `url` from every model's tree.
    pub fn remove_worker_by_url(&self, url: &str) {
        self.remove(url, None);
    }

    fn remove(&self, url: &str, model: Option<&str>) {
        self.shared.tables.update(|t| {
            let models: Vec<Arc<ModelState>> = t
                .models
                .iter()
                .filter(|m| model.is_none_or(|name| &*m.name == name))
                .cloned()
                .collect();
            for m in models {
                if let Some(tenant) = m.tree.lookup_tenant(url) {
                    m.set_removed(tenant, true);
                    m.remove_tenant(tenant);
                    t.forget(url, Some(&m));
                }
            }
        });
    }

    /// The seed's eviction: every worker over `max_size` chars, in every tree, loses its least
    /// recently used leaves until it is within the limit.
    pub fn evict_cache(&self, max_size: usize) {
        let models = {
            let guard = epoch::pin();
            self.shared.tables.load(&guard).models.clone()
        };
        let mut total = EvictionStats::default();
        for m in models {
            total.add(m.tree.evict_tenants_over(max_size));
            total.add(m.tokens.evict_tenants_over(max_size));
            total.add(m.blocks.evict_tenants_over(max_size));
        }
        self.shared.record(total);
    }

    // ----- native API -----

    /// Registers a worker for [`CacheAwarePolicy::route`] (and the seed API); routable again if
    /// it was removed.
    pub fn register_worker(&self, worker: Arc<dyn Worker>) -> Result<(), crate::TreeError> {
        self.shared.register(&worker)
    }

    /// Routes a request for `model` (`""`/`"unknown"`: the default model) with prompt `text`
    /// among the registered workers: one lock-free descent, no allocation. The ticket holds one
    /// unit of the worker's load until it is dropped.
    pub fn route(&self, model: &str, text: &str) -> Result<LoadTicket, RouteError> {
        self.route_keyed(model, |shared, m, list| {
            shared.decide::<Text>(&m.tree, list, text)
        })
    }

    /// [`CacheAwarePolicy::route`] for a prompt already tokenized: matched and recorded in the
    /// model's token tree, sizes and prefill estimates in tokens.
    ///
    /// Each key unit has its own tree per model, so route a model's requests by one kind of key;
    /// `max_tree_size` bounds each tree in its own units, and the estimated-TTFT rule fits its
    /// per-unit prefill cost to whatever units it is fed.
    pub fn route_tokens(&self, model: &str, tokens: &[u32]) -> Result<LoadTicket, RouteError> {
        self.route_keyed(model, |shared, m, list| {
            shared.decide::<Tokens>(&m.tokens, list, tokens)
        })
    }

    /// [`CacheAwarePolicy::route`] for a prompt given as its chained KV-block hashes (see
    /// [`CacheAwarePolicy::route_tokens`] on units): one unit per block.
    ///
    /// In precise and hybrid mode ([`CacheAwarePolicyBuilder::mode`]) the blocks are matched
    /// against the workers' KV cache events ([`CacheAwarePolicy::apply_kv_event`]), so they
    /// must be the engines' own block hashes, folded as the events' are
    /// ([`crate::fold_hash`]).
    pub fn route_blocks(&self, model: &str, blocks: &[u64]) -> Result<LoadTicket, RouteError> {
        if self.shared.mode == RoutingMode::Approximate {
            self.route_keyed(model, |shared, m, list| {
                shared.decide::<Blocks>(&m.blocks, list, blocks)
            })
        } else {
            self.route_keyed(model, |shared, m, list| {
                shared.decide_blocks(m, list, blocks)
            })
        }
    }

    /// Applies one KV cache event that the worker at `worker_url` of `model` published
    /// (`""`/`"unknown"`: the default model). Events of one worker must be applied in the
    /// order it published them; see [`crate::KvIndex`].
    pub fn apply_kv_event(
        &self,
        model: &str,
        worker_url: &str,
        event: &KvEvent,
    ) -> Result<(), IndexError> {
        let name = tree_key(model);
        let guard = epoch::pin();
        let tables = self.shared.tables.load(&guard);
        let m = tables
            .model(name)
            .ok_or_else(|| IndexError::UnknownModel(name.to_string()))?;
        let tenant = m
            .tree
            .lookup_tenant(worker_url)
            .ok_or_else(|| IndexError::UnknownWorker {
                model: name.to_string(),
                url: worker_url.to_string(),
            })?;
        m.index(self.shared.index_workers)?
            .apply(tenant.index(), event)?;
        m.set_publishes(tenant);
        Ok(())
    }

    /// Applies another replica's event: a routed request's block keys are recorded for its
    /// worker in the model's block tree (as if this replica had routed it: `route_blocks` then
    /// finds them), a work snapshot is summed with the other replicas' latest into the
    /// worker's peer work (`Worker::set_peer_work`). Replicas must register the same workers.
    pub fn apply_replica(&self, message: &ReplicaMessage) -> Result<(), SyncError> {
        let (model, worker) = match &message.event {
            ReplicaEvent::Routed { model, worker, .. }
            | ReplicaEvent::Work { model, worker, .. } => (tree_key(model), worker.as_str()),
        };
        let guard = epoch::pin();
        let tables = self.shared.tables.load(&guard);
        let m = tables
            .model(model)
            .ok_or_else(|| SyncError::UnknownModel(model.to_string()))?;
        let unknown = || SyncError::UnknownWorker {
            model: model.to_string(),
            url: worker.to_string(),
        };
        let tenant = m.tree.lookup_tenant(worker).ok_or_else(unknown)?;
        match &message.event {
            ReplicaEvent::Routed { keys, .. } => {
                m.blocks.insert_for(keys, tenant).map_err(|_| unknown())?;
                if let Some(stats) = self.shared.budget.after_insert(&m.blocks) {
                    self.shared.record(stats);
                }
            }
            ReplicaEvent::Work { work, .. } => {
                let sum = self
                    .shared
                    .peer_work
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(&message.origin, model, worker, *work);
                let list = tables.native_of(m);
                let r = list
                    .iter()
                    .find(|r| r.tenant == tenant)
                    .ok_or_else(unknown)?;
                r.worker.set_peer_work(sum);
            }
        }
        Ok(())
    }

    fn route_keyed(
        &self,
        model: &str,
        decide: impl FnOnce(&Shared, &ModelState, &mut [Candidate]) -> Option<Decision>,
    ) -> Result<LoadTicket, RouteError> {
        let name = tree_key(model);
        let guard = epoch::pin();
        let tables = self.shared.tables.load(&guard);
        let Some(m) = tables.model(name) else {
            return Err(RouteError::UnknownModel(name.to_string()));
        };
        let list = tables.native_of(m);
        let mut snapshot = Snapshot::new();
        let with_work = self.shared.rules.reads_work();
        for (i, r) in list.iter().enumerate() {
            if r.is_eligible() {
                snapshot.push(Candidate::new(r.tenant, i, &*r.worker, with_work));
            }
        }
        let Some(d) = decide(&self.shared, m, snapshot.as_mut_slice()) else {
            self.shared.counters.no_worker.add(1);
            return Err(RouteError::NoHealthyWorker(name.to_string()));
        };
        let worker = &list[d.index].worker;
        worker.increment_processed();
        let ticket = LoadTicket::new(worker.clone(), d.index, d.hit, d.prefill);
        Ok(match d.estimate {
            Some(e) => ticket.observed_by(Observer {
                model: self.shared.rules.ttft_model().clone(),
                routed_at: Instant::now(),
                prefill_chars: e.prefill_chars,
                decoding: e.decoding,
                estimate_ns: e.ns,
            }),
            None => ticket,
        })
    }

    /// Eviction now, as the evictor thread runs it on each tick: every model tree over
    /// `max_tree_size` is trimmed, stalest leaves first, to 63/64 of it, and what evictions
    /// retired is freed in this thread as far as no reader still holds it. Requests already
    /// keep their trees within budget; this is for a caller that runs no evictor
    /// (`eviction_interval_secs = 0`), or wants the memory back now.
    pub fn run_eviction(&self) -> EvictionStats {
        self.shared.evict_all()
    }

    /// The counters, per-worker load and tree sizes at this moment.
    pub fn metrics(&self) -> MetricsSnapshot {
        let c = &self.shared.counters;
        // First, with Acquire (pairs with `record`): everything the counted evictions did (tree
        // sizes, evicted counts) is visible to the loads below.
        let eviction_passes = c.eviction_passes.load(Ordering::Acquire);
        let guard = epoch::pin();
        let tables = self.shared.tables.load(&guard);
        let mut workers: Vec<WorkerStats> = Vec::new();
        for r in &tables.workers {
            // Removed workers stay in the lookup table (a request racing the removal may have
            // re-registered them there) but are not routable, so they are not reported.
            if r.model.is_removed(r.tenant) {
                continue;
            }
            if workers
                .iter()
                .any(|s| s.url == r.worker.url() && s.model == *r.model.name)
            {
                continue;
            }
            workers.push(WorkerStats {
                url: r.worker.url().to_string(),
                model: r.model.name.to_string(),
                in_flight: r.worker.load(),
                routed: r.worker.processed_requests(),
                healthy: r.worker.is_healthy(),
                cached_chars: r.model.tree.tenant_units(r.tenant),
                queued_prefill_chars: r.worker.work().map_or(0, |w| w.queued_prefill()),
                decoding: r.worker.work().map_or(0, |w| w.decoding()),
            });
        }
        workers.sort_by(|a, b| (&a.model, &a.url).cmp(&(&b.model, &b.url)));
        MetricsSnapshot {
            cache_hits: c.cache_hits.get(),
            cache_misses: c.cache_misses.get(),
            load_balancing_events: c.load_balancing_events.get(),
            no_worker: c.no_worker.get(),
            eviction_passes,
            evicted_chars: c.evicted_chars.load(Ordering::Relaxed),
            evicted_nodes: c.evicted_nodes.load(Ordering::Relaxed),
            tree_chars: tables
                .models
                .iter()
                .map(|m| (m.name.to_string(), m.tree.total_units()))
                .collect(),
            workers,
        }
    }
}

/// Which models a slice's eligible workers belong to.
#[derive(Clone, Copy)]
enum Models<'g> {
    /// No worker is eligible.
    None,
    /// Every eligible worker is of this model.
    One(&'g Arc<ModelState>),
    /// The eligible workers span several models.
    Several,
}

/// Pushes into `out` every eligible worker of the slice (of model `only`, if given), with its
/// index and load, in one pass of one lookup each; says which models they belong to and
/// whether some worker has no table entry yet.
fn gather<'g>(
    tables: &'g Tables,
    workers: &[Arc<dyn Worker>],
    only: Option<&ModelState>,
    out: &mut Snapshot,
) -> (Models<'g>, bool) {
    let mut unseen = false;
    let mut models = Models::None;
    // With one model in the tables (the usual fleet) every worker is of it: no compare each.
    let sole = match tables.models.as_slice() {
        [m] => Some(m),
        _ => None,
    };
    for (index, w) in workers.iter().enumerate() {
        let Some(r) = tables.find_at(index, w) else {
            unseen = true;
            continue;
        };
        // `w` and `r.worker` are the same worker (the table is keyed by its address).
        if !r.is_eligible_through(&**w) || only.is_some_and(|m| !std::ptr::eq(&*r.model, m)) {
            continue;
        }
        match (models, sole) {
            (Models::None, _) => models = Models::One(&r.model),
            (Models::One(m), None) if !Arc::ptr_eq(m, &r.model) => models = Models::Several,
            _ => {}
        }
        // The seed API hands out no tickets, so no work is ever counted for its requests.
        out.push(Candidate::new(r.tenant, index, &**w, false));
    }
    (models, unseen)
}

impl LoadBalancingPolicy for CacheAwarePolicy {
    /// Workers seen for the first time are registered in their model's tree. Unhealthy and
    /// removed workers are never returned; `None` when no other worker is left. `None` text is
    /// routed like an empty one (a miss).
    fn select_worker(
        &self,
        workers: &[Arc<dyn Worker>],
        request_text: Option<&str>,
    ) -> Option<usize> {
        let shared = &self.shared;
        let guard = epoch::pin();
        let mut tables = shared.tables.load(&guard);
        let mut snapshot = Snapshot::new();
        let (mut models, unseen) = gather(tables, workers, None, &mut snapshot);
        if unseen {
            // First sight of some worker: register it, then gather against the new tables.
            shared.register_unseen(workers);
            tables = shared.tables.load(&guard);
            snapshot.clear();
            models = gather(tables, workers, None, &mut snapshot).0;
        }
        let text = request_text.unwrap_or("");
        let model = match models {
            Models::One(m) => Some(m),
            Models::Several => {
                // Rare (a slice that spans models): pick one, then gather only its workers.
                let eligible = |m: &ModelState| {
                    workers.iter().any(|w| {
                        tables
                            .find(w)
                            .is_some_and(|r| r.is_eligible() && std::ptr::eq(&*r.model, m))
                    })
                };
                let pick = shared.pick_model(tables, eligible, text);
                if let Some(m) = pick {
                    snapshot.clear();
                    gather(tables, workers, Some(m), &mut snapshot);
                }
                pick
            }
            Models::None => None,
        };
        let Some(model) = model else {
            shared.counters.no_worker.add(1);
            return None;
        };
        let index = shared
            .decide(&model.tree, snapshot.as_mut_slice(), text)?
            .index;
        workers[index].increment_processed();
        Some(index)
    }

    fn name(&self) -> &'static str {
        "cache_aware"
    }

    fn needs_request_text(&self) -> bool {
        true
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for CacheAwarePolicy {
    fn drop(&mut self) {
        // The evictor first: it is the only other thread that can be inside the trees.
        drop(self.evictor.take());
        // Then free the trees here and now. Retired versions of the tables still hold the
        // models, and the last of them to be collected would otherwise drop a whole tree inside
        // whichever thread's epoch pin collects it: another request's routing decision.
        let guard = epoch::pin();
        for model in &self.shared.tables.load(&guard).models {
            // SAFETY: `&mut self` is the only handle on the policy and the evictor is joined, so
            // no thread is inside these trees or can enter them; nothing the policy hands out
            // (tickets, snapshots) refers to a tree.
            unsafe {
                model.tree.free_nodes_now();
                model.tokens.free_nodes_now();
                model.blocks.free_nodes_now();
            }
        }
    }
}

impl Default for CacheAwarePolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CacheAwarePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheAwarePolicy")
            .field("config", &self.shared.config)
            .field("miss_rule", &self.shared.miss_rule)
            .field("selection", &self.shared.rules.selection())
            .field("tables", &self.shared.tables)
            .field("evictor", &self.evictor)
            .finish()
    }
}

#[cfg(all(test, not(router_loom)))]
mod tests {
    use super::*;
    use crate::BasicWorkerBuilder;

    fn one_worker_policy(budget: usize, interval: u64) -> (CacheAwarePolicy, Vec<Arc<dyn Worker>>) {
        let policy = CacheAwarePolicy::with_config(CacheAwareConfig {
            max_tree_size: budget,
            eviction_interval_secs: interval,
            ..CacheAwareConfig::default()
        });
        let workers: Vec<Arc<dyn Worker>> =
            vec![Arc::new(BasicWorkerBuilder::new("http://w0:8000").build())];
        (policy, workers)
    }

    /// The request that takes a tree over its budget brings it back under before it returns:
    /// no thread to wait for, and the oldest text goes first.
    #[test]
    fn a_request_that_crosses_the_budget_trims_the_tree_itself() {
        let (policy, workers) = one_worker_policy(1_000, 3600);
        for (i, c) in ["a", "b", "c"].iter().enumerate() {
            policy.select_worker(&workers, Some(&c.repeat(400)));
            let m = policy.metrics();
            assert!(m.tree_chars[0].1 <= 1_000, "after request {i}: {m:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
        let m = policy.metrics();
        assert_eq!((m.eviction_passes, m.evicted_chars), (1, 400), "{m:?}");
        let tree = &policy.shared.models()[0].tree;
        assert_eq!(
            tree.match_counts(&"a".repeat(400)).matched,
            0,
            "oldest went"
        );
        assert_eq!(tree.match_counts(&"c".repeat(400)).matched, 400);
    }

    /// With `eviction_interval_secs = 0` (the seed's "no eviction"), requests leave the tree
    /// as it is, and `run_eviction` trims it on demand.
    #[test]
    fn no_interval_no_eviction_until_asked() {
        let (policy, workers) = one_worker_policy(1_000, 0);
        for c in ["a", "b", "c"] {
            policy.select_worker(&workers, Some(&c.repeat(400)));
        }
        assert_eq!(policy.metrics().tree_chars[0].1, 1_200);
        let stats = policy.run_eviction();
        assert_eq!(stats.units_freed, 400);
        assert_eq!(policy.metrics().tree_chars[0].1, 800);
    }
}
