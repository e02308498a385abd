//! Whole-tree work: the seed's per-tenant eviction, tenant removal, size reports, and freeing
//! the tree.
//!
//! These walk the tree pinned, like a reader, and change it only through the same slot CASes
//! and the replace protocol the insert path uses (see `node.rs`), so they run beside matches
//! and inserts without stopping them. A node they picked may be replaced under them (split by
//! an insert): its slots are then frozen, the detach reports `Frozen`, and the node is skipped;
//! the next call sees its successor. Unlinking re-checks, on the frozen snapshot, that the node
//! has no children and no tenant, so a node an insert just extended is never lost. The budget's
//! eviction does not walk the tree: see `evict.rs`.

use super::children;
use super::evict::is_empty_leaf;
use super::key::KeyUnit;
use super::node::{finish_replace, free_stranded_successor, Intent, Node};
use super::tenants::{self, Detach};
use super::Engine;
use crate::clock::MAX_TICK;
use crate::constants::EVICTION_PASSES;
use crate::sync::Ordering;
use crate::tenant::TenantId;
use crossbeam_epoch::{self as epoch, Guard, Shared};
use std::collections::HashMap;

/// What an eviction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvictionStats {
    /// (node, tenant) pairs detached.
    pub detached: usize,
    /// Chars those detaches freed (summed over tenants).
    pub units_freed: usize,
    /// Nodes unlinked because no tenant held them any more.
    pub nodes_removed: usize,
}

impl EvictionStats {
    /// Adds `other`'s counts to these.
    pub(crate) fn add(&mut self, other: EvictionStats) {
        self.detached += other.detached;
        self.units_freed += other.units_freed;
        self.nodes_removed += other.nodes_removed;
    }
}

/// A node seen by a walk, with its parent's index (`None` for children of a root).
struct Seen {
    node: *const Node,
    parent: Option<usize>,
    root: *const Node,
}

/// A (tenant, node) pair that may be evicted, packed so that ascending order is eviction order:
/// oldest tick first and, among equal ticks, the walk's nodes in post-order (every node after
/// its descendants, subtrees in walk order). An ancestor's tick is never older than a
/// descendant's (every refresh and attach runs down the whole path with one tick), so taking
/// them in this order meets a node's tenant only after every child's. (A refresh that loses a
/// CAS is dropped, which can leave an ancestor older than a child; the ancestor is then skipped
/// while the child holds the tenant, and the next call finds it.)
///
/// Post-order is (last walk index in the node's subtree, walk index descending). Bits: tick
/// (48) | subtree end (32) | inverted walk index (32) | tenant index (16). Walk indexes fit 32
/// bits: 2^32 nodes would take 400 GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate(u128);

impl Candidate {
    fn new(tick: u64, index: usize, id: TenantId) -> Self {
        let inverted = !(index as u32);
        Self(((tick & MAX_TICK) as u128) << 80 | (inverted as u128) << 16 | id.index() as u128)
    }

    fn with_subtree_end(self, end: u32) -> Self {
        Self(self.0 | (end as u128) << 48)
    }

    fn index(self) -> usize {
        !((self.0 >> 16) as u32) as usize
    }

    fn tenant(self) -> TenantId {
        TenantId::from_index((self.0 & 0xFFFF) as usize)
    }
}

/// Every non-root node of a tree, parents before children, seen under `guard`: only
/// `Engine::walk` builds one, so each pointer in `seen` stays valid for `'g`.
struct Walk<'g> {
    seen: Vec<Seen>,
    guard: &'g Guard,
}

impl<'g> Walk<'g> {
    fn len(&self) -> usize {
        self.seen.len()
    }

    fn node(&self, i: usize) -> &'g Node {
        // SAFETY: loaded under `self.guard` (see `Engine::walk`), which outlives `'g`.
        unsafe { &*self.seen[i].node }
    }

    /// Per walk index, the last walk index in that node's subtree. Children come after their
    /// parents in a walk, so going backwards each index's own end is final when it is reached.
    fn subtree_ends(&self) -> Vec<u32> {
        let mut ends: Vec<u32> = (0..self.len()).map(|i| i as u32).collect();
        for i in (0..self.len()).rev() {
            if let Some(p) = self.seen[i].parent {
                ends[p] = ends[p].max(ends[i]);
            }
        }
        ends
    }

    fn parent_of(&self, i: usize) -> &'g Node {
        match self.seen[i].parent {
            Some(p) => self.node(p),
            // SAFETY: a shard root of the engine the walk was made on, which `'g` borrows.
            None => unsafe { &*self.seen[i].root },
        }
    }

    /// Unlinks node `i` if it is an empty leaf. Returns whether it was unlinked.
    fn unlink_if_empty<K: KeyUnit>(&self, i: usize) -> bool {
        let n = self.node(i);
        if !is_empty_leaf(n, self.guard) {
            return false;
        }
        // Claim it, or help whatever intent holds it already (see `evict.rs`).
        n.claim(Intent::Remove);
        let node = Shared::from(self.seen[i].node);
        matches!(
            finish_replace::<K>(self.parent_of(i), node, self.guard),
            Ok(true)
        )
    }
}

impl<K: KeyUnit> Engine<K> {
    pub(crate) fn total_units(&self) -> usize {
        let raw = self.total.load(Ordering::Acquire);
        if raw > isize::MAX as usize {
            0
        } else {
            raw
        }
    }

    /// Every non-root node, parents before children, children in first-char order.
    fn walk<'g>(&'g self, guard: &'g Guard) -> Walk<'g> {
        let mut seen = Vec::new();
        let mut stack: Vec<(*const Node, Option<usize>, *const Node)> = Vec::new();
        for root in self.roots.iter() {
            push_children(root, None, &**root, &mut stack, guard);
            while let Some((node, parent, root)) = stack.pop() {
                let index = seen.len();
                seen.push(Seen { node, parent, root });
                // SAFETY: loaded from a child array under `guard`.
                push_children(unsafe { &*node }, Some(index), root, &mut stack, guard);
            }
        }
        Walk { seen, guard }
    }

    /// The seed's eviction: for every tenant over `max_chars`, detaches it from its least
    /// recently used leaves (nodes it holds and no child of which it holds) until it is within
    /// the limit, exactly in LRU order; nodes left with no tenant are unlinked.
    pub(crate) fn evict_tenants_over(&self, max_chars: usize) -> EvictionStats {
        let mut stats = EvictionStats::default();
        for _ in 0..EVICTION_PASSES {
            let over: Vec<TenantId> = self
                .registry
                .ids()
                .filter(|id| self.registry.units(*id) > max_chars)
                .collect();
            if over.is_empty() {
                break;
            }
            let guard = epoch::pin();
            let walk = self.walk(&guard);
            // Empty leaves no candidate reaches (an unlink left half-way), children first.
            for i in (0..walk.len()).rev() {
                if walk.unlink_if_empty::<K>(i) {
                    stats.nodes_removed += 1;
                }
            }
            let ends = walk.subtree_ends();
            for id in over {
                let mut queue: Vec<Candidate> = (0..walk.len())
                    .filter_map(|i| {
                        let tick = tenants::tick(&walk.node(i).slots, id)?;
                        Some(Candidate::new(tick, i, id).with_subtree_end(ends[i]))
                    })
                    .collect();
                queue.sort_unstable();
                for c in queue {
                    if self.registry.units(id) <= max_chars {
                        break;
                    }
                    let (i, id) = (c.index(), c.tenant());
                    let n = walk.node(i);
                    // Not a leaf for `id` while a child holds it (see `Candidate`).
                    if any_child_holds(n, id, &guard)
                        || tenants::detach(&n.slots, id, MAX_TICK) != Detach::Detached
                    {
                        continue;
                    }
                    self.counted_detach(id, n.units);
                    stats.detached += 1;
                    stats.units_freed += n.units;
                    if walk.unlink_if_empty::<K>(i) {
                        stats.nodes_removed += 1;
                    }
                }
            }
        }
        stats
    }

    /// Detaches tenants from the stalest leaves until the tree-wide total is at most
    /// `max_total` (see `evict.rs`).
    pub(crate) fn evict_to_total(&self, max_total: usize) -> EvictionStats {
        self.evict_to(max_total)
    }

    pub(crate) fn remove_tenant(&self, id: TenantId) {
        // Before the walk: an insert racing the removal sets it again (see `tenant.rs`).
        self.registry.set_live(id, false);
        let guard = epoch::pin();
        let walk = self.walk(&guard);
        // Children before parents, so a parent emptied by the removal is already a leaf.
        for i in (0..walk.len()).rev() {
            let n = walk.node(i);
            if tenants::detach(&n.slots, id, MAX_TICK) == Detach::Detached {
                self.counted_detach(id, n.units);
            }
            walk.unlink_if_empty::<K>(i);
        }
    }

    /// Chars per present tenant, summed over the nodes that hold it.
    pub(crate) fn used_size_per_tenant(&self) -> Vec<(TenantId, usize)> {
        let guard = epoch::pin();
        let mut sizes: HashMap<TenantId, usize> = self
            .registry
            .ids()
            .filter(|id| self.registry.is_live(*id))
            .map(|id| (id, 0))
            .collect();
        let walk = self.walk(&guard);
        for i in 0..walk.len() {
            let n = walk.node(i);
            for (id, _) in tenants::live(&n.slots) {
                *sizes.entry(id).or_insert(0) += n.units;
            }
        }
        sizes.into_iter().collect()
    }

    /// Frees every node and array. Called from `Tree::drop`, when no other thread can hold a
    /// reference.
    pub(crate) fn free_all(&mut self) {
        // SAFETY: `&mut self` means no thread is inside the tree, or can enter it.
        unsafe { self.free_nodes() }
    }

    /// Unlinks and frees every node now, leaving empty roots (tenant counts are left as they
    /// were: the tree is only dropped after this).
    ///
    /// # Safety
    /// No other thread may be inside the tree, or enter it before it is dropped.
    pub(crate) unsafe fn free_nodes(&self) {
        // SAFETY: per the contract nothing else can reach any node, so nothing needs protecting.
        let guard = unsafe { epoch::unprotected() };
        for root in self.roots.iter() {
            let array = root.children.swap(Shared::null(), Ordering::Relaxed, guard);
            // SAFETY: unlinked from its root just now, and reachable from nowhere else.
            unsafe { free_subtree(array.with_tag(0), guard) };
        }
    }
}

fn push_children(
    node: &Node,
    parent: Option<usize>,
    root: *const Node,
    stack: &mut Vec<(*const Node, Option<usize>, *const Node)>,
    guard: &Guard,
) {
    let array = node.children.load(Ordering::Acquire, guard).with_tag(0);
    // SAFETY: loaded under `guard`. Pushed in reverse so they pop in first-char order.
    for c in unsafe { children::entries(array, guard) }.iter().rev() {
        stack.push((c.node, parent, root));
    }
}

fn any_child_holds(node: &Node, id: TenantId, guard: &Guard) -> bool {
    let array = node.children.load(Ordering::Acquire, guard).with_tag(0);
    // SAFETY: loaded under `guard`; nodes in it stay allocated while it is held.
    unsafe { children::entries(array, guard) }
        .iter()
        .any(|c| tenants::holds(unsafe { &(*c.node).slots }, id))
}

/// Frees `array`, its nodes and everything below them.
///
/// # Safety
/// Exclusive access: no other thread can reach `array` or anything below it, and nothing else
/// will free them (each node and array is reachable from exactly one parent).
unsafe fn free_subtree(array: Shared<'_, children::ChildArray>, guard: &Guard) {
    if array.is_null() {
        return;
    }
    // SAFETY: per the contract, each entry's node is ours alone to free, once.
    unsafe {
        for c in children::entries(array, guard) {
            let child = Shared::from(c.node);
            let below = child.deref().children.load(Ordering::Relaxed, guard);
            free_subtree(below.with_tag(0), guard);
            free_stranded_successor(child.deref(), guard);
            drop(child.into_owned());
        }
        drop(array.into_owned());
    }
}

#[cfg(all(test, not(router_loom)))]
mod tests {
    use super::*;

    fn id(i: usize) -> TenantId {
        TenantId::from_index(i)
    }

    #[test]
    fn candidates_order_by_tick_then_post_order() {
        // Walk (pre-order): 0 = a, 1 = a's child b, 2 = b's child c, 3 = d (a sibling of a).
        // Post-order: c, b, a, d. Subtree ends: a 2, b 2, c 2, d 3.
        let key = |tick, index, end: u32| Candidate::new(tick, index, id(0)).with_subtree_end(end);
        let (a, b, c, d) = (key(5, 0, 2), key(5, 1, 2), key(5, 2, 2), key(5, 3, 3));
        let mut tied = [d, a, c, b];
        tied.sort_unstable();
        assert_eq!(tied, [c, b, a, d], "equal ticks go in post-order");
        assert!(key(4, 0, 2) < c, "an older tick goes first, wherever it is");
        let packed = Candidate::new(MAX_TICK, 123_456, id(16_383)).with_subtree_end(u32::MAX);
        assert_eq!((packed.index(), packed.tenant()), (123_456, id(16_383)));
    }

    /// A replacement whose parent froze leaves its successor published but not swapped in;
    /// if no thread finishes it before the tree is dropped, the drop frees that successor
    /// (LeakSanitizer, `.ci/sanitizers asan`, reports it otherwise).
    #[test]
    fn dropping_a_tree_frees_a_successor_left_unswapped() {
        let tree = crate::Tree::new();
        tree.insert("abc", "t0");
        tree.insert("abcdef", "t0");
        let guard = epoch::pin();
        let walk = tree.engine.walk(&guard);
        let find = |label: &str| {
            let i = (0..walk.len())
                .find(|&i| walk.node(i).label.bytes() == label.as_bytes())
                .unwrap();
            (walk.node(i), walk.seen[i].node)
        };
        let ((parent, _), (child, child_ptr)) = (find("abc"), find("def"));
        // The parent is being replaced (claimed and frozen) by a thread that stalls.
        assert!(parent.claim(Intent::Compact));
        parent
            .children
            .fetch_or(children::FROZEN_CHILDREN, Ordering::AcqRel, &guard);
        assert!(child.claim(Intent::Compact));
        let stuck = finish_replace::<crate::tree::Text>(parent, Shared::from(child_ptr), &guard);
        assert!(stuck.is_err(), "the parent is frozen");
        drop(guard);
        drop(tree);
    }

    #[test]
    fn evictions_finish_an_unlink_left_half_way() {
        for budget_eviction in [false, true] {
            // Ticks after 0, so the stranded node (no tenant: key 0) is the stalest.
            let clock = crate::ManualClock::new();
            clock.set(5);
            let config = super::super::TreeConfig {
                shards: 32,
                clock: clock.into(),
            };
            let tree = crate::Tree::with_config(config).unwrap();
            tree.insert("abc", "t0");
            tree.insert("xyz", "t1");
            let engine = &tree.engine;
            let t0 = tree.lookup_tenant("t0").unwrap();
            {
                // What an unlink leaves when the parent froze under it: detached and claimed.
                let guard = epoch::pin();
                let walk = engine.walk(&guard);
                let i = (0..walk.len())
                    .find(|&i| walk.node(i).label.bytes() == b"abc")
                    .unwrap();
                let n = walk.node(i);
                assert_eq!(tenants::detach(&n.slots, t0, MAX_TICK), Detach::Detached);
                engine.counted_detach(t0, n.units);
                assert!(n.claim(Intent::Remove));
            }
            assert_eq!(tree.match_counts("abc").matched, 3, "still linked");
            let stats = match budget_eviction {
                true => engine.evict_to_total(0),
                false => engine.evict_tenants_over(0),
            };
            assert_eq!(
                tree.match_counts("abc").matched,
                0,
                "unlinked ({budget_eviction})"
            );
            assert_eq!(stats.nodes_removed, 2, "the stranded node and t1's leaf");
            assert_eq!(tree.total_units(), 0);
        }
    }
}
