//! Eviction in pieces: the evictor opens a pass, and requests run it a few microseconds at a
//! time.
//!
//! A whole pass (walk the tree, then detach the least recently used tenants) takes 60–170 us.
//! Run by the evictor thread on cores that routing keeps busy, it lands inside some decision,
//! which then waits for all of it. So the evictor only opens the pass; each request that
//! finds it open runs one bounded piece (`PACED_PIECE_WORK`) after its own decision, and the
//! piece that completes the pass closes it. It does not wake the evictor: a wake is a futex
//! syscall and an IPI, 16-24 us in the median on the KVM guests we measure on (up to 135 us),
//! inside that request. The evictor, still holding its anchor, finds the pass closed when the
//! next crossing of the budget wakes it, or at `PACED_DEADLINE`, and unpins. If requests do
//! not finish a pass within `PACED_DEADLINE` the evictor finishes it itself.
//!
//! **The anchor.** Between pieces the pass keeps raw node pointers (its walk). Nothing of the
//! tree's is reference-counted, so what keeps them allocated is a guard the evictor pins before
//! `open_paced` and keeps pinned until `close_paced` returns, even while it sleeps: the anchor.
//! Every pointer a pass holds was loaded after the anchor was pinned, from a shard root or from
//! a node the pass already held, so every node and array it reaches was still linked into the
//! tree after that pin (a replaced node's frozen children pass to its successor, and an
//! unlinked node has none). Whatever is retired after a guard is pinned is freed only after
//! that guard unpins (crossbeam-epoch defers it at least two epochs, and the epoch cannot
//! advance twice past a pinned guard). Each piece also pins its own guard, for the loads it
//! makes.
//!
//! **The lock.** The pass sits behind a `Mutex` that requests only `try_lock`: a request that
//! finds it taken skips its piece, so no request ever waits for another, or for the evictor.
//! `close_paced` takes the lock (it may wait for a piece in progress, a few microseconds) and
//! stops the pass before it returns, so no piece reads the pointers after the anchor unpins: a
//! piece runs only on a pass that is not done, and a pass is not done only between
//! `open_paced` and its close (by its last piece, or by `close_paced`, which the evictor calls
//! before it unpins either way). The piece that closes a pass hands its unlinked entries off
//! under its own guard: what is deferred must outlive only the readers pinned before the
//! unlinks, and the piece's guard was pinned after every unlink of the pass.
//!
//! Orderings: `open` is a hint that saves requests the `try_lock` when no pass is open; the
//! mutex orders everything the pass holds, so `Relaxed` suffices. A request that reads a stale
//! `false` skips a piece; one that reads a stale `true` finds the pass done under the lock.
//!
//! What a pass unlinks goes into its batch (`reclaim.rs`), handed off at close under the anchor;
//! after the grace period the pieces of later passes free it, `PACED_FREE_ENTRIES` at a time
//! (the evictor frees what is left when it ticks).

use super::maintain::Pass;
use super::{EvictionStats, Tree};
use crate::constants::{PACED_FREE_ENTRIES, PACED_PIECE_WORK, PACED_SCALE_HEADROOMS};
use crate::sync::{AtomicBool, Mutex, MutexGuard, Ordering};
use crossbeam_epoch::{self as epoch, Guard};

/// A tree's paced pass, and whether one is open.
pub(crate) struct PacedEviction {
    open: AtomicBool,
    pass: Mutex<Paced>,
}

/// The pass, how far it trims the tree below its budget, and whether it is open (opened and
/// not yet closed, by its last piece or by the evictor).
#[derive(Default)]
struct Paced {
    pass: Pass,
    headroom: usize,
    open: bool,
}

impl PacedEviction {
    pub(crate) fn new() -> Self {
        Self {
            open: AtomicBool::new(false),
            pass: Mutex::new(Paced::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Paced> {
        // A piece that panicked left the pass as it was between two steps; carry on with it.
        self.pass
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Tree {
    /// Opens a paced pass toward `target` total chars, `headroom` chars below the budget (a
    /// pass already open starts over).
    ///
    /// # Safety
    /// The calling thread must hold a guard, pinned before this call, that stays pinned until
    /// `close_paced` returns (the anchor), and must call `close_paced` before it unpins.
    pub(crate) unsafe fn open_paced(&self, target: usize, headroom: usize) {
        let mut paced = self.engine.paced.lock();
        paced.pass.start(target);
        paced.headroom = headroom.max(1);
        paced.open = true;
        self.engine.paced.open.store(true, Ordering::Relaxed);
    }

    /// Whether a paced pass is open with work left.
    pub(crate) fn paced_open(&self) -> bool {
        self.engine.paced.open.load(Ordering::Relaxed)
    }

    /// Runs one piece of the open pass, unless none is open or another thread is running a
    /// piece. The piece that completes the pass also closes it: it hands what the pass
    /// unlinked to the reclaimer (under its own guard: every unlink is behind it) and returns
    /// what the pass did, for the caller to record.
    ///
    /// A piece is `PACED_PIECE_WORK` times the number of whole `PACED_SCALE_HEADROOMS`
    /// headrooms (budget minus target) the tree is over its target, and at least once: when
    /// inserts outrun the pieces (new text on every request), the pieces grow until eviction
    /// keeps up, instead of the tree growing without bound.
    pub(crate) fn step_paced(&self) -> Option<EvictionStats> {
        if !self.paced_open() {
            return None;
        }
        let Ok(mut paced) = self.engine.paced.pass.try_lock() else {
            return None;
        };
        let Paced {
            pass,
            headroom,
            open,
        } = &mut *paced;
        if pass.is_done() {
            return None;
        }
        let over = self.total_chars().saturating_sub(pass.target());
        let work = PACED_PIECE_WORK * (over / (PACED_SCALE_HEADROOMS * *headroom)).max(1);
        // And frees a few of the entries earlier passes unlinked.
        pass.scratch.free_some_unlinked(PACED_FREE_ENTRIES);
        let guard = epoch::pin();
        // SAFETY: the pass is not done, so it is open and the evictor's anchor, pinned before
        // `open_paced`, stays pinned until `close_paced`, which needs the lock this piece holds.
        if !unsafe { self.engine.advance(pass, &guard, work) } {
            return None;
        }
        self.engine.paced.open.store(false, Ordering::Relaxed);
        *open = false;
        pass.scratch.hand_off_unlinked(&guard);
        Some(std::mem::take(&mut pass.stats))
    }

    /// Closes the paced pass unless its last piece has: finishes what is left in this thread
    /// if `finish`, stops it, and hands what it unlinked to the reclaimer under `anchor`.
    /// Returns what the pass did, and whether this call finished work the pass had left; `None`
    /// if no pass was open.
    pub(crate) fn close_paced(
        &self,
        anchor: &Guard,
        finish: bool,
    ) -> Option<(EvictionStats, bool)> {
        let mut paced = self.engine.paced.lock();
        if !std::mem::take(&mut paced.open) {
            return None;
        }
        let pass = &mut paced.pass;
        let finished_here = finish && !pass.is_done();
        if finished_here {
            // SAFETY: the pass is open, so its anchor is still pinned (`open_paced`'s contract:
            // until this call returns).
            unsafe { self.engine.advance(pass, anchor, usize::MAX) };
        }
        pass.stop();
        self.engine.paced.open.store(false, Ordering::Relaxed);
        pass.scratch.hand_off_unlinked(anchor);
        Some((std::mem::take(&mut pass.stats), finished_here))
    }

    /// Frees what earlier paced passes unlinked whose grace period has passed, in this thread.
    pub(crate) fn free_paced(&self) {
        self.engine.paced.lock().pass.scratch.free_unlinked();
    }
}

#[cfg(all(test, not(router_loom)))]
mod tests {
    use crate::{ManualClock, Tree, TreeConfig};
    use crossbeam_epoch as epoch;

    /// A tree of 300 texts under 3 tenants, each recorded at its own tick, so LRU order is
    /// fully determined.
    fn tree() -> (Tree, Vec<String>) {
        let clock = ManualClock::new();
        let tree = Tree::with_config(TreeConfig {
            shards: 4,
            clock: clock.clone().into(),
        })
        .unwrap();
        let texts: Vec<String> = (0..300)
            .map(|i| {
                format!(
                    "{}{i:03} {}",
                    ["sys-a ", "sys-b ", "q "][i % 3],
                    "x".repeat(i % 40)
                )
            })
            .collect();
        for (i, t) in texts.iter().enumerate() {
            clock.advance(1);
            tree.insert(t, ["t0", "t1", "t2"][i % 3]);
        }
        (tree, texts)
    }

    #[test]
    fn a_pass_in_pieces_evicts_what_a_whole_pass_evicts() {
        let (whole, texts) = tree();
        let (paced, _) = tree();
        let target = whole.total_chars() / 2;
        let expected = whole.evict_to_total(target);

        let anchor = epoch::pin();
        // SAFETY: `anchor` stays pinned until after `close_paced`.
        unsafe { paced.open_paced(target, target / 3) };
        let mut pieces = 1;
        let stats = loop {
            if let Some(stats) = paced.step_paced() {
                break stats;
            }
            pieces += 1;
            assert!(pieces < 100_000, "the pass never finished");
        };
        assert!(!paced.paced_open(), "a finished pass is no longer open");
        assert!(
            paced.close_paced(&anchor, true).is_none(),
            "the last piece closed it"
        );
        drop(anchor);

        assert!(pieces > 20, "{pieces} pieces: the pass was not cut up");
        assert_eq!(stats, expected);
        assert_eq!(paced.total_chars(), whole.total_chars());
        for t in &texts {
            assert_eq!(paced.prefix_match(t), whole.prefix_match(t), "{t:?}");
        }
        assert!(
            paced.step_paced().is_none(),
            "no piece runs on a closed pass"
        );
    }

    #[test]
    fn closing_finishes_a_pass_no_request_ran() {
        let (tree, _) = tree();
        let target = tree.total_chars() / 2;
        let anchor = epoch::pin();
        // SAFETY: `anchor` stays pinned until after `close_paced`.
        unsafe { tree.open_paced(target, target / 3) };
        let (stats, finished_here) = tree.close_paced(&anchor, true).unwrap();
        assert!(finished_here);
        assert!(stats.nodes_removed > 0);
        assert!(tree.total_chars() <= target);

        // SAFETY: as above.
        unsafe { tree.open_paced(0, 1) };
        let (stats, finished_here) = tree.close_paced(&anchor, false).unwrap();
        assert!(!finished_here);
        assert_eq!(
            stats.nodes_removed, 0,
            "a pass closed unfinished does nothing more"
        );
        assert!(tree.total_chars() > 0);
        assert!(
            tree.close_paced(&anchor, true).is_none(),
            "nothing open, nothing to close"
        );
    }
}

/// Loom model of the anchor protocol, run by `.ci/loom` (the crate's own tests under
/// `--cfg router_loom`): it needs `open_paced` and `step_paced`, which are not public.
#[cfg(all(test, router_loom))]
mod loom_model {
    use crate::sync::{thread, Arc};
    use crate::{ManualClock, Tree, TreeConfig};
    use crossbeam_epoch as epoch;

    /// A request runs pieces of a paced pass (two work units each under loom) while the
    /// anchor's thread splits the node the pass walked (an insert), tries to collect what the
    /// split retired, and closes the pass. Every interleaving of the pieces with the split's
    /// freeze, swap and retirement and with the close ends with exact counts. (Loom does not
    /// see a read of freed memory: that the anchor keeps what a pass holds allocated is what
    /// `tests/stress.rs` checks under AddressSanitizer, which catches a dropped anchor.) Every interleaving ends with
    /// exact counts, and what the split's tenant still matches is a prefix of its text.
    #[test]
    fn pieces_beside_a_split_under_the_anchor() {
        loom::model(|| {
            let tree = Arc::new(
                Tree::with_config(TreeConfig {
                    shards: 1,
                    clock: ManualClock::new().into(),
                })
                .unwrap(),
            );
            tree.insert("abcd", "t0");
            let t1 = tree.tenant_id("t1").unwrap();
            let anchor = epoch::pin();
            // SAFETY: `anchor` stays pinned until after `close_paced` below.
            unsafe { tree.open_paced(0, 1) };
            let request = {
                let tree = tree.clone();
                thread::spawn(move || {
                    for _ in 0..3 {
                        tree.step_paced();
                    }
                })
            };
            tree.insert_for("abX", t1).unwrap();
            // Try to advance the epoch and collect what the split retired: between two pieces
            // only the anchor holds it back.
            for _ in 0..2 {
                epoch::pin().flush();
            }
            request.join().unwrap();
            tree.close_paced(&anchor, true);
            drop(anchor);
            assert!("abX".starts_with(&tree.prefix_match_tenant("abX", "t1")));
            let counted = tree.get_tenant_char_count();
            assert_eq!(counted, tree.get_used_size_per_tenant());
            assert_eq!(counted.values().sum::<usize>(), tree.total_chars());
        });
    }
}
