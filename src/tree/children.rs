//! Copy-on-write child arrays.
//!
//! A node's children are an immutable array of `(first unit, node)` entries sorted by first
//! unit, behind one `Atomic` pointer. Readers load the pointer (`Acquire`) and search the array
//! with no further synchronisation. Writers build a new array and CAS the pointer (`AcqRel`, so
//! the new array and the nodes it points to are visible to any reader that loads it); the old
//! array is retired through the epoch. A null pointer is a node with no children.
//!
//! Tag bit `FROZEN_CHILDREN` on the pointer marks the node as being replaced: no writer may swap
//! the array any more (their CAS expects an untagged pointer and fails), so the replacement can
//! take the array as it stands. Readers ignore the tag.

use super::node::Node;
use crate::constants::LINEAR_CHILD_SCAN;
use crossbeam_epoch::{Guard, Owned, Shared};
use std::mem::MaybeUninit;

pub(crate) const FROZEN_CHILDREN: usize = 1;

/// One edge: the first unit of the child's label (see `key.rs`) and the child. 16 bytes, as
/// a `u32` key with its padding would be.
#[derive(Clone, Copy)]
pub(crate) struct Child {
    pub(crate) first: u64,
    pub(crate) node: *const Node,
}

// SAFETY: a `Child` is an immutable (unit, pointer) pair; the node it points to is shared only
// through the epoch protocol (`Node` is `Sync`), so moving or sharing the pair across threads is
// sound.
unsafe impl Send for Child {}
// SAFETY: as above; `Child` has no interior mutability.
unsafe impl Sync for Child {}

pub(crate) type ChildArray = [MaybeUninit<Child>];

/// The entries of a loaded array (empty for null).
///
/// # Safety
/// `array` must have been loaded under `guard` from a node's child pointer (so it was fully
/// initialised before it was published and is not freed while `guard` lives).
pub(crate) unsafe fn entries<'g>(array: Shared<'g, ChildArray>, _guard: &'g Guard) -> &'g [Child] {
    // SAFETY: per the contract, the pointer is null or a live array whose every element was
    // written before publication; `MaybeUninit<Child>` has the layout of `Child`.
    match unsafe { array.as_ref() } {
        None => &[],
        Some(slice) => unsafe { &*(slice as *const [MaybeUninit<Child>] as *const [Child]) },
    }
}

/// The child whose label starts with `first`.
#[inline]
pub(crate) fn find(entries: &[Child], first: u64) -> Option<&Child> {
    if entries.len() <= LINEAR_CHILD_SCAN {
        entries.iter().find(|c| c.first == first)
    } else {
        entries
            .binary_search_by_key(&first, |c| c.first)
            .ok()
            .map(|i| &entries[i])
    }
}

/// A new array holding `entries` plus `child`, kept sorted.
pub(crate) fn with_child(entries: &[Child], child: Child) -> Owned<ChildArray> {
    let at = entries.partition_point(|c| c.first < child.first);
    build(entries.len() + 1, |i| match i.cmp(&at) {
        std::cmp::Ordering::Less => entries[i],
        std::cmp::Ordering::Equal => child,
        std::cmp::Ordering::Greater => entries[i - 1],
    })
}

/// A new array with the entry for `old` replaced by `new`, or removed when `new` is null.
/// Returns `None` for an empty result (a node without children has a null pointer).
pub(crate) fn replaced(
    entries: &[Child],
    old: *const Node,
    new: *const Node,
) -> Option<Owned<ChildArray>> {
    if new.is_null() {
        if entries.len() == 1 {
            return None;
        }
        let at = entries.iter().position(|c| c.node == old)?;
        Some(build(entries.len() - 1, |i| {
            if i < at {
                entries[i]
            } else {
                entries[i + 1]
            }
        }))
    } else {
        Some(build(entries.len(), |i| {
            let c = entries[i];
            if c.node == old {
                Child {
                    first: c.first,
                    node: new,
                }
            } else {
                c
            }
        }))
    }
}

pub(crate) fn single(child: Child) -> Owned<ChildArray> {
    build(1, |_| child)
}

fn build(len: usize, entry: impl Fn(usize) -> Child) -> Owned<ChildArray> {
    let mut array = Owned::<ChildArray>::init(len);
    for (i, slot) in array.iter_mut().enumerate() {
        slot.write(entry(i));
    }
    array
}
