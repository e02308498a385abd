//! The concurrent, multi-tenant, approximate radix tree.
//!
//! `Tree` is the public front; `Engine` holds the state the walks share. Module map:
//! - `label.rs`: immutable edge labels and byte-level matching;
//! - `tenants.rs`: per-node tenant slots (which tenants hold a node, and when they last used it);
//! - `children.rs`: copy-on-write child arrays;
//! - `node.rs`: nodes and the replace protocol (split, compact, unlink);
//! - `walk.rs`: the match descent and the insert walk;
//! - `evict.rs`: the budget's eviction, a best-first descent to the stalest leaves whose cost
//!   is what it evicts;
//! - `maintain.rs`: the seed's per-tenant eviction, tenant removal and whole-tree reports.
//!
//! The tree-wide char total is one atomic on its own cache line. It moves together with tenant
//! counts, right after the slot CAS that attaches or detaches a tenant (see `tenant.rs`), and is
//! exact at rest. Unlike the tenant counts it publishes: every change is a `Release` RMW and
//! every read `Acquire`, so a thread that reads the tree over its budget sees the nodes and
//! attaches that put it there (all RMWs, so each change heads a release sequence the later ones
//! continue). An eviction started on that read can then remove them: with a `Relaxed` total, a
//! loom model once found an eviction that read the total over budget, saw none of the insert
//! that made it so, and evicted nothing. On x86 both cost what `Relaxed` does.

mod children;
mod evict;
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
use walk::{Filter, Hint};

pub(crate) use evict::collect_retired;
pub use maintain::EvictionStats;

/// How a [`Tree`] is built.
#[derive(Debug, Clone)]
pub struct TreeConfig {
    /// Independent sub-roots; texts are spread over them by first char. A power of two in
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

/// What a match found, in chars: counts of Unicode scalar values, as in the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchCounts {
    /// Chars of the longest prefix of the text present in the tree.
    pub matched_chars: usize,
    /// Chars of the whole text.
    pub total_chars: usize,
}

impl MatchCounts {
    /// `matched_chars / total_chars` (0 for an empty text).
    pub fn ratio(&self) -> f32 {
        if self.total_chars == 0 {
            0.0
        } else {
            self.matched_chars as f32 / self.total_chars as f32
        }
    }
}

/// The tenants holding the deepest node a match reached, as seen during the match.
pub struct Holders<'a> {
    slots: &'a [crate::sync::AtomicU64],
    path: &'a [walk::Step],
}

impl<'a> Holders<'a> {
    /// For every tenant holding a node on the matched path: the chars of the text matched
    /// through the deepest such node it was found on, deepest nodes first. A tenant is
    /// reported once per path node that holds it; keep the largest. (Paths deeper than the 64
    /// steps a match remembers report only their first 64 nodes.)
    pub fn for_each_prefix(&self, mut f: impl FnMut(TenantId, usize)) {
        for step in self.path.iter().rev() {
            // SAFETY: steps point at nodes loaded under the guard that outlives `'a`.
            let slots = unsafe { &(*step.node).slots };
            for (id, _) in tenants::live(slots) {
                f(id, step.chars_through);
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
    /// The tenant the chooser picked (and the text was recorded for), if any.
    pub tenant: Option<TenantId>,
}

pub(crate) struct Engine {
    roots: Box<[CachePadded<Node>]>,
    shard_shift: u32,
    registry: TenantRegistry,
    total: CachePadded<AtomicUsize>,
    clock: Clock,
}

impl Engine {
    fn root_for(&self, text: &str) -> &Node {
        let index = if self.roots.len() == 1 || text.is_empty() {
            0
        } else {
            let first = label::first_char(text, 0);
            (first.wrapping_mul(0x9E37_79B1) >> self.shard_shift) as usize
        };
        &self.roots[index]
    }

    fn counted_attach(&self, id: TenantId, chars: usize) {
        self.registry.add_chars(id, chars);
        self.total.fetch_add(chars, Ordering::Release);
        self.registry.set_live(id, true);
    }

    fn counted_detach(&self, id: TenantId, chars: usize) {
        self.registry.sub_chars(id, chars);
        self.total.fetch_sub(chars, Ordering::Release);
    }
}

/// A concurrent radix tree mapping text prefixes to the tenants (workers) that were sent them.
///
/// Every method takes `&self` and may be called from any number of threads at once: matches
/// take no lock and never wait; inserts, eviction and tenant removal change the tree with
/// compare-and-swap and never stop one another. Semantics follow the seed's `Tree`: texts are
/// compared by chars (Unicode scalar values), a split never cuts a char, and sizes are char
/// counts. Memory of removed nodes is reclaimed through crossbeam-epoch.
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
pub struct Tree {
    engine: Engine,
}

impl Tree {
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

    /// One descent: matches `text`, lets `choose` pick a tenant from what matched, and records
    /// the text for that tenant. The match takes no lock and allocates nothing; the insert
    /// allocates only the new leaf (if any) and a new child array where it adds one.
    ///
    /// `choose` sees the match counts and the tenants holding the deepest matched node; returning
    /// `None` records nothing. An id from another tree is ignored (nothing is recorded).
    pub fn match_and_insert<F>(&self, text: &str, choose: F) -> MatchOutcome
    where
        F: FnOnce(MatchCounts, Holders<'_>) -> Option<TenantId>,
    {
        let guard = epoch::pin();
        let e = &self.engine;
        let d = e.descend(text, Filter::Any, &guard);
        let tail_chars = label::char_count(&text[d.matched_bytes..]);
        let counts = MatchCounts {
            matched_chars: d.matched_chars,
            total_chars: d.matched_chars + tail_chars,
        };
        let holders = Holders {
            slots: self.deepest_slots(d.deepest, &guard),
            path: d.steps(),
        };
        let tenant = choose(counts, holders).filter(|id| e.registry.check(*id).is_ok());
        if let Some(id) = tenant {
            let tick = e.clock.now();
            e.registry.set_live(id, true);
            let hint = Hint {
                steps: d.steps(),
                tail: Some((d.matched_bytes, tail_chars)),
            };
            e.extend(text, id, tick, hint, &guard);
        }
        MatchOutcome { counts, tenant }
    }

    /// Records `text` for tenant `id`.
    pub fn insert_for(&self, text: &str, id: TenantId) -> Result<(), TreeError> {
        self.engine.registry.check(id)?;
        let guard = epoch::pin();
        self.engine.registry.set_live(id, true);
        self.engine
            .extend(text, id, self.engine.clock.now(), Hint::default(), &guard);
        Ok(())
    }

    /// Match counts for `text` without recording anything or refreshing any tick.
    pub fn match_counts(&self, text: &str) -> MatchCounts {
        let guard = epoch::pin();
        let d = self.engine.descend(text, Filter::Any, &guard);
        MatchCounts {
            matched_chars: d.matched_chars,
            total_chars: d.matched_chars + label::char_count(&text[d.matched_bytes..]),
        }
    }

    /// Chars stored for all tenants together (a node held by two tenants counts twice): one
    /// atomic load. Exact whenever no insert, eviction or removal is in flight.
    pub fn total_chars(&self) -> usize {
        self.engine.total_chars()
    }

    /// Chars stored for one tenant (0 for an unknown id).
    pub fn tenant_chars(&self, id: TenantId) -> usize {
        self.engine.registry.chars(id)
    }

    /// Removes tenant `id` from every node; nodes left with no tenant are unlinked.
    pub fn remove_tenant_id(&self, id: TenantId) -> Result<(), TreeError> {
        self.engine.registry.check(id)?;
        self.engine.remove_tenant(id);
        Ok(())
    }

    /// For every tenant over `max_chars`, detaches it from its least recently used leaves until
    /// it is within the limit; nodes left with no tenant are unlinked. Runs alongside matches and
    /// inserts without stopping them.
    pub fn evict_tenants_over(&self, max_chars: usize) -> EvictionStats {
        self.engine.evict_tenants_over(max_chars)
    }

    /// Detaches tenants from the stalest leaves, all tenants together, until the whole tree
    /// holds at most `max_total` chars: the per-tree budget. Its cost is what it evicts: it
    /// opens the subtrees used longest ago first (exact LRU order where no node has more than
    /// 16 children, sampled LRU past that) and walks nothing else. What it unlinks is freed
    /// through the epoch once no reader can hold it, about as much of it by this call as it
    /// unlinked. Runs alongside matches and inserts without stopping them.
    pub fn evict_to_total(&self, max_total: usize) -> EvictionStats {
        self.engine.evict_to_total(max_total)
    }

    // ----- seed-compatible API -----

    /// Records `text` for `tenant`: every node on its path carries the tenant afterwards, and
    /// the tenant's char count grows by exactly the chars newly attributed to it. An empty text
    /// only registers the tenant (size 0).
    ///
    /// Past 16,384 distinct tenants this call records nothing (it has no way to report it);
    /// use [`Tree::tenant_id`], which returns the error.
    pub fn insert(&self, text: &str, tenant: &str) {
        if let Ok(id) = self.tenant_id(tenant) {
            let guard = epoch::pin();
            self.engine
                .extend(text, id, self.engine.clock.now(), Hint::default(), &guard);
        }
    }

    /// The longest prefix of `text` in the tree, and a tenant holding the deepest matched node
    /// (the one attached there longest); refreshes that tenant's access time along the path.
    ///
    /// When nothing matches, the prefix is `""` and the tenant is the earliest-registered
    /// present tenant; on a tree with no tenants it is `"empty"` (the seed's answer).
    pub fn prefix_match(&self, text: &str) -> (String, String) {
        let guard = epoch::pin();
        let e = &self.engine;
        let d = e.descend(text, Filter::Any, &guard);
        let holder = tenants::live(self.deepest_slots(d.deepest, &guard))
            .map(|(id, _)| id)
            .next();
        let tenant = match holder {
            Some(id) => {
                let tick = e.clock.now();
                if d.complete() {
                    for step in d.steps() {
                        // SAFETY: steps point at nodes loaded under `guard`.
                        tenants::refresh(unsafe { &(*step.node).slots }, id, tick);
                    }
                } else {
                    e.descend(text, Filter::HeldBy(id, tick), &guard);
                }
                Some(id)
            }
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
        let d = self.engine.descend(text, Filter::HeldBy(id, tick), &guard);
        text[..d.matched_bytes].to_string()
    }

    /// The seed's eviction: see [`Tree::evict_tenants_over`].
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

    /// Chars per present tenant, summed over the nodes that hold it (a walk of the whole tree).
    pub fn get_used_size_per_tenant(&self) -> HashMap<String, usize> {
        self.named(self.engine.used_size_per_tenant())
    }

    /// The present tenant with the fewest chars (earliest registered on ties); `"empty"` when
    /// there is none.
    pub fn get_smallest_tenant(&self) -> String {
        let r = &self.engine.registry;
        r.ids()
            .filter(|id| r.is_live(*id))
            .min_by_key(|id| (r.chars(*id), *id))
            .map_or_else(|| "empty".to_string(), |id| r.name(id).to_string())
    }

    /// Chars per present tenant from the counters (one load each; equals
    /// `get_used_size_per_tenant` at rest).
    pub fn get_tenant_char_count(&self) -> HashMap<String, usize> {
        let r = &self.engine.registry;
        self.named(
            r.ids()
                .filter(|id| r.is_live(*id))
                .map(|id| (id, r.chars(id)))
                .collect(),
        )
    }

    fn named(&self, sizes: Vec<(TenantId, usize)>) -> HashMap<String, usize> {
        sizes
            .into_iter()
            .map(|(id, n)| (self.engine.registry.name(id).to_string(), n))
            .collect()
    }

    /// Frees every node now, in this thread (the tree is only dropped after this).
    ///
    /// # Safety
    /// No other thread may be inside the tree, or enter it before it is dropped.
    pub(crate) unsafe fn free_nodes_now(&self) {
        // SAFETY: the caller's contract is the engine's.
        unsafe { self.engine.free_nodes() }
    }

    fn deepest_slots<'g>(
        &self,
        deepest: *const Node,
        _guard: &'g epoch::Guard,
    ) -> &'g tenants::Slots {
        if deepest.is_null() {
            &[]
        } else {
            // SAFETY: `deepest` comes from a descent made under `_guard`, which keeps it allocated.
            unsafe { &(*deepest).slots }
        }
    }
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tree")
            .field("shards", &self.engine.roots.len())
            .field("total_chars", &self.total_chars())
            .field("tenants", &self.engine.registry)
            .finish()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        self.engine.free_all();
    }
}
