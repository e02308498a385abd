//! Nodes, and the one protocol that changes a node's shape: replacement.
//!
//! A node's label is immutable. Its child array changes only by CAS (see `children.rs`) and its
//! tenants only by slot CAS (see `tenants.rs`). Everything else (splitting the edge, rebuilding
//! a full slot array, unlinking an empty leaf) replaces the node with a successor:
//!
//! 1. **Claim.** CAS `state` from `LIVE` to an intent (`SPLIT(at)`, `COMPACT` or `REMOVE`). Only
//!    one intent ever wins; the others help it finish and then retry their own work.
//! 2. **Freeze.** `fetch_or` the frozen tag into the child pointer and the frozen bit into every
//!    tenant slot. After this the node's children and tenants never change, so every thread
//!    that looks sees the same snapshot. Any change that landed before the freeze is in it.
//! 3. **Build and publish the successor.** From the snapshot and the intent (both fixed now) any
//!    thread can build the same successor: for `SPLIT(at)` an upper node with the first `at`
//!    bytes and a lower node with the rest, the children and the tenants; for `COMPACT` a copy
//!    with a fresh slot array; for `REMOVE` nothing, if the snapshot has no children and no
//!    live tenant, and a copy otherwise (so an insert that extended the node in the meantime is
//!    never lost). CAS `successor` from null; a thread that loses frees its own build. An
//!    unlink (a successor of nothing) is not published: every thread reads the same snapshot,
//!    so each decides it alike, and the evictor's most frequent replacement saves one CAS.
//! 4. **Swap it in.** CAS the parent's child array for one where the entry whose node *is* this
//!    node (by identity, never by first unit) points to the successor, or is gone. The thread
//!    whose CAS succeeds retires the node and the old array through the epoch. If
//!    the node is no longer in the parent's array, someone else finished step 4. If the parent
//!    is itself frozen, the caller restarts from its shard root and helps the parent first.
//!
//! A copy (`COMPACT`, or `REMOVE` of a node that is no empty leaf) also gives the node a label
//! of its own when its label is a small part of the buffer it shares (`Label::compacted`):
//! eviction compacts the parent of each leaf it unlinks that way, so a live label does not keep
//! the text of evicted nodes alive.
//!
//! Every step can be done by any thread, so a stalled thread never blocks the others: a thread
//! that meets a claimed node finishes the replacement itself.
//!
//! Tenant counts never change in a replacement: a split puts every tenant on both halves, whose
//! units add up to the old node's, and a copy keeps them all.
//!
//! Ownership: the successor takes over the frozen node's child array (the pointer is moved, not
//! copied), so retiring a replaced node frees its struct, slots and label reference but never its
//! children. Roots are never replaced.
//!
//! Orderings: `state`, `successor` and the parent's child pointer are each decided by CAS on a
//! single location; `AcqRel` on success publishes what was built before it, and `Acquire` loads
//! see it. The freeze uses `AcqRel` `fetch_or`, which puts it in each location's modification
//! order after any CAS it must include.

use super::children::{self, Child, ChildArray, FROZEN_CHILDREN};
use super::key::KeyUnit;
use super::label::Label;
use super::tenants::{self, SlotArray};
use crate::sync::{AtomicU64, Ordering};
use crate::tenant::TenantId;
use crossbeam_epoch::{Atomic, Guard, Owned, Shared};

const LIVE: u64 = 0;
const KIND_SHIFT: u32 = 62;
const SPLIT: u64 = 1 << KIND_SHIFT;
const COMPACT: u64 = 2 << KIND_SHIFT;
const REMOVE: u64 = 3 << KIND_SHIFT;
const AT_MASK: u64 = (1 << KIND_SHIFT) - 1;

pub(crate) struct Node {
    pub(crate) label: Label,
    /// Units (chars, tokens or blocks) in `label`.
    pub(crate) units: usize,
    state: AtomicU64,
    pub(crate) children: Atomic<ChildArray>,
    pub(crate) slots: SlotArray,
    successor: Atomic<Node>,
}

/// What to replace a node with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Intent {
    /// Split the edge after `at` bytes.
    Split(usize),
    /// Rebuild the tenant slots with room (dropping DEAD ones).
    Compact,
    /// Unlink the node if it is an empty leaf (else, like `Compact`).
    Remove,
}

/// A replacement could not be finished because the parent is itself being replaced.
#[derive(Debug)]
pub(crate) struct ParentFrozen;

impl Node {
    pub(crate) fn new(label: Label, units: usize, slots: SlotArray) -> Self {
        Self {
            label,
            units,
            state: AtomicU64::new(LIVE),
            children: Atomic::null(),
            slots,
            successor: Atomic::null(),
        }
    }

    pub(crate) fn root() -> Self {
        Self::new(Label::empty(), 0, tenants::new_slots(&[], 0))
    }

    /// A leaf for the key bytes `bytes` (`units` units), held by `id` since `tick`.
    pub(crate) fn leaf(bytes: &[u8], units: usize, id: TenantId, tick: u64) -> Self {
        Self::new(
            Label::new(bytes),
            units,
            tenants::new_slots(&[(id, tick)], tenants::capacity_for(1)),
        )
    }

    /// Tries to claim the node for `intent`. Fails if another intent holds it (help that one).
    pub(crate) fn claim(&self, intent: Intent) -> bool {
        let word = match intent {
            Intent::Split(at) => SPLIT | (at as u64 & AT_MASK),
            Intent::Compact => COMPACT,
            Intent::Remove => REMOVE,
        };
        self.state
            .compare_exchange(LIVE, word, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn intent(&self) -> Option<Intent> {
        let word = self.state.load(Ordering::Acquire);
        match word & !AT_MASK {
            SPLIT => Some(Intent::Split((word & AT_MASK) as usize)),
            COMPACT => Some(Intent::Compact),
            REMOVE => Some(Intent::Remove),
            _ => None,
        }
    }
}

/// Finishes the replacement of `node`, a child of `parent`, that some thread claimed.
///
/// `Ok` once `node` is out of `parent`'s child array (by this thread or another): `Ok(true)` if
/// it was replaced by nothing (unlinked). `Err` if `parent`'s children are frozen: restart from
/// the shard root, which finds and helps `parent`. If this thread's swap takes `node` out, it
/// retires what it took out through the epoch.
pub(crate) fn finish_replace<'g, K: KeyUnit>(
    parent: &'g Node,
    node: Shared<'g, Node>,
    guard: &'g Guard,
) -> Result<bool, ParentFrozen> {
    // SAFETY: `node` was loaded under `guard` from a child array, so it is not freed before
    // `guard` drops.
    let n = unsafe { node.deref() };
    let intent = n.intent().expect("finish_replace on a node nobody claimed");
    // Step 2: freeze. Idempotent, so every helper does it.
    n.children
        .fetch_or(FROZEN_CHILDREN, Ordering::AcqRel, guard);
    tenants::freeze(&n.slots);
    // Step 3: agree on one successor (nothing needs no agreement: see the module note).
    let mut successor = n.successor.load(Ordering::Acquire, guard);
    if successor.is_null() {
        let built = build_successor::<K>(n, intent, guard);
        if built.is_null() {
            successor = built;
        } else {
            match n.successor.compare_exchange(
                Shared::null(),
                built,
                Ordering::AcqRel,
                Ordering::Acquire,
                guard,
            ) {
                Ok(ours) => successor = ours,
                Err(race) => {
                    // SAFETY: our build was never published; the winner's successor owns the
                    // moved child array, so only the structs and arrays this build allocated
                    // are freed.
                    unsafe { discard_successor(race.new, intent, guard) };
                    successor = race.current;
                }
            }
        }
    }
    // Step 4: swap it into the parent, finding `node` by identity.
    loop {
        let array = parent.children.load(Ordering::Acquire, guard);
        if array.tag() & FROZEN_CHILDREN != 0 {
            return Err(ParentFrozen);
        }
        // SAFETY: loaded from a child pointer under `guard`.
        let entries = unsafe { children::entries(array, guard) };
        if !entries.iter().any(|c| c.node == node.as_raw()) {
            return Ok(successor.is_null());
        }
        let new = children::replaced(entries, node.as_raw(), successor.as_raw());
        let new = match new {
            Some(owned) => owned.into_shared(guard),
            None => Shared::null(),
        };
        match parent.children.compare_exchange(
            array,
            new,
            Ordering::AcqRel,
            Ordering::Acquire,
            guard,
        ) {
            Ok(_) => {
                // An unlinked leaf's (null or empty) child array goes with it; a successor
                // took over the array otherwise.
                let own = match successor.is_null() {
                    true => n.children.load(Ordering::Acquire, guard).with_tag(0),
                    false => Shared::null(),
                };
                // SAFETY: `array`, `node` and `own` are now unreachable from the tree; readers
                // that still hold them are pinned, and the epoch frees them after those unpin.
                unsafe {
                    guard.defer_destroy(array);
                    if !own.is_null() {
                        guard.defer_destroy(own);
                    }
                    guard.defer_destroy(node);
                }
                return Ok(successor.is_null());
            }
            Err(race) => {
                if !race.new.is_null() {
                    // SAFETY: never published.
                    drop(unsafe { race.new.into_owned() });
                }
            }
        }
    }
}

/// Builds the successor of a frozen node. Null for an unlinked leaf.
fn build_successor<'g, K: KeyUnit>(n: &Node, intent: Intent, guard: &'g Guard) -> Shared<'g, Node> {
    let kids = n.children.load(Ordering::Acquire, guard).with_tag(0);
    let live: Vec<(TenantId, u64)> = tenants::live(&n.slots).collect();
    let slots = || tenants::new_slots(&live, tenants::capacity_for(live.len()));
    match intent {
        Intent::Remove if kids.is_null() && live.is_empty() => Shared::null(),
        // Test-only broken variant (loom must catch it): unlink without re-checking the frozen
        // snapshot, losing whatever an insert added after the pre-claim check.
        #[cfg(router_loom_broken_unlink)]
        Intent::Remove => Shared::null(),
        Intent::Split(at) => {
            let (upper_label, lower_label) = n.label.split_at(at);
            let upper_units = K::count(upper_label.bytes());
            let lower_first = K::first(lower_label.bytes(), 0);
            let lower = Node::new(lower_label, n.units - upper_units, slots());
            lower.children.store(kids, Ordering::Relaxed);
            let lower = Owned::new(lower).into_shared(guard);
            let upper = Node::new(upper_label, upper_units, slots());
            upper.children.store(
                children::single(Child {
                    first: lower_first,
                    node: lower.as_raw(),
                }),
                Ordering::Relaxed,
            );
            Owned::new(upper).into_shared(guard)
        }
        Intent::Compact | Intent::Remove => {
            let copy = Node::new(n.label.compacted(), n.units, slots());
            copy.children.store(kids, Ordering::Relaxed);
            Owned::new(copy).into_shared(guard)
        }
    }
}

/// Frees the successor a replacement of `node` published but never swapped in (its parent
/// froze, and no thread finished it before the tree was freed). The node is still in the tree,
/// so the children the successor took over are still the node's, freed with it.
///
/// # Safety
/// Exclusive access: the tree is being freed, `node` is in it, and nothing else frees what its
/// successor allocated.
pub(crate) unsafe fn free_stranded_successor(node: &Node, guard: &Guard) {
    let successor = node.successor.load(Ordering::Relaxed, guard);
    if successor.is_null() {
        return;
    }
    let intent = node
        .intent()
        .expect("a published successor has a claimed node");
    // SAFETY: published by a replacement of `node` and never swapped into the tree (`node`
    // still is), so only this build's own allocations are freed, once.
    unsafe { discard_successor(successor, intent, guard) };
}

/// Frees a successor that lost the race to be published.
///
/// # Safety
/// `built` must come from `build_successor(_, intent, _)` and never have been published.
unsafe fn discard_successor(built: Shared<'_, Node>, intent: Intent, guard: &Guard) {
    if built.is_null() {
        return;
    }
    // SAFETY: unpublished, so this thread owns it alone.
    let upper = unsafe { built.into_owned() };
    if let Intent::Split(_) = intent {
        // The single-entry array and the lower node are this build's own; the lower node's
        // children are the frozen node's, moved, and are not freed (`Node` has no drop glue for
        // its children).
        let kids = upper.children.load(Ordering::Relaxed, guard);
        // SAFETY: both were allocated by this build and never published.
        unsafe {
            let lower = children::entries(kids, guard)[0].node;
            drop(Owned::from_raw(lower as *mut Node));
            drop(kids.into_owned());
        }
    }
    drop(upper);
}
