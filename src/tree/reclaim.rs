//! What an eviction pass unlinks is freed by the evictor thread, not by requests.
//!
//! An unlinked node, and the child array its removal replaced, must outlive every reader that
//! may still hold them: the epoch's grace period. `Guard::defer_destroy` waits for it, but the
//! destructor then runs in whichever pinned thread collects the epoch's garbage next, and under
//! an eviction-heavy load that is a routing request: on the latency bench (Mooncake, a quarter
//! budget) a bare `pin()` in the routing threads took over 5 us 7–16 times as often while the
//! evictor ran, up to 530 us (a collect runs up to 512 deferred frees, nodes with their
//! labels), and routing p99 was 2.3–2.6x its value without eviction (1.2–1.4x since).
//!
//! So a pass collects what it unlinks into an [`Unlinked`] batch, and defers only the hand-back
//! of the whole batch: one channel send is all a collecting request does for it. The batches
//! that came back are freed a few entries at a time by the pieces of the next paced pass
//! ([`Reclaimer::free_some`], bounded like the rest of a piece), and whatever is left by the
//! evictor when it ticks with no pass to open ([`Reclaimer::free_returned`]).
//!
//! Ownership decides who frees, so every entry is freed exactly once and never early:
//! - an [`Unlinked`] batch (grace period not yet begun) that is dropped without being handed
//!   off defers each entry through the epoch, like `defer_destroy` (a pass that unwinds);
//! - a [`Returned`] batch exists only inside the deferred hand-back, so after the grace period,
//!   and dropping it frees its entries: in the evictor, or in the collecting thread when the
//!   send fails because the evictor has gone, or wherever the channel drops what it still holds.
//!
//! No atomics of ours: the channel orders the send before the evictor's drop of the batch.
//! Under loom (crossbeam-channel does not build there) the deferred hand-back drops the batch
//! itself, which is the same grace-period protocol without the thread change.

use super::children::ChildArray;
use super::node::Node;
use crossbeam_epoch::{self as epoch, Guard, Owned, Pointer, Shared};

/// Pointers taken out of the tree, as `Pointer::into_usize` data (plain integers, so a batch
/// moves to the thread that frees it like any value; what they point to is owned by the batch
/// alone).
#[derive(Default)]
struct Entries {
    nodes: Vec<usize>,
    arrays: Vec<usize>,
}

impl Entries {
    fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.arrays.is_empty()
    }
}

/// What this pass unlinked: out of the tree, but readers pinned before may still hold it.
#[derive(Default)]
pub(crate) struct Unlinked(Entries);

impl Unlinked {
    /// Takes ownership of `node`, just swapped out of its parent's child array.
    pub(crate) fn node(&mut self, node: Shared<'_, Node>) {
        self.0.nodes.push(node.into_usize());
    }

    /// Takes ownership of `array`, just swapped out of (or frozen with) its node.
    pub(crate) fn array(&mut self, array: Shared<'_, ChildArray>) {
        self.0.arrays.push(array.with_tag(0).into_usize());
    }
}

impl Drop for Unlinked {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let guard = epoch::pin();
        // SAFETY: each entry was unlinked once and is owned by this batch alone; deferring
        // waits out the readers that may still hold it.
        unsafe {
            for &data in &self.0.nodes {
                guard.defer_destroy(Shared::<Node>::from_usize(data));
            }
            for &data in &self.0.arrays {
                guard.defer_destroy(Shared::<ChildArray>::from_usize(data));
            }
        }
    }
}

/// A batch past its grace period: dropping it frees its entries.
struct Returned(Entries);

// Under loom batches are freed whole, in the deferred function (there is no channel back).
#[cfg(not(router_loom))]
impl Returned {
    /// Frees up to `count` entries; returns how many it freed.
    fn free_some(&mut self, count: usize) -> usize {
        let Entries { nodes, arrays } = &mut self.0;
        let mut freed = 0;
        while freed < count {
            // SAFETY: as in `drop`; each entry is taken out of the batch before it is freed, so
            // it is freed once.
            unsafe {
                if let Some(data) = nodes.pop() {
                    drop(Owned::<Node>::from_usize(data));
                } else if let Some(data) = arrays.pop() {
                    drop(Owned::<ChildArray>::from_usize(data));
                } else {
                    break;
                }
            }
            freed += 1;
        }
        freed
    }
}

impl Drop for Returned {
    fn drop(&mut self) {
        // SAFETY: a `Returned` is only made inside a deferred function (after every reader that
        // could hold an entry unpinned), from entries owned by one batch and converted once.
        unsafe {
            for &data in &self.0.nodes {
                drop(Owned::<Node>::from_usize(data));
            }
            for &data in &self.0.arrays {
                drop(Owned::<ChildArray>::from_usize(data));
            }
        }
    }
}

/// The owner's end of the hand-back: batches deferred by its passes come back here.
#[cfg_attr(router_loom, derive(Default))]
pub(crate) struct Reclaimer {
    #[cfg(not(router_loom))]
    returned: (
        crossbeam_channel::Sender<Returned>,
        crossbeam_channel::Receiver<Returned>,
    ),
    /// A batch that came back and is being freed a few entries at a time.
    #[cfg(not(router_loom))]
    freeing: Option<Returned>,
}

#[cfg(not(router_loom))]
impl Default for Reclaimer {
    fn default() -> Self {
        Self {
            returned: crossbeam_channel::unbounded(),
            freeing: None,
        }
    }
}

impl Reclaimer {
    /// Defers handing `batch` back to this reclaimer until its grace period has passed.
    pub(crate) fn hand_off(&self, batch: &mut Unlinked, guard: &Guard) {
        let entries = std::mem::take(&mut batch.0);
        if entries.is_empty() {
            return;
        }
        #[cfg(not(router_loom))]
        {
            let back = self.returned.0.clone();
            // A failed send (the evictor has gone) drops the batch here, which frees it.
            guard.defer(move || drop(back.send(Returned(entries))));
        }
        #[cfg(router_loom)]
        guard.defer(move || drop(Returned(entries)));
        // Into the global queue now, where any thread's next collect can run it, rather than
        // when this thread's local bag fills.
        guard.flush();
    }

    /// Frees every batch that has come back, in this thread.
    pub(crate) fn free_returned(&mut self) {
        #[cfg(not(router_loom))]
        {
            self.freeing = None;
            self.returned.1.try_iter().for_each(drop);
        }
    }

    /// Frees up to `count` entries of the batches that have come back, in this thread; returns
    /// how many it freed.
    pub(crate) fn free_some(&mut self, count: usize) -> usize {
        #[cfg_attr(router_loom, allow(unused_mut))]
        let mut freed = 0;
        #[cfg(not(router_loom))]
        while freed < count {
            if self.freeing.is_none() {
                self.freeing = self.returned.1.try_recv().ok();
            }
            let Some(batch) = &mut self.freeing else {
                break;
            };
            let n = batch.free_some(count - freed);
            if n == 0 {
                self.freeing = None;
            }
            freed += n;
        }
        #[cfg(router_loom)]
        let _ = count;
        freed
    }
}
