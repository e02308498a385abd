//! Per-model routing state: the trees (one per key unit, sharing tenant ids), the KV event
//! index, the registered workers, the removed set and the set of workers that publish events,
//! plus the table that maps a caller's `Arc<dyn Worker>` to its model and tenant id without
//! comparing URLs.
//!
//! The removed and publishing sets are bitsets over tenant ids (`Relaxed`: flags read on their
//! own). A worker
//! removed from a tree stays excluded from routing until it is added again explicitly, even if
//! a caller keeps passing it to `select_worker`.

use crate::clock::Clock;
use crate::constants::MAX_TENANTS;
use crate::error::{IndexError, TreeError};
use crate::index::{KvIndex, KvIndexConfig};
use crate::sync::{AtomicU64, Ordering};
use crate::tenant::TenantId;
use crate::tree::{BlockTree, TokenTree, Tree, TreeConfig};
use crate::worker::Worker;
use std::fmt;
use std::sync::Arc;
use std::sync::OnceLock;

/// The tree key for a worker's model: `""` and `"unknown"` are the default model.
pub(crate) fn tree_key(model_id: &str) -> &str {
    if model_id.is_empty() || model_id == "unknown" {
        "default"
    } else {
        model_id
    }
}

pub(crate) struct ModelState {
    pub(crate) name: Box<str>,
    /// Texts routed with `route` (and the seed API).
    pub(crate) tree: Tree,
    /// Token ids routed with `route_tokens`.
    pub(crate) tokens: TokenTree,
    /// Block hashes routed with `route_blocks`.
    pub(crate) blocks: BlockTree,
    /// What the workers' KV cache events say they hold (built on the first event).
    pub(crate) index: OnceLock<KvIndex>,
    /// Tenants that have published a KV cache event.
    publishes: Box<[AtomicU64]>,
    removed: Box<[AtomicU64]>,
}

impl ModelState {
    /// A model whose trees read `clock`.
    pub(crate) fn new(name: &str, clock: &Clock) -> Self {
        let config = || TreeConfig {
            clock: clock.clone(),
            ..TreeConfig::default()
        };
        let valid = "the default shard count is valid";
        Self {
            name: name.into(),
            tree: Tree::with_config(config()).expect(valid),
            tokens: TokenTree::with_config(config()).expect(valid),
            blocks: BlockTree::with_config(config()).expect(valid),
            index: OnceLock::new(),
            publishes: (0..MAX_TENANTS.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            removed: (0..MAX_TENANTS.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// The id of `url` in all three trees. Ids are issued in interning order, and every intern
    /// goes through here under the tables' writer lock, so the trees issue the same id.
    pub(crate) fn intern(&self, url: &str) -> Result<TenantId, TreeError> {
        let id = self.tree.tenant_id(url)?;
        let same = self.tokens.tenant_id(url)? == id && self.blocks.tenant_id(url)? == id;
        assert!(same, "tenant ids diverged between a model's trees");
        Ok(id)
    }

    /// Removes tenant `id` from all three trees.
    pub(crate) fn remove_tenant(&self, id: TenantId) {
        let _ = self.tree.remove_tenant_id(id);
        let _ = self.tokens.remove_tenant_id(id);
        let _ = self.blocks.remove_tenant_id(id);
    }

    /// The KV event index, built for `max_workers` tenants on first use.
    pub(crate) fn index(&self, max_workers: usize) -> Result<&KvIndex, IndexError> {
        if let Some(index) = self.index.get() {
            return Ok(index);
        }
        let index = KvIndex::with_config(KvIndexConfig {
            max_workers,
            ..KvIndexConfig::default()
        })?;
        Ok(self.index.get_or_init(|| index))
    }

    /// Whether tenant `id` has published a KV cache event.
    pub(crate) fn publishes(&self, id: TenantId) -> bool {
        let (word, bit) = (id.index() / 64, id.index() % 64);
        self.publishes[word].load(Ordering::Relaxed) & (1 << bit) != 0
    }

    pub(crate) fn set_publishes(&self, id: TenantId) {
        let (word, bit) = (id.index() / 64, id.index() % 64);
        if self.publishes[word].load(Ordering::Relaxed) & (1 << bit) == 0 {
            self.publishes[word].fetch_or(1 << bit, Ordering::Relaxed);
        }
    }

    pub(crate) fn is_removed(&self, id: TenantId) -> bool {
        let (word, bit) = (id.index() / 64, id.index() % 64);
        self.removed[word].load(Ordering::Relaxed) & (1 << bit) != 0
    }

    pub(crate) fn set_removed(&self, id: TenantId, removed: bool) {
        let (word, bit) = (id.index() / 64, id.index() % 64);
        if removed {
            self.removed[word].fetch_or(1 << bit, Ordering::Relaxed);
        } else {
            self.removed[word].fetch_and(!(1 << bit), Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for ModelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelState")
            .field("name", &self.name)
            .field("tree", &self.tree)
            .field("tokens", &self.tokens)
            .field("blocks", &self.blocks)
            .finish()
    }
}

/// A worker known to one model's tree.
#[derive(Clone)]
pub(crate) struct Registered {
    pub(crate) worker: Arc<dyn Worker>,
    pub(crate) model: Arc<ModelState>,
    pub(crate) tenant: TenantId,
}

impl Registered {
    /// The address `Arc<dyn Worker>` handles to this worker share: the table's key. Holding the
    /// `Arc` keeps the address from being reused by another worker.
    pub(crate) fn key(worker: &Arc<dyn Worker>) -> usize {
        Arc::as_ptr(worker) as *const () as usize
    }

    pub(crate) fn is_eligible(&self) -> bool {
        self.is_eligible_through(&*self.worker)
    }

    /// `is_eligible`, asking `handle` (this same worker, reached through another `Arc`) for its
    /// health: the caller's handle is already in cache.
    pub(crate) fn is_eligible_through(&self, handle: &dyn Worker) -> bool {
        handle.is_healthy() && !self.model.is_removed(self.tenant)
    }
}

/// Models and workers, copied on write (see `cow.rs`).
#[derive(Clone, Default)]
pub(crate) struct Tables {
    pub(crate) models: Vec<Arc<ModelState>>,
    /// Every worker seen, in first-seen order.
    pub(crate) workers: Vec<Registered>,
    /// Open-addressing index into `workers` by `Registered::key`: `(key, i + 1)`, `(0, 0)` for
    /// empty; a power of two at least twice `workers.len()`, rebuilt whenever `workers` changes
    /// (only registrations do). A lookup is a multiply and, nearly always, one probe that
    /// compares the key in the slot itself.
    index: Box<[(usize, u32)]>,
    /// Workers registered for the native API, per model, in registration order.
    pub(crate) native: Vec<(Arc<ModelState>, Vec<Registered>)>,
}

fn slot_of(key: usize, mask: usize) -> usize {
    // Fibonacci hashing of the address (allocations are 16-aligned: drop the low bits).
    ((key >> 4) as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(32) as usize
        & mask
}

impl Tables {
    pub(crate) fn model(&self, name: &str) -> Option<&Arc<ModelState>> {
        self.models.iter().find(|m| &*m.name == name)
    }

    pub(crate) fn model_or_insert(&mut self, name: &str, clock: &Clock) -> Arc<ModelState> {
        if let Some(m) = self.model(name) {
            return m.clone();
        }
        let m = Arc::new(ModelState::new(name, clock));
        self.models.push(m.clone());
        m
    }

    /// `find`, trying first the entry at `position`: a caller that hands in the fleet it
    /// registered, in the same order, finds every worker with one compare.
    #[inline]
    pub(crate) fn find_at(&self, position: usize, worker: &Arc<dyn Worker>) -> Option<&Registered> {
        match self.workers.get(position) {
            Some(r) if Registered::key(&r.worker) == Registered::key(worker) => Some(r),
            _ => self.find(worker),
        }
    }

    pub(crate) fn find(&self, worker: &Arc<dyn Worker>) -> Option<&Registered> {
        self.position(Registered::key(worker))
            .map(|i| &self.workers[i])
    }

    fn position(&self, key: usize) -> Option<usize> {
        if self.index.is_empty() {
            return None;
        }
        let mask = self.index.len() - 1;
        let mut slot = slot_of(key, mask);
        loop {
            match self.index[slot] {
                (_, 0) => return None,
                (k, i) if k == key => return Some(i as usize - 1),
                _ => slot = (slot + 1) & mask,
            }
        }
    }

    fn reindex(&mut self) {
        let size = (self.workers.len() * 2).next_power_of_two().max(8);
        let mut index = vec![(0, 0u32); size].into_boxed_slice();
        for (i, r) in self.workers.iter().enumerate() {
            let key = Registered::key(&r.worker);
            let mut slot = slot_of(key, size - 1);
            while index[slot].1 != 0 {
                slot = (slot + 1) & (size - 1);
            }
            index[slot] = (key, i as u32 + 1);
        }
        self.index = index;
    }

    pub(crate) fn insert(&mut self, entry: Registered) {
        match self.position(Registered::key(&entry.worker)) {
            Some(i) => self.workers[i] = entry,
            None => {
                self.workers.push(entry);
                self.reindex();
            }
        }
    }

    pub(crate) fn native_of(&self, model: &ModelState) -> &[Registered] {
        self.native
            .iter()
            .find(|(m, _)| std::ptr::eq(&**m, model))
            .map_or(&[], |(_, list)| list)
    }

    pub(crate) fn add_native(&mut self, entry: Registered) {
        let list = match self
            .native
            .iter_mut()
            .position(|(m, _)| Arc::ptr_eq(m, &entry.model))
        {
            Some(i) => &mut self.native[i].1,
            None => {
                self.native.push((entry.model.clone(), Vec::new()));
                &mut self.native.last_mut().expect("just pushed").1
            }
        };
        match list.iter_mut().find(|r| r.tenant == entry.tenant) {
            Some(existing) => *existing = entry,
            None => list.push(entry),
        }
    }

    /// Forgets `url` in `model` (or in every model when `None`).
    pub(crate) fn forget(&mut self, url: &str, model: Option<&ModelState>) {
        let matches = |r: &Registered| {
            r.worker.url() == url && model.is_none_or(|m| std::ptr::eq(&*r.model, m))
        };
        self.workers.retain(|r| !matches(r));
        self.reindex();
        for (_, list) in &mut self.native {
            list.retain(|r| !matches(r));
        }
    }
}

impl fmt::Debug for Tables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tables")
            .field("models", &self.models.len())
            .field("workers", &self.workers.len())
            .finish()
    }
}
