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
use std::collections::{BinaryHeap, HashMap, HashSet};

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

/// A node seen by a walk, with its parent's index (`None` for children of a root).
struct Seen<'g> {
    node: Shared<'g, Node>,
    parent: Option<usize>,
    root: &'g Node,
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

    /// Every non-root node, parents before children, children in first-char order.
    fn collect<'g>(&'g self, guard: &'g Guard) -> Vec<Seen<'g>> {
        let mut out = Vec::new();
        for root in self.roots.iter() {
            let root: &Node = root;
            let mut stack: Vec<(Shared<'g, Node>, Option<usize>)> = Vec::new();
            push_children(root, None, &mut stack, guard);
            while let Some((node, parent)) = stack.pop() {
                let index = out.len();
                out.push(Seen { node, parent, root });
                // SAFETY: loaded under `guard`.
                push_children(unsafe { node.deref() }, Some(index), &mut stack, guard);
            }
        }
        out
    }

    fn parent_of<'g>(&self, seen: &[Seen<'g>], i: usize) -> &'g Node {
        match seen[i].parent {
            // SAFETY: loaded under the guard that `seen` borrows.
            Some(p) => unsafe { seen[p].node.deref() },
            None => seen[i].root,
        }
    }

    /// Unlinks `seen[i]` if it is an empty leaf. Returns whether it was unlinked.
    fn unlink_if_empty<'g>(&self, seen: &[Seen<'g>], i: usize, guard: &'g Guard) -> bool {
        // SAFETY: loaded under `guard`.
        let n = unsafe { seen[i].node.deref() };
        let childless = n
            .children
            .load(Ordering::Acquire, guard)
            .with_tag(0)
            .is_null();
        if !childless || tenants::has_live(&n.slots) || !n.claim(Intent::Remove) {
            return false;
        }
        // The replacement re-checks emptiness on the frozen snapshot; whatever it decided, the
        // node is out of its parent once this returns `Ok`, unless the parent itself froze.
        let _ = finish_replace(self.parent_of(seen, i), seen[i].node, guard);
        !unsafe { self.is_present(seen, i, guard) }
    }

    /// Whether `seen[i]` is still in its parent's child array.
    ///
    /// # Safety
    /// `guard` must be the guard `seen` was collected under.
    unsafe fn is_present<'g>(&self, seen: &[Seen<'g>], i: usize, guard: &'g Guard) -> bool {
        let parent = self.parent_of(seen, i);
        let array = parent.children.load(Ordering::Acquire, guard).with_tag(0);
        // SAFETY: loaded under `guard`.
        unsafe { children::entries(array, guard) }
            .iter()
            .any(|c| c.node == seen[i].node.as_raw())
    }

    pub(crate) fn evict_tenants_over(&self, max_chars: usize) -> EvictionStats {
        let mut stats = EvictionStats::default();
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
            let seen = self.collect(&guard);
            for id in over {
                let done = || self.registry.chars(id) <= max_chars;
                self.evict_lru(&[id], done, &seen, &mut stats, &guard);
            }
        }
        stats
    }

    /// Detaches tenants from their least recently used leaves, all tenants in one LRU order,
    /// until the tree-wide total is at most `max_total`.
    pub(crate) fn evict_to_total(&self, max_total: usize) -> EvictionStats {
        let mut stats = EvictionStats::default();
        for _ in 0..EVICTION_PASSES {
            if self.total_chars() <= max_total {
                break;
            }
            let ids: Vec<TenantId> = self.registry.ids().collect();
            let guard = epoch::pin();
            let seen = self.collect(&guard);
            let done = || self.total_chars() <= max_total;
            self.evict_lru(&ids, done, &seen, &mut stats, &guard);
        }
        stats
    }

    /// Pops (tenant, leaf) pairs of `ids` in least-recently-used order, detaching each, until
    /// `done()`. A node is a leaf for a tenant when the tenant holds it and no child does; when a
    /// detach leaves the parent such a leaf, the parent joins the queue.
    fn evict_lru<'g>(
        &self,
        ids: &[TenantId],
        done: impl Fn() -> bool,
        seen: &[Seen<'g>],
        stats: &mut EvictionStats,
        guard: &'g Guard,
    ) {
        // Membership by index: one lookup per slot, whatever the number of tenants.
        let mut member = vec![false; ids.iter().map(|id| id.index() + 1).max().unwrap_or(0)];
        for id in ids {
            member[id.index()] = true;
        }
        let wanted = |id: TenantId| member.get(id.index()).copied().unwrap_or(false);
        let mut child_holds: HashSet<(usize, TenantId)> = HashSet::new();
        for s in seen {
            if let Some(p) = s.parent {
                // SAFETY: loaded under `guard`.
                for (id, _) in tenants::live(unsafe { &s.node.deref().slots }) {
                    if wanted(id) {
                        child_holds.insert((p, id));
                    }
                }
            }
        }
        let mut heap = BinaryHeap::new();
        for (i, s) in seen.iter().enumerate() {
            // SAFETY: loaded under `guard`.
            for (id, tick) in tenants::live(unsafe { &s.node.deref().slots }) {
                if wanted(id) && !child_holds.contains(&(i, id)) {
                    heap.push(Reverse((tick, i, id)));
                }
            }
        }
        while !done() {
            let Some(Reverse((_, i, id))) = heap.pop() else {
                break;
            };
            // SAFETY: loaded under `guard`.
            let n = unsafe { seen[i].node.deref() };
            if tenants::detach(&n.slots, id) != Detach::Detached {
                continue;
            }
            self.counted_detach(id, n.chars);
            stats.detached += 1;
            stats.chars_freed += n.chars;
            if self.unlink_if_empty(seen, i, guard) {
                stats.nodes_removed += 1;
            }
            if let Some(p) = seen[i].parent {
                // SAFETY: loaded under `guard`.
                let parent = unsafe { seen[p].node.deref() };
                if let Some(tick) = tenants::tick(&parent.slots, id) {
                    if !any_child_holds(parent, id, guard) {
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
        let seen = self.collect(&guard);
        // Children before parents, so a parent emptied by the removal is already a leaf.
        for i in (0..seen.len()).rev() {
            // SAFETY: loaded under `guard`.
            let n = unsafe { seen[i].node.deref() };
            if tenants::detach(&n.slots, id) == Detach::Detached {
                self.counted_detach(id, n.chars);
            }
            self.unlink_if_empty(&seen, i, &guard);
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
        for s in self.collect(&guard) {
            // SAFETY: loaded under `guard`.
            let n = unsafe { s.node.deref() };
            for (id, _) in tenants::live(&n.slots) {
                *sizes.entry(id).or_insert(0) += n.chars;
            }
        }
        sizes.into_iter().collect()
    }

    /// Frees every node and array. Called from `Tree::drop`, when no other thread can hold a
    /// reference.
    pub(crate) fn free_all(&mut self) {
        // SAFETY: `&mut self` means no thread is inside the tree, so nothing needs protecting.
        let guard = unsafe { epoch::unprotected() };
        for root in self.roots.iter() {
            free_children(root, guard);
        }
    }
}

fn push_children<'g>(
    node: &Node,
    parent: Option<usize>,
    stack: &mut Vec<(Shared<'g, Node>, Option<usize>)>,
    guard: &'g Guard,
) {
    let array = node.children.load(Ordering::Acquire, guard).with_tag(0);
    // SAFETY: loaded under `guard`. Pushed in reverse so they pop in first-char order.
    for c in unsafe { children::entries(array, guard) }.iter().rev() {
        stack.push((Shared::from(c.node), parent));
    }
}

fn any_child_holds(node: &Node, id: TenantId, guard: &Guard) -> bool {
    let array = node.children.load(Ordering::Acquire, guard).with_tag(0);
    // SAFETY: loaded under `guard`; nodes in it stay allocated while it is held.
    unsafe { children::entries(array, guard) }
        .iter()
        .any(|c| tenants::holds(unsafe { &(*c.node).slots }, id))
}

/// Frees `node`'s subtree (not `node`).
fn free_children(node: &Node, guard: &Guard) {
    let array = node.children.load(Ordering::Relaxed, guard).with_tag(0);
    if array.is_null() {
        return;
    }
    // SAFETY: exclusive access (see `free_all`); each node and array is reachable from exactly
    // one parent, so each is freed once.
    unsafe {
        for c in children::entries(array, guard) {
            let child = Shared::from(c.node);
            free_children(child.deref(), guard);
            drop(child.into_owned());
        }
        drop(array.into_owned());
    }
}
