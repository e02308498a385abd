//! Eviction in pieces: requests open a tree's pass when they push it over its budget, and run
//! it a few microseconds at a time.
//!
//! A whole pass (walk the tree, then detach the least recently used tenants) takes 60–170 us.
//! Run by a thread of its own on cores that routing keeps busy, it lands inside some decision,
//! which then waits for all of it; even a thread that only opens the pass and sleeps costs a
//! wake per pass (a futex syscall and an IPI: 16-24 us in the median on the KVM guests we
//! measure on, up to 135 us, inside the request that sends it) and a preempted request where it
//! runs. So the request that finds the tree over budget opens the pass itself
//! (`try_open_paced`), each request that finds it open runs one bounded piece
//! (`PACED_PIECE_WORK`) after its own decision, and the piece that completes the pass closes
//! it. No thread is woken per pass. The evictor only watches (`watch_paced`): a pass it finds
//! open at two looks in a row (no traffic runs it) it finishes and closes itself, and it closes
//! what is open when it stops.
//!
//! **The anchor.** Between pieces the pass keeps raw node pointers (its walk). Nothing of the
//! tree's is reference-counted, so what keeps them allocated is a guard pinned when the pass
//! opens and kept pinned until it closes, across pieces in any threads: the anchor. It is
//! pinned on the tree's own epoch participant (a crossbeam-epoch `LocalHandle` registered for
//! the tree when its first pass opens, pinned only as the anchor), which lives with the pass
//! behind its mutex, so the anchor moves from the thread that opens the pass to the one that
//! closes it. Every pointer a pass holds was loaded after the anchor was pinned, from a shard
//! root or from a node the pass already held, so every node and array it reaches was still linked into the tree after
//! that pin (a replaced node's frozen children pass to its successor, and an unlinked node has
//! none). Whatever is retired after a guard is pinned is freed only after that guard unpins
//! (crossbeam-epoch defers it at least two epochs, and the epoch cannot advance twice past a
//! pinned participant). Each piece also pins its own guard, for the loads it makes.
//!
//! **The lock.** The pass sits behind a `Mutex` that requests only `try_lock`: a request that
//! finds it taken skips its piece (or its opening), so no request ever waits for another, or
//! for the evictor. A pass is open exactly while its anchor is pinned: both change together,
//! under the lock, at open and at close (by the last piece, or by the evictor). A piece runs
//! only on an open pass, so no piece reads the pointers after the anchor unpins. What the pass
//! unlinked is handed off at close under the closer's own guard (a deferral needs only to come
//! after the unlinks, which the lock orders before it).
//!
//! Orderings: `open` is a hint that saves requests the `try_lock` when no pass is open; the
//! mutex orders everything the pass holds, so `Relaxed` suffices. A request that reads a stale
//! `false` skips a piece (or opens nothing: `try_open_paced` looks again under the lock); one
//! that reads a stale `true` finds the pass closed under the lock. A request that opens no pass
//! (it lost the lock, or read `open` stale) may leave the tree over budget with no pass coming:
//! the evictor's watch, which reads the pass under the lock and the tree's size after its
//! `SeqCst` fence in a Dekker handshake with every request that finds the tree over budget
//! (`evictor.rs`), runs a whole pass on it.
//!
//! What a pass unlinks goes into its batch (`reclaim.rs`), handed off at close; after the grace
//! period the pieces of later passes free it, `PACED_FREE_ENTRIES` at a time (the evictor frees
//! what is left when it ticks).

use super::maintain::Pass;
use super::{EvictionStats, Tree};
use crate::constants::{PACED_FREE_ENTRIES, PACED_PIECE_WORK, PACED_SCALE_HEADROOMS};
use crate::sync::{AtomicBool, Mutex, MutexGuard, Ordering};
use crossbeam_epoch::{self as epoch, Guard, LocalHandle};

/// A tree's paced pass, and whether one is open.
pub(crate) struct PacedEviction {
    open: AtomicBool,
    pass: Mutex<Paced>,
}

/// The pass, how far it trims the tree below its budget, its anchor while it is open, and what
/// the evictor's watch needs.
struct Paced {
    pass: Pass,
    headroom: usize,
    /// Pinned on `participant` while the pass is open (declared first: dropped before it).
    anchor: Option<Guard>,
    /// Passes opened so far, and how many had been when the evictor last looked.
    opened: u64,
    watched: u64,
    /// The tree's own epoch participant, pinned only as the anchor; registered when the tree's
    /// first pass opens (a tree that never exceeds a budget adds nothing to the participants
    /// every epoch advance scans).
    participant: Option<LocalHandle>,
}

// SAFETY: the participant and the guard pinned on it are `!Send` only because they point to the
// participant's record, which has no tie to a thread; only the holder of the mutex around
// `Paced` uses them, and the mutex orders every use before the next.
unsafe impl Send for Paced {}

/// What a whole pass under the lock does with a paced pass it finds open.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) enum OpenPass {
    /// Leaves it to the requests running it (the evictor's tick: its watch finishes passes
    /// that requests stopped running).
    Leave,
    /// Finishes and closes it (`run_eviction`: every tree within its budget now).
    Finish,
}

/// What the evictor's look at a tree's pass found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Watch {
    /// No pass open, none opened since the last look, and the tree within its budget.
    Idle,
    /// A pass opened since the last look (open now or not).
    Active,
    /// A pass open since before the last look, which this look finished and closed.
    Finished(EvictionStats),
    /// No pass open or opened since the last look, but the tree over its budget (the request
    /// that pushed it over lost the pass's lock, or read a pass open that then closed): this
    /// look ran a whole pass under the lock.
    Whole(EvictionStats),
}

impl PacedEviction {
    pub(crate) fn new() -> Self {
        Self {
            open: AtomicBool::new(false),
            pass: Mutex::new(Paced {
                pass: Pass::default(),
                headroom: 1,
                anchor: None,
                opened: 0,
                watched: 0,
                participant: None,
            }),
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
    /// Opens a paced pass that trims the tree from over `budget` to `target` total chars, and
    /// pins its anchor; `false` if the tree is within its budget, a pass is open already or
    /// another thread holds the pass. The budget is checked under the lock: every pass closed
    /// before released it, so what they evicted is seen, and a request that read a stale total
    /// opens no empty pass.
    pub(crate) fn try_open_paced(&self, budget: usize, target: usize) -> bool {
        let Ok(mut paced) = self.engine.paced.pass.try_lock() else {
            return false;
        };
        if paced.anchor.is_some() || self.total_chars() <= budget {
            return false;
        }
        // First: every pointer the pass loads comes after the anchor's pin.
        let participant = paced
            .participant
            .get_or_insert_with(|| epoch::default_collector().register());
        paced.anchor = Some(participant.pin());
        paced.pass.start(target);
        paced.headroom = budget.saturating_sub(target).max(1);
        paced.opened += 1;
        self.engine.paced.open.store(true, Ordering::Relaxed);
        true
    }

    /// Whether a paced pass is open.
    pub(crate) fn paced_open(&self) -> bool {
        self.engine.paced.open.load(Ordering::Relaxed)
    }

    /// Runs one piece of the open pass, unless none is open or another thread is running a
    /// piece. The piece that completes the pass also closes it, and returns what the pass
    /// did, for the caller to record.
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
        // No anchor: no pass open.
        paced.anchor.as_ref()?;
        let over = self.total_chars().saturating_sub(paced.pass.target());
        let work = PACED_PIECE_WORK * (over / (PACED_SCALE_HEADROOMS * paced.headroom)).max(1);
        // And frees a few of the entries earlier passes unlinked.
        paced.pass.scratch.free_some_unlinked(PACED_FREE_ENTRIES);
        let guard = epoch::pin();
        // SAFETY: the pass is open, so its anchor, pinned before `pass.start`, stays pinned
        // until it closes, which needs the lock this piece holds.
        if !unsafe { self.engine.advance(&mut paced.pass, &guard, work) } {
            return None;
        }
        Some(self.close_paced_locked(&mut paced, &guard, false))
    }

    /// Closes the open pass as it stands, or after finishing its work in this thread if
    /// `finish`. Returns what the pass did; `None` if no pass was open.
    pub(crate) fn close_paced(&self, finish: bool) -> Option<EvictionStats> {
        let mut paced = self.engine.paced.lock();
        // No anchor: no pass open.
        paced.anchor.as_ref()?;
        let guard = epoch::pin();
        Some(self.close_paced_locked(&mut paced, &guard, finish))
    }

    /// The evictor's look: finishes and closes a pass that was open at its previous look
    /// already (no traffic runs it), runs a whole pass from over `budget` to `target` if no
    /// pass is open or was opened since and the tree is over its budget (no request will open
    /// one if none comes), and notes the passes opened since.
    pub(crate) fn watch_paced(&self, budget: usize, target: usize) -> Watch {
        let mut paced = self.engine.paced.lock();
        let fresh = paced.opened != paced.watched;
        paced.watched = paced.opened;
        match (paced.anchor.is_some(), fresh) {
            (false, false) if self.total_chars() > budget => {
                Watch::Whole(self.whole_pass_locked(&mut paced, target))
            }
            (false, false) => Watch::Idle,
            (_, true) => Watch::Active,
            (true, false) => {
                let guard = epoch::pin();
                Watch::Finished(self.close_paced_locked(&mut paced, &guard, true))
            }
        }
    }

    /// Closes the open pass `paced` holds (finishing its work under `guard` first if
    /// `finish`): stops it, hands off what it unlinked under `guard` and unpins the anchor.
    fn close_paced_locked(&self, paced: &mut Paced, guard: &Guard, finish: bool) -> EvictionStats {
        if finish && !paced.pass.is_done() {
            // SAFETY: the pass is open, so its anchor stays pinned until the end of this call.
            unsafe { self.engine.advance(&mut paced.pass, guard, usize::MAX) };
        }
        paced.pass.stop();
        self.engine.paced.open.store(false, Ordering::Relaxed);
        paced.pass.scratch.hand_off_unlinked(guard);
        paced.anchor = None;
        std::mem::take(&mut paced.pass.stats)
    }

    /// Runs a whole pass from over `budget` to `target` in this thread, holding the pass's lock
    /// throughout (no request sees it, so no anchor: every pointer it holds is loaded under this
    /// call's guard). What it unlinks goes to the tree's reclaimer, like a paced pass's. A paced
    /// pass found open is left to requests (`None`), or with [`OpenPass::Finish`] finished and
    /// closed here first, its stats counted in the result. `None` also if the tree is within
    /// its budget and no pass was closed.
    pub(crate) fn evict_whole_locked(
        &self,
        budget: usize,
        target: usize,
        open: OpenPass,
    ) -> Option<EvictionStats> {
        let mut paced = self.engine.paced.lock();
        let mut closed = None;
        if paced.anchor.is_some() {
            if open == OpenPass::Leave {
                return None;
            }
            let guard = epoch::pin();
            closed = Some(self.close_paced_locked(&mut paced, &guard, true));
        }
        if self.total_chars() <= budget {
            return closed;
        }
        let mut stats = closed.unwrap_or_default();
        stats.add(self.whole_pass_locked(&mut paced, target));
        Some(stats)
    }

    /// A whole pass to `target` on the tree's own pass, whose lock the caller holds with no
    /// pass open; returns what it did.
    fn whole_pass_locked(&self, paced: &mut Paced, target: usize) -> EvictionStats {
        self.engine.run_whole_pass(&mut paced.pass, target);
        std::mem::take(&mut paced.pass.stats)
    }

    /// Frees what earlier paced passes unlinked whose grace period has passed, in this thread.
    pub(crate) fn free_paced(&self) {
        self.engine.paced.lock().pass.scratch.free_unlinked();
    }
}

/// For the policy's tests: a request's view of a pass's lock that another thread holds.
#[cfg(all(test, not(router_loom)))]
impl Tree {
    /// Runs `f` while this thread holds the pass's lock, as a piece or the evictor's look does.
    pub(crate) fn with_pass_locked<R>(&self, f: impl FnOnce() -> R) -> R {
        let _held = self.engine.paced.lock();
        f()
    }
}

#[cfg(all(test, not(router_loom)))]
mod tests {
    use super::{OpenPass, Watch};
    use crate::{ManualClock, Tree, TreeConfig};

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

        let budget = target + target / 3;
        assert!(
            !paced.try_open_paced(paced.total_chars(), target),
            "no pass on a tree within its budget"
        );
        let registered = || paced.engine.paced.lock().participant.is_some();
        assert!(!registered(), "no epoch participant before the first pass");
        assert!(paced.try_open_paced(budget, target));
        assert!(registered());
        assert!(!paced.try_open_paced(budget, target), "one pass at a time");
        let mut pieces = 1;
        // Each piece on its own thread: the anchor keeps the pass's pointers across threads.
        let stats = loop {
            if let Some(stats) =
                std::thread::scope(|s| s.spawn(|| paced.step_paced()).join()).unwrap()
            {
                break stats;
            }
            pieces += 1;
            assert!(pieces < 100_000, "the pass never finished");
        };
        assert!(!paced.paced_open(), "a finished pass is no longer open");
        assert!(
            paced.close_paced(true).is_none(),
            "the last piece closed it"
        );

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
        assert!(tree.try_open_paced(target + target / 3, target));
        let stats = tree.close_paced(true).unwrap();
        assert!(stats.nodes_removed > 0);
        assert!(tree.total_chars() <= target);

        assert!(tree.try_open_paced(1, 0));
        let stats = tree.close_paced(false).unwrap();
        assert_eq!(
            stats.nodes_removed, 0,
            "a pass closed unfinished does nothing more"
        );
        assert!(tree.total_chars() > 0);
        assert!(
            tree.close_paced(true).is_none(),
            "nothing open, nothing to close"
        );
    }

    #[test]
    fn a_whole_pass_under_the_lock_leaves_open_passes_alone() {
        let (tree, _) = tree();
        let total = tree.total_chars();
        assert!(
            tree.evict_whole_locked(total, 0, OpenPass::Leave).is_none(),
            "within budget"
        );
        assert!(tree.try_open_paced(total - 1, total / 2));
        assert!(
            tree.evict_whole_locked(total - 1, total / 2, OpenPass::Leave)
                .is_none(),
            "a pass is open"
        );
        tree.close_paced(false);
        let stats = tree
            .evict_whole_locked(total - 1, total / 2, OpenPass::Leave)
            .unwrap();
        assert!(stats.nodes_removed > 0);
        assert!(tree.total_chars() <= total / 2);
        assert!(!tree.paced_open());
    }

    #[test]
    fn a_whole_pass_under_the_lock_can_finish_an_open_pass_first() {
        let (whole, _) = tree();
        let (tree, _) = tree();
        let total = tree.total_chars();
        let expected = whole.evict_to_total(total / 2);
        assert!(tree.try_open_paced(total - 1, total / 2));
        assert!(tree.step_paced().is_none(), "one piece does not finish it");
        let stats = tree
            .evict_whole_locked(total - 1, total / 2, OpenPass::Finish)
            .unwrap();
        assert!(!tree.paced_open(), "closed");
        assert_eq!(stats, expected, "the pass's pieces counted, once");
        assert_eq!(tree.total_chars(), whole.total_chars());
        assert!(
            tree.evict_whole_locked(total / 2, 0, OpenPass::Finish)
                .is_none(),
            "within budget, nothing open"
        );
    }

    #[test]
    fn the_watch_finishes_only_a_pass_it_saw_open_before() {
        let (tree, _) = tree();
        let total = tree.total_chars();
        // Looks with the budget at the tree's size: a tree within it.
        let look = || tree.watch_paced(total, total / 2);
        assert_eq!(look(), Watch::Idle);

        // Opened and finished by requests between two looks: active, then idle.
        assert!(tree.try_open_paced(total - 9, total - 10));
        while tree.step_paced().is_none() {}
        assert_eq!(look(), Watch::Active);
        assert_eq!(look(), Watch::Idle);

        // Left open: the first look notes it, the second finishes it.
        assert!(tree.try_open_paced(total / 2 + 1, total / 2));
        tree.step_paced();
        assert_eq!(look(), Watch::Active);
        let Watch::Finished(stats) = look() else {
            panic!("a pass open at two looks is finished by the second");
        };
        assert!(stats.nodes_removed > 0);
        assert!(!tree.paced_open());
        assert!(tree.total_chars() <= total / 2);
        assert_eq!(look(), Watch::Idle);
    }

    #[test]
    fn the_watch_runs_a_whole_pass_on_a_tree_over_budget_with_no_pass() {
        let (whole, _) = tree();
        let (tree, _) = tree();
        let total = tree.total_chars();
        let expected = whole.evict_to_total(total / 2);
        // A pass opened since the last look is left to requests, even with the tree over.
        assert!(tree.try_open_paced(total - 1, total - 2));
        tree.close_paced(false);
        assert_eq!(tree.watch_paced(total - 1, total / 2), Watch::Active);
        assert_eq!(
            tree.watch_paced(total - 1, total / 2),
            Watch::Whole(expected)
        );
        assert!(!tree.paced_open(), "a whole pass leaves no pass open");
        assert_eq!(tree.total_chars(), whole.total_chars());
        assert_eq!(tree.watch_paced(total - 1, total / 2), Watch::Idle);
    }
}

/// Loom model of the anchor protocol, run by `.ci/loom` (the crate's own tests under
/// `--cfg router_loom`): it needs `try_open_paced` and `step_paced`, which are not public.
#[cfg(all(test, router_loom))]
mod loom_model {
    use crate::sync::{thread, Arc};
    use crate::{ManualClock, Tree, TreeConfig};
    use crossbeam_epoch as epoch;

    /// A one-shard tree holding `text` for tenant `t0`.
    fn one_shard_tree_with(text: &str) -> Arc<Tree> {
        let tree = Tree::with_config(TreeConfig {
            shards: 1,
            clock: ManualClock::new().into(),
        })
        .unwrap();
        tree.insert(text, "t0");
        Arc::new(tree)
    }

    /// A request runs pieces of a paced pass (two work units each under loom) that another
    /// thread opened (pinning the anchor), while that thread splits the node the pass walked
    /// (an insert), tries to collect what the split retired, and closes the pass. Every
    /// interleaving of the pieces with the split's freeze, swap and retirement and with the
    /// close ends with exact counts, and what the split's tenant still matches is a prefix of
    /// its text. (Loom does not see a read of freed memory: that the anchor keeps what a pass
    /// holds allocated is what `tests/stress.rs` checks under AddressSanitizer, which catches a
    /// dropped anchor.)
    /// The anchor the other way round: a thread opens the pass (registering the tree's
    /// participant and pinning the anchor) and goes on pinning and flushing its own guards,
    /// while this thread runs the pass's pieces until it closes, unpinning the anchor here.
    /// Every interleaving ends with the tree emptied.
    #[test]
    fn a_pass_opened_in_another_thread_is_run_and_closed_here() {
        loom::model(|| {
            let tree = one_shard_tree_with("abcd");
            let opener = {
                let tree = tree.clone();
                thread::spawn(move || {
                    assert!(tree.try_open_paced(1, 0));
                    for _ in 0..2 {
                        epoch::pin().flush();
                    }
                })
            };
            while tree.total_chars() > 0 {
                tree.step_paced();
                thread::yield_now();
            }
            opener.join().unwrap();
            for _ in 0..2 {
                epoch::pin().flush();
            }
            assert_eq!(tree.total_chars(), 0);
        });
    }

    #[test]
    fn pieces_beside_a_split_under_the_anchor() {
        loom::model(|| {
            let tree = one_shard_tree_with("abcd");
            let t1 = tree.tenant_id("t1").unwrap();
            assert!(tree.try_open_paced(1, 0));
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
            tree.close_paced(true);
            assert!("abX".starts_with(&tree.prefix_match_tenant("abX", "t1")));
            let counted = tree.get_tenant_char_count();
            assert_eq!(counted, tree.get_used_size_per_tenant());
            assert_eq!(counted.values().sum::<usize>(), tree.total_chars());
        });
    }
}
