//! Whole-tree work: eviction, tenant removal, size reports, and freeing the tree.
//!
//! These walk the tree pinned, like a reader, and change it only through the same slot CASes
//! and the replace protocol the insert path uses (see `node.rs`), so they run beside matches
//! and inserts without stopping them. A node they picked may be replaced under them (split by
//! an insert): its slots are then frozen, the detach reports `Frozen`, and the node is skipped
//! for this pass; the next pass sees its successor. Unlinking re-checks, on the frozen snapshot,
//! that the node has no children and no tenant, so a node an insert just extended is never lost.

use super::children;
use super::node::{finish_replace, Intent, Node};
use super::tenants::{self, Detach};
use super::Engine;
use crate::constants::EVICTION_PASSES;
use crate::sync::Ordering;
use crate::tenant::TenantId;
use crossbeam_epoch::{self as epoch, Guard, Shared};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// What an eviction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvictionStats {
    /// (node, tenant) pairs detached.
    pub detached: usize,
    /// Chars those detaches freed (summed over tenants).
    pub chars_freed: usize,
    /// Nodes unlinked because no tenant held them any more.
    pub nodes_removed: usize,
}

/// A node seen by a walk, with its parent's index (`None` for children of a root). Raw
/// pointers, so the buffer that holds them can outlive one pass's guard and serve the next (it
/// is cleared first: no pointer is read under a guard other than the one it was loaded under).
struct Seen {
    node: *const Node,
    parent: Option<usize>,
    root: *const Node,
}

/// The buffers an eviction pass works in, all of which grow with the tree. The evictor thread
/// keeps one for its whole life, so in steady state a pass allocates none of them again (what
/// it still allocates is small: the tenant id list, and the child arrays that unlinking
/// rebuilds). Under an insert-heavy load passes run hundreds of times a second, and each used
/// to regrow and free buffers of a few hundred KiB.
#[derive(Default)]
pub(crate) struct EvictionScratch {
    seen: Vec<Seen>,
    stack: Vec<(*const Node, Option<usize>)>,
    lru: LruScratch,
}

/// What `evict_lru` works in.
#[derive(Default)]
struct LruScratch {
    member: Vec<bool>,
    /// The tenants holding some child of the node being looked at.
    held_below: Vec<TenantId>,
    heap: BinaryHeap<Reverse<(u64, usize, TenantId)>>,
}

/// Every non-root node of a tree, seen under `guard`: only `Engine::walk` builds one, so each
/// pointer in `seen` stays valid for `'g`.
struct Walk<'s, 'g> {
    seen: &'s [Seen],
    guard: &'g Guard,
}

impl<'g> Walk<'_, 'g> {
    fn len(&self) -> usize {
        self.seen.len()
    }

    fn node(&self, i: usize) -> &'g Node {
        // SAFETY: loaded under `self.guard` (see `Engine::walk`), which outlives `'g`.
        unsafe { &*self.seen[i].node }
    }

    fn shared(&self, i: usize) -> Shared<'g, Node> {
        Shared::from(self.seen[i].node)
    }

    fn parent_index(&self, i: usize) -> Option<usize> {
        self.seen[i].parent
    }

    fn parent_of(&self, i: usize) -> &'g Node {
        match self.seen[i].parent {
            Some(p) => self.node(p),
            // SAFETY: a shard root of the engine the walk was made on, which `'g` borrows.
            None => unsafe { &*self.seen[i].root },
        }
    }

    /// Unlinks node `i` if it is an empty leaf. Returns whether it was unlinked.
    fn unlink_if_empty(&self, i: usize) -> bool {
        let n = self.node(i);
        let childless = n
            .children
            .load(Ordering::Acquire, self.guard)
            .with_tag(0)
            .is_null();
        if !childless || tenants::has_live(&n.slots) || !n.claim(Intent::Remove) {
            return false;
        }
        // The replacement re-checks emptiness on the frozen snapshot; whatever it decided, the
        // node is out of its parent once this returns `Ok`, unless the parent itself froze.
        let _ = finish_replace(self.parent_of(i), self.shared(i), self.guard);
        !self.is_present(i)
    }

    /// Whether node `i` is still in its parent's child array.
    fn is_present(&self, i: usize) -> bool {
        let array = self
            .parent_of(i)
            .children
            .load(Ordering::Acquire, self.guard)
            .with_tag(0);
        // SAFETY: loaded under `self.guard`.
        unsafe { children::entries(array, self.guard) }
            .iter()
            .any(|c| c.node == self.seen[i].node)
    }
}

impl Engine {
    pub(crate) fn total_chars(&self) -> usize {
        let raw = self.total.load(Ordering::Relaxed);
        if raw > isize::MAX as usize {
            0
        } else {
            raw
        }
    }

    /// Every non-root node, parents before children, children in first-char order, into
    /// `seen` (cleared first; `stack` is working space).
    fn walk<'s, 'g>(
        &'g self,
        seen: &'s mut Vec<Seen>,
        stack: &mut Vec<(*const Node, Option<usize>)>,
        guard: &'g Guard,
    ) -> Walk<'s, 'g> {
        seen.clear();
        for root in self.roots.iter() {
            let root: &Node = root;
            stack.clear();
            push_children(root, None, stack, guard);
            while let Some((node, parent)) = stack.pop() {
                let index = seen.len();
                seen.push(Seen { node, parent, root });
                // SAFETY: loaded under `guard` from a child array.
                push_children(unsafe { &*node }, Some(index), stack, guard);
            }
        }
        Walk { seen, guard }
    }

    pub(crate) fn evict_tenants_over(&self, max_chars: usize) -> EvictionStats {
        let mut stats = EvictionStats::default();
        let mut scratch = EvictionScratch::default();
        for _ in 0..EVICTION_PASSES {
            let over: Vec<TenantId> = self
                .registry
                .ids()
                .filter(|id| self.registry.chars(*id) > max_chars)
                .collect();
            if over.is_empty() {
                break;
            }
            let guard = epoch::pin();
            let EvictionScratch { seen, stack, lru } = &mut scratch;
            let walk = self.walk(seen, stack, &guard);
            for id in over {
                let done = || self.registry.chars(id) <= max_chars;
                self.evict_lru(&[id], done, &walk, lru, &mut stats);
            }
        }
        stats
    }

    /// Detaches tenants from their least recently used leaves, all tenants in one LRU order,
    /// until the tree-wide total is at most `max_total`, working in `scratch`.
    pub(crate) fn evict_to_total(
        &self,
        max_total: usize,
        scratch: &mut EvictionScratch,
    ) -> EvictionStats {
        let mut stats = EvictionStats::default();
        for _ in 0..EVICTION_PASSES {
            if self.total_chars() <= max_total {
                break;
            }
            let ids: Vec<TenantId> = self.registry.ids().collect();
            let guard = epoch::pin();
            let EvictionScratch { seen, stack, lru } = &mut *scratch;
            let walk = self.walk(seen, stack, &guard);
            let done = || self.total_chars() <= max_total;
            self.evict_lru(&ids, done, &walk, lru, &mut stats);
        }
        stats
    }

    /// Pops (tenant, leaf) pairs of `ids` in least-recently-used order, detaching each, until
    /// `done()`. A node is a leaf for a tenant when the tenant holds it and no child does; when a
    /// detach leaves the parent such a leaf, the parent joins the queue.
    fn evict_lru(
        &self,
        ids: &[TenantId],
        done: impl Fn() -> bool,
        walk: &Walk<'_, '_>,
        scratch: &mut LruScratch,
        stats: &mut EvictionStats,
    ) {
        let LruScratch {
            member,
            held_below,
            heap,
        } = scratch;
        // Membership by index: one lookup per slot, whatever the number of tenants.
        member.clear();
        member.resize(
            ids.iter().map(|id| id.index() + 1).max().unwrap_or(0),
            false,
        );
        for id in ids {
            member[id.index()] = true;
        }
        let wanted = |id: TenantId| member.get(id.index()).copied().unwrap_or(false);
        // A node is a leaf for a tenant when none of its children holds it. Most nodes have no
        // children; for the rest, their children's tenants are gathered once and searched.
        // Heapified once, in place.
        let mut leaves = std::mem::take(heap).into_vec();
        leaves.clear();
        for i in 0..walk.len() {
            let n = walk.node(i);
            held_below.clear();
            let array = n.children.load(Ordering::Acquire, walk.guard).with_tag(0);
            // SAFETY: loaded under the walk's guard; nodes in it stay allocated while it is held.
            for c in unsafe { children::entries(array, walk.guard) } {
                // SAFETY: as above.
                held_below.extend(tenants::live(unsafe { &(*c.node).slots }).map(|(id, _)| id));
            }
            held_below.sort_unstable();
            for (id, tick) in tenants::live(&n.slots) {
                if wanted(id) && held_below.binary_search(&id).is_err() {
                    leaves.push(Reverse((tick, i, id)));
                }
            }
        }
        *heap = BinaryHeap::from(leaves);
        while !done() {
            let Some(Reverse((_, i, id))) = heap.pop() else {
                break;
            };
            let n = walk.node(i);
            if tenants::detach(&n.slots, id) != Detach::Detached {
                continue;
            }
            self.counted_detach(id, n.chars);
            stats.detached += 1;
            stats.chars_freed += n.chars;
            if walk.unlink_if_empty(i) {
                stats.nodes_removed += 1;
            }
            if let Some(p) = walk.parent_index(i) {
                let parent = walk.node(p);
                if let Some(tick) = tenants::tick(&parent.slots, id) {
                    if !any_child_holds(parent, id, walk.guard) {
                        heap.push(Reverse((tick, p, id)));
                    }
                }
            }
        }
    }

    pub(crate) fn remove_tenant(&self, id: TenantId) {
        // Before the walk: an insert racing the removal sets it again (see `tenant.rs`).
        self.registry.set_live(id, false);
        let guard = epoch::pin();
        let (mut seen, mut stack) = (Vec::new(), Vec::new());
        let walk = self.walk(&mut seen, &mut stack, &guard);
        // Children before parents, so a parent emptied by the removal is already a leaf.
        for i in (0..walk.len()).rev() {
            let n = walk.node(i);
            if tenants::detach(&n.slots, id) == Detach::Detached {
                self.counted_detach(id, n.chars);
            }
            walk.unlink_if_empty(i);
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
        let (mut seen, mut stack) = (Vec::new(), Vec::new());
        let walk = self.walk(&mut seen, &mut stack, &guard);
        for i in 0..walk.len() {
            let n = walk.node(i);
            for (id, _) in tenants::live(&n.slots) {
                *sizes.entry(id).or_insert(0) += n.chars;
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
    stack: &mut Vec<(*const Node, Option<usize>)>,
    guard: &Guard,
) {
    let array = node.children.load(Ordering::Acquire, guard).with_tag(0);
    // SAFETY: loaded under `guard`. Pushed in reverse so they pop in first-char order.
    for c in unsafe { children::entries(array, guard) }.iter().rev() {
        stack.push((c.node, parent));
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
            drop(child.into_owned());
        }
        drop(array.into_owned());
    }
}
