//! The two walks every request makes: a read-only descent that matches, and an insert walk that
//! attaches the chosen tenant and adds what is missing.
//!
//! Both are generic over the key unit (`key.rs`): they walk bytes and ask the unit where its
//! boundaries are and how many units a stretch holds.
//!
//! The descent takes no lock and writes nothing but tick refreshes: it loads child pointers
//! (`Acquire`, pairing with the `AcqRel` CAS that published them) and compares bytes against
//! immutable labels, so it sees each node either before or after any concurrent split, never a
//! torn label. It remembers up to `PATH_CAPACITY` steps on the stack (no allocation).
//!
//! The insert walk goes down the same way and reuses those steps: at each depth where it finds
//! the very node the descent found (by identity), it reuses the match length instead of
//! comparing bytes again, since labels never change. Where the tree changed in between, it
//! compares afresh. A node that is being replaced is helped to completion (see `node.rs`) and
//! the walk continues from its parent, or from the shard root when the parent is frozen too;
//! attaching is idempotent, so walking a prefix twice never counts it twice.

use super::children::{self, Child, FROZEN_CHILDREN};
use super::key::KeyUnit;
use super::node::{finish_replace, Intent, Node};
use super::tenants::{self, Attach};
use super::Engine;
use crate::constants::PATH_CAPACITY;
use crate::sync::Ordering;
use crate::tenant::TenantId;
use crossbeam_epoch::{Guard, Owned, Shared};
use std::mem::MaybeUninit;

/// One step of a descent: the node reached and how many bytes of its label matched.
#[derive(Clone, Copy)]
pub(crate) struct Step {
    pub(crate) node: *const Node,
    /// Bytes of the node's label that matched.
    pub(crate) matched: usize,
    /// Units of the key matched up to and including this step.
    pub(crate) units_through: usize,
}

/// What a descent found.
pub(crate) struct Descent {
    /// The first `depth` entries are written; the rest are never read. Left uninitialised
    /// because zeroing 1.5 KiB was the largest fixed cost of a short match (a quarter of the
    /// instructions of a 1 KB one, under callgrind).
    steps: [MaybeUninit<Step>; PATH_CAPACITY],
    depth: usize,
    /// Steps taken in all (may exceed `PATH_CAPACITY`).
    pub(crate) total_depth: usize,
    pub(crate) matched_bytes: usize,
    pub(crate) matched_units: usize,
    /// The deepest node reached (fully or partly matched), if any.
    pub(crate) deepest: *const Node,
}

impl Descent {
    fn new() -> Self {
        // Built field by field: a struct literal lets LLVM merge the scalar zeroes and the
        // uninitialised array into one memset of the whole 1.5 KiB.
        let mut d = MaybeUninit::<Self>::uninit();
        let p = d.as_mut_ptr();
        // SAFETY: `p` points at a live `MaybeUninit<Self>`; each write targets one field, in
        // place, through `addr_of_mut!` (no reference to uninitialised memory is made).
        unsafe {
            std::ptr::addr_of_mut!((*p).depth).write(0);
            std::ptr::addr_of_mut!((*p).total_depth).write(0);
            std::ptr::addr_of_mut!((*p).matched_bytes).write(0);
            std::ptr::addr_of_mut!((*p).matched_units).write(0);
            std::ptr::addr_of_mut!((*p).deepest).write(std::ptr::null());
        }
        // SAFETY: every field but `steps` was written above, and `steps` is an array of
        // `MaybeUninit`, which needs no initialisation.
        unsafe { d.assume_init() }
    }

    /// The remembered steps, shallowest first.
    pub(crate) fn steps(&self) -> &[Step] {
        let written = &self.steps[..self.depth];
        // SAFETY: `push` writes entries in order and bumps `depth` after each, so the first
        // `depth` entries are initialised; `MaybeUninit<Step>` has `Step`'s layout.
        unsafe { &*(written as *const [MaybeUninit<Step>] as *const [Step]) }
    }

    fn push(&mut self, step: Step) {
        if self.depth < PATH_CAPACITY {
            self.steps[self.depth] = MaybeUninit::new(step);
            self.depth += 1;
        }
        self.total_depth += 1;
        self.deepest = step.node;
    }

    /// Whether every step fitted on the stack.
    pub(crate) fn complete(&self) -> bool {
        self.total_depth == self.depth
    }
}

/// What a caller already knows about a key it asks `extend` to record: the steps of a descent
/// of the same key, and the unit count of its unmatched tail (`(byte offset, units)`), so
/// neither the label comparisons nor the tail's count are done twice.
#[derive(Clone, Copy, Default)]
pub(crate) struct Hint<'a> {
    pub(crate) steps: &'a [Step],
    pub(crate) tail: Option<(usize, usize)>,
}

/// Which children a descent may enter.
#[derive(Clone, Copy)]
pub(crate) enum Filter {
    Any,
    /// Only nodes `id` holds; refreshes its tick on each (the seed's `prefix_match_tenant`).
    HeldBy(TenantId, u64),
}

impl<K: KeyUnit> Engine<K> {
    /// Matches the key bytes `text` from its shard root, without locks or allocation.
    pub(crate) fn descend(&self, text: &[u8], filter: Filter, guard: &Guard) -> Descent {
        let mut d = Descent::new();
        if text.is_empty() {
            return d;
        }
        let mut node: &Node = self.root_for(text);
        let mut pos = 0;
        while pos < text.len() {
            let array = node.children.load(Ordering::Acquire, guard).with_tag(0);
            // SAFETY: loaded from a child pointer under `guard`.
            let entries = unsafe { children::entries(array, guard) };
            let Some(child) = children::find(entries, K::first(text, pos)) else {
                break;
            };
            // SAFETY: nodes in a loaded array stay allocated while `guard` is held.
            let next = unsafe { &*child.node };
            if let Filter::HeldBy(id, tick) = filter {
                if !tenants::refresh(&next.slots, id, tick) {
                    break;
                }
            }
            let k = K::common_prefix(next.label.bytes(), &text[pos..]);
            if k == next.label.len() {
                d.matched_units += next.units;
            } else {
                d.matched_units += K::count(&next.label.bytes()[..k]);
            }
            d.matched_bytes += k;
            d.push(Step {
                node: child.node,
                matched: k,
                units_through: d.matched_units,
            });
            if k < next.label.len() {
                break;
            }
            node = next;
            pos += k;
        }
        d
    }

    /// Records the key bytes `text` for tenant `id`: attaches it to every node on the path and
    /// adds a leaf or splits an edge for the rest. Steps from a descent of the same key skip
    /// re-comparing.
    pub(crate) fn extend(
        &self,
        text: &[u8],
        id: TenantId,
        tick: u64,
        hint: Hint<'_>,
        guard: &Guard,
    ) {
        if text.is_empty() {
            return;
        }
        'restart: loop {
            let root: &Node = self.root_for(text);
            let mut parent: Option<&Node> = None;
            let mut node: &Node = root;
            let mut pos = 0;
            let mut depth = 0;
            while pos < text.len() {
                let array = node.children.load(Ordering::Acquire, guard);
                if array.tag() & FROZEN_CHILDREN != 0 {
                    // Our current node is being replaced: help, then retry from the top.
                    let parent = parent.expect("roots are never frozen");
                    let _ = finish_replace::<K>(parent, Shared::from(node as *const Node), guard);
                    continue 'restart;
                }
                // SAFETY: loaded from a child pointer under `guard`.
                let entries = unsafe { children::entries(array, guard) };
                let first = K::first(text, pos);
                let Some(child) = children::find(entries, first) else {
                    let units = match hint.tail {
                        Some((at, units)) if at == pos => units,
                        _ => K::count(&text[pos..]),
                    };
                    let leaf = Node::leaf(&text[pos..], units, id, tick);
                    if self.add_leaf(node, array, entries, leaf, first, guard) {
                        self.counted_attach(id, units);
                        return;
                    }
                    continue;
                };
                let child_ptr: Shared<'_, Node> = Shared::from(child.node);
                // SAFETY: nodes in a loaded array stay allocated while `guard` is held.
                let c = unsafe { &*child.node };
                let k = match hint.steps.get(depth) {
                    Some(step) if step.node == child.node => step.matched,
                    _ => K::common_prefix(c.label.bytes(), &text[pos..]),
                };
                if k < c.label.len() {
                    // Diverges inside the edge: split it at `k`, then retry this node.
                    // If another intent holds it, finishing that one is what lets us retry.
                    c.claim(Intent::Split(k));
                    if finish_replace::<K>(node, child_ptr, guard).is_err() {
                        continue 'restart;
                    }
                    continue;
                }
                match tenants::attach(&c.slots, id, tick) {
                    Attach::Present => {}
                    Attach::Attached => self.counted_attach(id, c.units),
                    Attach::Full | Attach::Frozen => {
                        c.claim(Intent::Compact);
                        if finish_replace::<K>(node, child_ptr, guard).is_err() {
                            continue 'restart;
                        }
                        continue;
                    }
                }
                parent = Some(node);
                node = c;
                pos += k;
                depth += 1;
            }
            return;
        }
    }

    /// Publishes `leaf` under `node`; false if the child array changed first.
    fn add_leaf(
        &self,
        node: &Node,
        array: Shared<'_, children::ChildArray>,
        entries: &[Child],
        leaf: Node,
        first: u64,
        guard: &Guard,
    ) -> bool {
        let leaf = Owned::new(leaf).into_shared(guard);
        let new = children::with_child(
            entries,
            Child {
                first,
                node: leaf.as_raw(),
            },
        );
        match node
            .children
            .compare_exchange(array, new, Ordering::AcqRel, Ordering::Acquire, guard)
        {
            Ok(_) => {
                if !array.is_null() {
                    // SAFETY: replaced and unreachable; pinned readers keep it until they unpin.
                    unsafe { guard.defer_destroy(array) };
                }
                true
            }
            Err(race) => {
                drop(race.new);
                // SAFETY: the leaf was never published.
                drop(unsafe { leaf.into_owned() });
                false
            }
        }
    }
}
