//! The concurrent, multi-tenant, approximate radix tree, generic over its key unit.
//!
//! `KeyedTree<K>` is the public front (`Tree` for text, `TokenTree` for token ids, `BlockTree`
//! for block hashes); `Engine<K>` holds the state the walks share. Module map:
//! - `key.rs`: the key units (chars, tokens, blocks) and byte-level matching;
//! - `label.rs`: immutable edge labels;
//! - `tenants.rs`: per-node tenant slots (which tenants hold a node, and when they last used it);
//! - `children.rs`: copy-on-write child arrays;
//! - `node.rs`: nodes and the replace protocol (split, compact, unlink);
//! - `walk.rs`: the match descent and the insert walk;
//! - `evict.rs`: the budget's eviction, a best-first descent to the stalest leaves whose cost
//!   is what it evicts;
//! - `maintain.rs`: the seed's per-tenant eviction, tenant removal and whole-tree reports.
//!
//! The tree-wide unit total is one atomic on its own cache line. It moves together with tenant
//! counts, right after the slot CAS that attaches or detaches a tenant (see `tenant.rs`), and is
//! exact at rest. Unlike the tenant counts it publishes: every change is a `Release` RMW and
//! every read `Acquire`, so a thread that reads the tree over its budget sees the nodes and
//! attaches that put it there (all RMWs, so each change heads a release sequence the later ones
//! continue). An eviction started on that read can then remove them: with a `Relaxed` total, a
//! loom model once found an eviction that read the total over budget, saw none of the insert
//! that made it so, and evicted nothing. On x86 both cost what `Relaxed` does.

mod children;
mod evict;
mod key;
mod label;
mod maintain;
mod node;
mod tenants;
mod walk;

use crate::clock::Clock;
use crate::constants::{DEFAULT_SHARDS, MAX_SHARDS};
use crate::error::TreeError;
use crate::sync::{AtomicUsize, Ordering};
use crate::tenant::{TenantId, TenantRegistry};
use crossbeam_epoch as epoch;
use crossbeam_utils::CachePadded;
use node::Node;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use walk::{Filter, Hint};

pub(crate) use evict::collect_retired;
pub use key::{Blocks, KeyUnit, Text, Tokens};
pub use maintain::EvictionStats;

/// How a [`Tree`] is built.
#[derive(Debug, Clone)]
pub struct TreeConfig {
    /// Independent sub-roots; keys are spread over them by first unit. A power of two in
    /// `1..=4096` (default 32).
    pub shards: usize,
    /// Where last-access ticks come from (default: milliseconds, monotonic).
    pub clock: Clock,
}

impl Default for TreeConfig {
    fn default() -> Self {
        Self {
            shards: DEFAULT_SHARDS,
            clock: Clock::default(),
        }
    }
}

/// What a match found, in the tree's units: chars (Unicode scalar values, as in the seed) for
/// text, tokens for token ids, blocks for block hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchCounts {
    /// Units of the longest prefix of the key present in the tree.
    pub matched: usize,
    /// Units of the whole key.
    pub total: usize,
}

impl MatchCounts {
    /// `matched / total` (0 for an empty key).
    pub fn ratio(&self) -> f32 {
        if self.total == 0 {
            0.0
        } else {
            self.matched as f32 / self.total as f32
        }
    }
}

/// The tenants holding the deepest node a match reached, as seen during the match.
pub struct Holders<'a> {
    slots: &'a [crate::sync::AtomicU64],
    path: &'a [walk::Step],
}

impl<'a> Holders<'a> {
    /// For every tenant holding a node on the matched path: the units of the key matched
    /// through the deepest such node it was found on, deepest nodes first. A tenant is
    /// reported once per path node that holds it; keep the largest. (Paths deeper than the 64
    /// steps a match remembers report only their first 64 nodes.)
    pub fn for_each_prefix(&self, mut f: impl FnMut(TenantId, usize)) {
        for step in self.path.iter().rev() {
            // SAFETY: steps point at nodes loaded under the guard that outlives `'a`.
            let slots = unsafe { &(*step.node).slots };
            for (id, _) in tenants::live(slots) {
                f(id, step.units_through);
            }
        }
    }

    /// [`Holders::for_each_prefix`] with the tick the tenant last used each node at.
    pub(crate) fn for_each_prefix_tick(&self, mut f: impl FnMut(TenantId, usize, u64)) {
        for step in self.path.iter().rev() {
            // SAFETY: steps point at nodes loaded under the guard that outlives `'a`.
            let slots = unsafe { &(*step.node).slots };
            for (id, tick) in tenants::live(slots) {
                f(id, step.units_through, tick);
            }
        }
    }

    /// The live tenants, oldest attachment first.
    pub fn iter(&self) -> impl Iterator<Item = TenantId> + 'a {
        tenants::live(self.slots).map(|(id, _)| id)
    }

    /// Whether no tenant holds the matched node (or nothing matched).
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

impl fmt::Debug for Holders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The result of [`Tree::match_and_insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchOutcome {
    /// What matched before the insert.
    pub counts: MatchCounts,
    /// The tenant the chooser picked (and the key was recorded for), if any.
    pub tenant: Option<TenantId>,
}

pub(crate) struct Engine<K> {
    roots: Box<[CachePadded<Node>]>,
    shard_shift: u32,
    registry: TenantRegistry,
    total: CachePadded<AtomicUsize>,
    clock: Clock,
    unit: PhantomData<K>,
}

impl<K: KeyUnit> Engine<K> {
    fn root_for(&self, key: &[u8]) -> &Node {
        let index = if self.roots.len() == 1 || key.is_empty() {
            0
        } else {
            // Chars and tokens fit 32 bits; a block hash folds its halves.
            let first = K::first(key, 0);
            let folded = (first ^ (first >> 32)) as u32;
            (folded.wrapping_mul(0x9E37_79B1) >> self.shard_shift) as usize
        };
        &self.roots[index]
    }

    fn counted_attach(&self, id: TenantId, units: usize) {
        self.registry.add_units(id, units);
        self.total.fetch_add(units, Ordering::Release);
        self.registry.set_live(id, true);
    }

    fn counted_detach(&self, id: TenantId, units: usize) {
        self.registry.sub_units(id, units);
        self.total.fetch_sub(units, Ordering::Release);
    }
}

/// A concurrent radix tree mapping key prefixes to the tenants (workers) that were sent them,
/// over the key unit `K`: [`Tree`] for text, [`TokenTree`] for token ids, [`BlockTree`] for
/// block hashes. One engine serves all three; sizes and match counts are in units of `K`.
///
/// Every method takes `&self` and may be called from any number of threads at once: matches
/// take no lock and never wait; inserts, eviction and tenant removal change the tree with
/// compare-and-swap and never stop one another. Memory of removed nodes is reclaimed through
/// crossbeam-epoch.
///
/// ```
/// use cache_aware_router::TokenTree;
///
/// let tree = TokenTree::new();
/// let w1 = tree.tenant_id("http://w1:8000").unwrap();
/// tree.insert_for(&[1, 2, 3, 4], w1).unwrap();
/// let (counts, holder) = tree.best_match(&[1, 2, 3, 9]);
/// assert_eq!((counts.matched, counts.total, holder), (3, 4, Some(w1)));
/// assert_eq!(tree.tenant_units(w1), 4);
/// ```
pub struct KeyedTree<K: KeyUnit> {
    engine: Engine<K>,
}

/// A tree over text, compared by chars (Unicode scalar values) as in the seed: a split never
/// cuts a char, and sizes are char counts. It keeps the seed's whole API.
///
/// ```
/// use cache_aware_router::Tree;
///
/// let tree = Tree::new();
/// tree.insert("hello world", "http://w1:8000");
/// tree.insert("hello there", "http://w2:8000");
/// let (matched, tenant) = tree.prefix_match("hello world, again");
/// assert_eq!((matched.as_str(), tenant.as_str()), ("hello world", "http://w1:8000"));
/// assert_eq!(tree.prefix_match_tenant("hello there", "http://w1:8000"), "hello ");
/// assert_eq!(tree.get_tenant_char_count()["http://w2:8000"], 11);
/// ```
pub type Tree = KeyedTree<Text>;

/// A tree over token ids (`&[u32]`), counted in tokens.
pub type TokenTree = KeyedTree<Tokens>;

/// A tree over block hashes (`&[u64]`), one unit per KV block.
pub type BlockTree = KeyedTree<Blocks>;

impl<K: KeyUnit> KeyedTree<K> {
    /// An empty tree with the default configuration.
    pub fn new() -> Self {
        Self::with_config(TreeConfig::default()).expect("the default configuration is valid")
    }

    /// An empty tree; fails if `config.shards` is not a power of two in `1..=4096`.
    pub fn with_config(config: TreeConfig) -> Result<Self, TreeError> {
        let n = config.shards;
        if n == 0 || n > MAX_SHARDS || !n.is_power_of_two() {
            return Err(TreeError::InvalidShards(n));
        }
        Ok(Self {
            engine: Engine {
                roots: (0..n).map(|_| CachePadded::new(Node::root())).collect(),
                shard_shift: 32 - n.trailing_zeros(),
                registry: TenantRegistry::new(),
                total: CachePadded::new(AtomicUsize::new(0)),
                clock: config.clock,
                unit: PhantomData,
            },
        })
    }

    // ----- native API -----

    /// The id of `tenant`, interning it on first use (and marking it present).
    pub fn tenant_id(&self, tenant: &str) -> Result<TenantId, TreeError> {
        let id = self.engine.registry.intern(tenant)?;
        self.engine.registry.set_live(id, true);
        Ok(id)
    }

    /// The id of `tenant` if this tree has seen it.
    pub fn lookup_tenant(&self, tenant: &str) -> Option<TenantId> {
        self.engine.registry.lookup(tenant)
    }

    /// The name `id` was interned from ("" for an id this tree never issued).
    pub fn tenant_name(&self, id: TenantId) -> &str {
        self.engine.registry.name(id)
    }

    /// One descent: matches `key`, lets `choose` pick a tenant from what matched, and records
    /// the key for that tenant. The match takes no lock and allocates nothing; the insert
    /// allocates only the new leaf (if any) and a new child array where it adds one.
    ///
    /// `choose` sees the match counts and the tenants holding the deepest matched node; returning
    /// `None` records nothing. An id from another tree is ignored (nothing is recorded).
    pub fn match_and_insert<F>(&self, key: &K::Key, choose: F) -> MatchOutcome
    where
        F: FnOnce(MatchCounts, Holders<'_>) -> Option<TenantId>,
    {
        let bytes = K::bytes(key);
        let guard = epoch::pin();
        let e = &self.engine;
        let d = e.descend(bytes, Filter::Any, &guard);
        let tail = K::count(&bytes[d.matched_bytes..]);
        let counts = MatchCounts {
            matched: d.matched_units,
            total: d.matched_units + tail,
        };
        let holders = Holders {
            slots: deepest_slots(d.deepest, &guard),
            path: d.steps(),
        };
        let tenant = choose(counts, holders).filter(|id| e.registry.check(*id).is_ok());
        if let Some(id) = tenant {
            let tick = e.clock.now();
            e.registry.set_live(id, true);
            let hint = Hint {
                steps: d.steps(),
                tail: Some((d.matched_bytes, tail)),
            };
            e.extend(bytes, id, tick, hint, &guard);
        }
        MatchOutcome { counts, tenant }
    }

    /// Records `key` for tenant `id`.
    pub fn insert_for(&self, key: &K::Key, id: TenantId) -> Result<(), TreeError> {
        self.engine.registry.check(id)?;
        self.engine.registry.set_live(id, true);
        self.record(key, id);
        Ok(())
    }

    /// Records `key` for `id`, an id this tree issued, now.
    fn record(&self, key: &K::Key, id: TenantId) {
        let guard = epoch::pin();
        let now = self.engine.clock.now();
        self.engine
            .extend(K::bytes(key), id, now, Hint::default(), &guard);
    }

    /// Match counts for `key` without recording anything or refreshing any tick.
    pub fn match_counts(&self, key: &K::Key) -> MatchCounts {
        let bytes = K::bytes(key);
        let guard = epoch::pin();
        let d = self.engine.descend(bytes, Filter::Any, &guard);
        MatchCounts {
            matched: d.matched_units,
            total: d.matched_units + K::count(&bytes[d.matched_bytes..]),
        }
    }

    /// The longest prefix of `key` in the tree, and the tenant holding the deepest matched node
    /// longest (`None` if nothing matched); refreshes that tenant's access time along the path.
    pub fn best_match(&self, key: &K::Key) -> (MatchCounts, Option<TenantId>) {
        let bytes = K::bytes(key);
        let guard = epoch::pin();
        let (d, holder) = self.engine.best_match(bytes, &guard);
        let counts = MatchCounts {
            matched: d.matched_units,
            total: d.matched_units + K::count(&bytes[d.matched_bytes..]),
        };
        (counts, holder)
    }

    /// Units of the longest prefix of `key` along nodes that tenant `id` holds; refreshes its
    /// access time on them (the seed's `prefix_match_tenant`, counted).
    pub fn tenant_match(&self, key: &K::Key, id: TenantId) -> usize {
        let guard = epoch::pin();
        let tick = self.engine.clock.now();
        let d = self
            .engine
            .descend(K::bytes(key), Filter::HeldBy(id, tick), &guard);
        d.matched_units
    }

    /// Units stored for all tenants together (a node held by two tenants counts twice): one
    /// atomic load. Exact whenever no insert, eviction or removal is in flight.
    pub fn total_units(&self) -> usize {
        self.engine.total_units()
    }

    /// Units stored for one tenant (0 for an unknown id).
    pub fn tenant_units(&self, id: TenantId) -> usize {
        self.engine.registry.units(id)
    }

    /// Removes tenant `id` from every node; nodes left with no tenant are unlinked.
    pub fn remove_tenant_id(&self, id: TenantId) -> Result<(), TreeError> {
        self.engine.registry.check(id)?;
        self.engine.remove_tenant(id);
        Ok(())
    }

    /// For every tenant over `max_units`, detaches it from its least recently used leaves until
    /// it is within the limit; nodes left with no tenant are unlinked. Runs alongside matches and
    /// inserts without stopping them.
    pub fn evict_tenants_over(&self, max_units: usize) -> EvictionStats {
        self.engine.evict_tenants_over(max_units)
    }

    /// Detaches tenants from the stalest leaves, all tenants together, until the whole tree
    /// holds at most `max_total` units: the per-tree budget. Its cost is what it evicts: it
    /// opens the subtrees used longest ago first (exact LRU order where no node has more than
    /// 16 children, sampled LRU past that) and walks nothing else. What it unlinks is freed
    /// through the epoch once no reader can hold it, about as much of it by this call as it
    /// unlinked. Runs alongside matches and inserts without stopping them.
    pub fn evict_to_total(&self, max_total: usize) -> EvictionStats {
        self.engine.evict_to_total(max_total)
    }

    // ----- seed-compatible API (sizes in units: chars for `Tree`) -----

    /// Records `key` for `tenant`: every node on its path carries the tenant afterwards, and
    /// the tenant's count grows by exactly the units newly attributed to it. An empty key only
    /// registers the tenant (size 0).
    ///
    /// Past 16,384 distinct tenants this call records nothing (it has no way to report it);
    /// use [`KeyedTree::tenant_id`], which returns the error.
    pub fn insert(&self, key: &K::Key, tenant: &str) {
        if let Ok(id) = self.tenant_id(tenant) {
            self.record(key, id);
        }
    }

    /// The seed's eviction: see [`KeyedTree::evict_tenants_over`].
    pub fn evict_tenant_by_size(&self, max_size: usize) {
        self.engine.evict_tenants_over(max_size);
    }

    /// Removes `tenant` from every node; nodes left with no tenant are unlinked. Unknown
    /// tenants, and removing twice, are no-ops.
    pub fn remove_tenant(&self, tenant: &str) {
        if let Some(id) = self.engine.registry.lookup(tenant) {
            self.engine.remove_tenant(id);
        }
    }

    /// Units per present tenant, summed over the nodes that hold it (a walk of the whole tree).
    pub fn get_used_size_per_tenant(&self) -> HashMap<String, usize> {
        self.named(self.engine.used_size_per_tenant())
    }

    /// The present tenant with the fewest units (earliest registered on ties); `"empty"` when
    /// there is none.
    pub fn get_smallest_tenant(&self) -> String {
        let r = &self.engine.registry;
        r.ids()
            .filter(|id| r.is_live(*id))
            .min_by_key(|id| (r.units(*id), *id))
            .map_or_else(|| "empty".to_string(), |id| r.name(id).to_string())
    }

    /// Units per present tenant from the counters (one load each; equals
    /// `get_used_size_per_tenant` at rest).
    pub fn get_tenant_char_count(&self) -> HashMap<String, usize> {
        let r = &self.engine.registry;
        self.named(
            r.ids()
                .filter(|id| r.is_live(*id))
                .map(|id| (id, r.units(id)))
                .collect(),
        )
    }

    fn named(&self, sizes: Vec<(TenantId, usize)>) -> HashMap<String, usize> {
        sizes
            .into_iter()
            .map(|(id, n)| (self.engine.registry.name(id).to_string(), n))
            .collect()
    }

    /// The tree clock's tick now.
    pub(crate) fn now(&self) -> u64 {
        self.engine.clock.now()
    }

    /// Frees every node now, in this thread (the tree is only dropped after this).
    ///
    /// # Safety
    /// No other thread may be inside the tree, or enter it before it is dropped.
    pub(crate) unsafe fn free_nodes_now(&self) {
        // SAFETY: the caller's contract is the engine's.
        unsafe { self.engine.free_nodes() }
    }
}

impl KeyedTree<Text> {
    /// The longest prefix of `text` in the tree, and a tenant holding the deepest matched node
    /// (the one attached there longest); refreshes that tenant's access time along the path.
    ///
    /// When nothing matches, the prefix is `""` and the tenant is the earliest-registered
    /// present tenant; on a tree with no tenants it is `"empty"` (the seed's answer).
    pub fn prefix_match(&self, text: &str) -> (String, String) {
        let guard = epoch::pin();
        let e = &self.engine;
        let (d, holder) = e.best_match(text.as_bytes(), &guard);
        let tenant = match holder {
            Some(id) => Some(id),
            None if d.deepest.is_null() => e.registry.ids().find(|id| e.registry.is_live(*id)),
            None => None,
        };
        let name = tenant.map_or("empty", |id| e.registry.name(id));
        (text[..d.matched_bytes].to_string(), name.to_string())
    }

    /// The longest prefix of `text` along nodes that `tenant` holds; refreshes its access time
    /// on them. `""` for a tenant the tree does not know.
    pub fn prefix_match_tenant(&self, text: &str, tenant: &str) -> String {
        let Some(id) = self.engine.registry.lookup(tenant) else {
            return String::new();
        };
        let guard = epoch::pin();
        let tick = self.engine.clock.now();
        let d = self
            .engine
            .descend(text.as_bytes(), Filter::HeldBy(id, tick), &guard);
        text[..d.matched_bytes].to_string()
    }
}

impl<K: KeyUnit> Engine<K> {
    /// Matches `key` and refreshes, along the path, the tenant holding the deepest matched node
    /// longest; returns the descent and that tenant.
    fn best_match(&self, key: &[u8], guard: &epoch::Guard) -> (walk::Descent, Option<TenantId>) {
        let d = self.descend(key, Filter::Any, guard);
        let holder = tenants::live(deepest_slots(d.deepest, guard))
            .map(|(id, _)| id)
            .next();
        if let Some(id) = holder {
            let tick = self.clock.now();
            if d.complete() {
                for step in d.steps() {
                    // SAFETY: steps point at nodes loaded under `guard`.
                    tenants::refresh(unsafe { &(*step.node).slots }, id, tick);
                }
            } else {
                self.descend(key, Filter::HeldBy(id, tick), guard);
            }
        }
        (d, holder)
    }
}

fn deepest_slots(deepest: *const Node, _guard: &epoch::Guard) -> &tenants::Slots {
    if deepest.is_null() {
        &[]
    } else {
        // SAFETY: `deepest` comes from a descent made under `_guard`, which keeps it allocated.
        unsafe { &(*deepest).slots }
    }
}

impl<K: KeyUnit> Default for KeyedTree<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: KeyUnit> fmt::Debug for KeyedTree<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedTree")
            .field("unit", &std::any::type_name::<K>())
            .field("shards", &self.engine.roots.len())
            .field("total_units", &self.total_units())
            .field("tenants", &self.engine.registry)
            .finish()
    }
}

impl<K: KeyUnit> Drop for KeyedTree<K> {
    fn drop(&mut self) {
        self.engine.free_all();
    }
}
