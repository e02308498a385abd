//! Whole-tree work: eviction, tenant removal, size reports, and freeing the tree.
//!
//! These walk the tree pinned, like a reader, and change it only through the same slot CASes
//! and the replace protocol the insert path uses (see `node.rs`), so they run beside matches
//! and inserts without stopping them. A node they picked may be replaced under them (split by
//! an insert): its slots are then frozen, the detach reports `Frozen`, and the node is skipped
//! for this pass; the next pass sees its successor. Unlinking re-checks, on the frozen snapshot,
//! that the node has no children and no tenant, so a node an insert just extended is never lost.
//! What a pass unlinks goes into its batch and is freed by the pass's owner after the grace
//! period (`reclaim.rs`), not by whichever request collects the epoch's garbage next.
//!
//! A pass over the whole tree ([`Pass`]) can also run in pieces: `Engine::advance` stops after
//! a given amount of work and picks up where it stopped, which is how requests share the
//! evictor's passes (`paced.rs` says when the pointers a pass keeps between pieces are valid).

use super::children;
use super::node::{finish_replace, Intent, Node, Retire};
use super::reclaim::{Reclaimer, Unlinked};
use super::tenants::{self, Detach};
use super::Engine;
use crate::clock::MAX_TICK;
use crate::constants::{EVICTION_PASSES, MIN_LRU_BATCH, PACED_LINEAR_ITEMS, PACED_POP_WORK};
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
    pub chars_freed: usize,
    /// Nodes unlinked because no tenant held them any more.
    pub nodes_removed: usize,
}

impl EvictionStats {
    /// Adds `other`'s counts to these.
    pub(crate) fn add(&mut self, other: EvictionStats) {
        self.detached += other.detached;
        self.chars_freed += other.chars_freed;
        self.nodes_removed += other.nodes_removed;
    }
}

/// A node seen by a walk, with its parent's index (`None` for children of a root). Raw
/// pointers, so the buffer that holds them can outlive one guard: a pass in pieces reads them
/// under each piece's guard while the guard it began under stays pinned (`Engine::advance`),
/// and a new pass clears them before it walks.
struct Seen {
    node: *const Node,
    parent: Option<usize>,
    root: *const Node,
}

/// The buffers an eviction pass works in, all of which grow with the tree. Each tree keeps one
/// in its paced pass (`paced.rs`) for its whole life, so in steady state a pass allocates none
/// of them again (what
/// it still allocates is the child arrays that unlinking rebuilds). Under an insert-heavy load
/// passes run hundreds of times a second, and each used to regrow and free buffers of a few
/// hundred KiB.
#[derive(Default)]
pub(crate) struct EvictionScratch {
    seen: Vec<Seen>,
    stack: Vec<(*const Node, Option<usize>)>,
    queue: LruQueue,
    /// Per walk index, the last walk index in that node's subtree (see `Candidate`).
    ends: Vec<u32>,
    /// Walk indexes of empty leaves: nodes no candidate reaches, left by an unlink that could
    /// not finish (its parent froze) or by a replacement that copied a node its tenants had
    /// left.
    empty: Vec<usize>,
    /// What the current pass unlinked, handed off to `reclaimer` at its end.
    unlinked: Unlinked,
    reclaimer: Reclaimer,
}

impl EvictionScratch {
    /// Frees what earlier passes unlinked whose grace period has passed, in this thread.
    pub(super) fn free_unlinked(&mut self) {
        self.reclaimer.free_returned();
    }

    /// Frees up to `count` entries of what earlier passes unlinked whose grace period has
    /// passed, in this thread; returns how many it freed.
    pub(super) fn free_some_unlinked(&mut self, count: usize) -> usize {
        self.reclaimer.free_some(count)
    }

    /// Hands what this pass unlinked to the reclaimer, to be freed after the grace period.
    pub(super) fn hand_off_unlinked(&mut self, guard: &Guard) {
        self.reclaimer.hand_off(&mut self.unlinked, guard);
    }
}

/// Where a pass stands: walking the tree (queueing candidates), unlinking the empty leaves it
/// found, ordering the candidates (three linear steps), or taking them in LRU order until the
/// tree is at or under its target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Done,
    Walking,
    /// Unlinking the empty leaves the walk found.
    Sweeping,
    /// Computing the walk's subtree ends, from its last node backwards.
    Ending,
    /// Completing the queued candidates' keys with them.
    Sealing,
    /// Building the candidates' heap.
    Building,
    Evicting,
}

/// One pass toward a target total, resumable: `Engine::advance` runs it a piece at a time.
/// Between `start` and the end of the pass it holds node pointers (the walk's), which are
/// valid only as long as a guard pinned before `start` stays pinned; `stop` forgets them.
#[derive(Default)]
pub(super) struct Pass {
    phase: Phase,
    target: usize,
    /// The next shard root whose subtree the walk enters.
    next_root: usize,
    /// Where a linear phase (ending, sealing) stands.
    cursor: usize,
    pub(super) stats: EvictionStats,
    pub(super) scratch: EvictionScratch,
}

// SAFETY: its raw pointers are nodes of a tree shared by all threads (`Node` is `Sync`), read
// only under `Engine::advance`'s contract, whichever thread holds the pass.
unsafe impl Send for Pass {}

impl Pass {
    /// Starts a pass toward `target` total chars (the last pass's nodes are forgotten; its
    /// stats and unlinked batch are kept until taken).
    pub(super) fn start(&mut self, target: usize) {
        self.stop();
        self.phase = Phase::Walking;
        self.target = target;
        self.next_root = 0;
        self.scratch.empty.clear();
        self.scratch.queue.refill();
    }

    /// The total the pass trims the tree to.
    pub(super) fn target(&self) -> usize {
        self.target
    }

    /// Whether the pass has nothing left to do (or was never started).
    pub(super) fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Ends the pass where it stands, forgetting its node pointers.
    pub(super) fn stop(&mut self) {
        self.phase = Phase::Done;
        self.scratch.seen.clear();
        self.scratch.stack.clear();
    }
}

/// A (tenant, node) pair that may be evicted, packed so that ascending order is eviction order:
/// oldest tick first and, among equal ticks, the walk's nodes in post-order (every node after
/// its descendants, subtrees in walk order). An ancestor's tick is never older than a
/// descendant's (every refresh and attach runs down the whole path with one tick), so popping
/// in this order meets a node's tenant only after every child's. (A refresh that loses a CAS is
/// dropped, which can leave an ancestor older than a child; the ancestor is then skipped while
/// the child holds the tenant, and the next pass finds it.)
///
/// Post-order is (last walk index in the node's subtree, walk index descending), which the
/// queue fills in once the walk is complete. Bits: tick (48) | subtree end (32) | inverted walk
/// index (32) | tenant index (16). Walk indexes fit 32 bits: 2^32 nodes would take 400 GiB.
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

/// Candidates handed out in ascending order, in one of two ways.
///
/// - **Sorted batches**, for a pass run whole: a pass takes the oldest few hundred or thousand
///   of a tree's candidates, so the queue selects the oldest batch (linear), sorts only it, and
///   selects a twice larger batch from the rest when it runs out. The first batch is a little
///   more than the last pass took, and never less than an eighth of the candidates.
/// - **A binary min-heap**, for a pass run in pieces: built in steps (`build_some` sifts a
///   given number of nodes and resumes where it stopped), each `pop` O(log n), so no step sorts
///   a tree's thousands of candidates at once. Its pops cost more than a sorted batch's (a
///   whole pass over the Mooncake tree took 1.45x as long with the heap), so whole passes keep
///   the batches.
#[derive(Default)]
struct LruQueue {
    items: Vec<Candidate>,
    /// Heap: the heap is `items[..len]`, what `pop` took lies past it. Batches: `len` is 0.
    len: usize,
    /// Heap building sifts down the nodes below this index, last first: built at 0.
    unbuilt: usize,
    /// Batches: `items[..sorted]` is sorted and no greater than anything after it; `next` is
    /// the next to hand out.
    batched: bool,
    sorted: usize,
    next: usize,
    batch: usize,
    /// How many the previous batched fill's consumer took.
    last_taken: usize,
}

impl LruQueue {
    fn refill(&mut self) -> &mut Vec<Candidate> {
        if self.batched {
            self.last_taken = self.next;
        }
        self.items.clear();
        (self.len, self.unbuilt, self.batched, self.sorted, self.next) = (0, 0, false, 0, 0);
        &mut self.items
    }

    fn queued(&self) -> usize {
        self.items.len()
    }

    /// Completes the keys of the candidates in `range` from their walk's subtree ends.
    fn seal(&mut self, ends: &[u32], range: std::ops::Range<usize>) {
        for c in &mut self.items[range] {
            *c = c.with_subtree_end(ends[c.index()]);
        }
    }

    /// Hands the (sealed) candidates out in sorted batches.
    fn start_batches(&mut self) {
        self.batched = true;
        self.batch = (self.last_taken + self.last_taken / 4).max(MIN_LRU_BATCH);
    }

    /// Starts building the heap over every candidate (all sealed).
    fn start_build(&mut self) {
        self.len = self.items.len();
        self.unbuilt = self.len / 2;
    }

    /// Sifts down up to `count` nodes of the heap being built. Returns whether it is built.
    fn build_some(&mut self, mut count: usize) -> bool {
        while self.unbuilt > 0 && count > 0 {
            self.unbuilt -= 1;
            count -= 1;
            self.sift_down(self.unbuilt);
        }
        self.unbuilt == 0
    }

    fn sift_down(&mut self, mut i: usize) {
        let items = &mut self.items[..self.len];
        loop {
            let left = 2 * i + 1;
            if left >= items.len() {
                return;
            }
            let right = left + 1;
            let child = if right < items.len() && items[right] < items[left] {
                right
            } else {
                left
            };
            if items[child] >= items[i] {
                return;
            }
            items.swap(i, child);
            i = child;
        }
    }

    /// The least candidate left (a heap must be built).
    fn pop(&mut self) -> Option<Candidate> {
        if self.batched {
            return self.pop_batched();
        }
        debug_assert_eq!(self.unbuilt, 0, "popped from a heap still being built");
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        self.items.swap(0, self.len);
        self.sift_down(0);
        Some(self.items[self.len])
    }

    fn pop_batched(&mut self) -> Option<Candidate> {
        if self.next == self.sorted {
            let rest = &mut self.items[self.sorted..];
            if rest.is_empty() {
                return None;
            }
            let k = self.batch.max(rest.len() / 8).min(rest.len());
            if k < rest.len() {
                rest.select_nth_unstable(k);
            }
            rest[..k].sort_unstable();
            self.sorted += k;
            self.batch = self.batch.saturating_mul(2);
        }
        self.next += 1;
        Some(self.items[self.next - 1])
    }
}

/// Every non-root node of a tree, seen under `guard`: only `Engine::walk` builds one, so each
/// pointer in `seen` stays valid for `'g`.
struct Walk<'s, 'g> {
    seen: &'s [Seen],
    guard: &'g Guard,
}

impl<'s, 'g> Walk<'s, 'g> {
    /// A walk whose nodes were seen under another guard.
    ///
    /// # Safety
    /// Every pointer in `seen` must stay valid for `'g`: a guard pinned before the walk loaded
    /// them is still pinned, and stays pinned while this `Walk` lives.
    unsafe fn resumed(seen: &'s [Seen], guard: &'g Guard) -> Self {
        Self { seen, guard }
    }

    fn len(&self) -> usize {
        self.seen.len()
    }

    fn node(&self, i: usize) -> &'g Node {
        // SAFETY: loaded under `self.guard` (see `Engine::walk`), which outlives `'g`, or under
        // an older guard that stays pinned as long (`Walk::resumed`).
        unsafe { &*self.seen[i].node }
    }

    fn shared(&self, i: usize) -> Shared<'g, Node> {
        Shared::from(self.seen[i].node)
    }

    /// Into `ends`, per walk index, the last walk index in that node's subtree.
    fn subtree_ends(&self, ends: &mut Vec<u32>) {
        ends.clear();
        ends.extend((0..self.len()).map(|i| i as u32));
        self.finish_subtree_ends(ends, 0..self.len());
    }

    /// Completes `ends` (each index's own, to begin with) for the walk indexes in `range`, which
    /// must be taken from the end of the walk backwards: children come after their parents in
    /// a walk, so by the time `i` is reached going backwards, its own end is final.
    fn finish_subtree_ends(&self, ends: &mut [u32], range: std::ops::Range<usize>) {
        for i in range.rev() {
            if let Some(p) = self.seen[i].parent {
                ends[p] = ends[p].max(ends[i]);
            }
        }
    }

    fn parent_of(&self, i: usize) -> &'g Node {
        match self.seen[i].parent {
            Some(p) => self.node(p),
            // SAFETY: a shard root of the engine the walk was made on, which `'g` borrows.
            None => unsafe { &*self.seen[i].root },
        }
    }

    /// Unlinks node `i` if it is an empty leaf, retiring it to `retire`. Returns whether it was
    /// unlinked.
    fn unlink_if_empty(&self, i: usize, retire: Retire<'_>) -> bool {
        let n = self.node(i);
        if !is_empty_leaf(n, self.guard) {
            return false;
        }
        // Claim it, or help whatever intent holds it already (like an insert that meets a
        // claimed node): an unlink left half-way because the parent froze under it, or an
        // insert's split or compaction. The replacement re-checks emptiness on the frozen
        // snapshot and says what it decided; if the parent froze meanwhile, the node stays
        // claimed and a later pass's sweep (or an insert through it) finishes it.
        n.claim(Intent::Remove);
        matches!(
            finish_replace(self.parent_of(i), self.shared(i), retire, self.guard),
            Ok(true)
        )
    }

    /// Unlinks the empty leaves at `indexes` (the walk's nodes without tenants), taking them
    /// off the end, `PACED_POP_WORK` units of `work` each, and counting them. Returns `false`
    /// if `work` ran out first.
    fn sweep(
        &self,
        indexes: &mut Vec<usize>,
        unlinked: &mut Unlinked,
        stats: &mut EvictionStats,
        work: &mut usize,
    ) -> bool {
        while let Some(&i) = indexes.last() {
            if *work < PACED_POP_WORK {
                return false;
            }
            *work -= PACED_POP_WORK;
            indexes.pop();
            if self.unlink_if_empty(i, Retire::Into(unlinked)) {
                stats.nodes_removed += 1;
            }
        }
        true
    }
}

impl Engine {
    pub(crate) fn total_chars(&self) -> usize {
        let raw = self.total.load(Ordering::Acquire);
        if raw > isize::MAX as usize {
            0
        } else {
            raw
        }
    }

    /// Every non-root node, parents before children, children in first-char order, into
    /// `seen` (cleared first; `stack` is working space), calling `visit` with each node and its
    /// index as it is reached: what a caller reads of a node costs least then, with its cache
    /// lines just fetched.
    fn walk<'s, 'g>(
        &'g self,
        seen: &'s mut Vec<Seen>,
        stack: &mut Vec<(*const Node, Option<usize>)>,
        guard: &'g Guard,
        visit: impl FnMut(usize, &'g Node),
    ) -> Walk<'s, 'g> {
        seen.clear();
        stack.clear();
        let (mut next_root, mut work) = (0, usize::MAX);
        self.walk_some(seen, stack, &mut next_root, guard, &mut work, visit);
        Walk { seen, guard }
    }

    /// Continues a walk (see `walk`) from where `stack` and `next_root` left it, visiting at
    /// most `work` nodes (one unit each, taken off `work`). Returns whether the walk is
    /// complete. Every pointer pushed onto `stack` or `seen` is loaded under `guard`, from a
    /// root or from a node already on the stack.
    fn walk_some<'g>(
        &'g self,
        seen: &mut Vec<Seen>,
        stack: &mut Vec<(*const Node, Option<usize>)>,
        next_root: &mut usize,
        guard: &'g Guard,
        work: &mut usize,
        mut visit: impl FnMut(usize, &'g Node),
    ) -> bool {
        loop {
            while *work > 0 {
                let Some((node, parent)) = stack.pop() else {
                    break;
                };
                *work -= 1;
                let index = seen.len();
                // The stack only holds the subtree of the root entered last.
                let root: &Node = &self.roots[*next_root - 1];
                seen.push(Seen { node, parent, root });
                // SAFETY: loaded from a child array under `guard`, or under an older guard
                // that the caller keeps pinned (see `Engine::advance`).
                let node = unsafe { &*node };
                visit(index, node);
                push_children(node, Some(index), stack, guard);
            }
            if !stack.is_empty() {
                return false;
            }
            if *next_root == self.roots.len() {
                return true;
            }
            push_children(&self.roots[*next_root], None, stack, guard);
            *next_root += 1;
        }
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
            let EvictionScratch {
                seen,
                stack,
                queue,
                ends,
                empty,
                unlinked,
                reclaimer,
            } = &mut scratch;
            empty.clear();
            let walk = self.walk(seen, stack, &guard, |i, n| {
                if is_empty_leaf(n, &guard) {
                    empty.push(i);
                }
            });
            let mut work = usize::MAX;
            walk.sweep(empty, unlinked, &mut stats, &mut work);
            walk.subtree_ends(ends);
            for id in over {
                let items = queue.refill();
                for i in 0..walk.len() {
                    push_candidates(items, i, walk.node(i), Some(id));
                }
                queue.seal(ends, 0..queue.queued());
                queue.start_batches();
                let done = || self.registry.chars(id) <= max_chars;
                self.evict_lru(done, &walk, queue, unlinked, &mut stats, &mut work);
            }
            reclaimer.hand_off(unlinked, &guard);
        }
        stats
    }

    /// Detaches tenants from their least recently used leaves, all tenants in one LRU order,
    /// until the tree-wide total is at most `max_total`: whole passes, in this thread.
    pub(crate) fn evict_to_total(&self, max_total: usize) -> EvictionStats {
        let mut pass = Pass::default();
        for _ in 0..EVICTION_PASSES {
            if self.total_chars() <= max_total {
                break;
            }
            self.run_whole_pass(&mut pass, max_total);
        }
        pass.stats
    }

    /// One whole pass toward `target` with `pass`'s scratch, under a guard of its own: started,
    /// run and stopped in this call, and what it unlinked handed to `pass`'s reclaimer. Its
    /// stats add to `pass.stats`.
    pub(super) fn run_whole_pass(&self, pass: &mut Pass, target: usize) {
        let guard = epoch::pin();
        pass.start(target);
        // SAFETY: every pointer the pass holds is loaded in this call, under `guard`.
        unsafe { self.advance(pass, &guard, usize::MAX) };
        pass.stop();
        pass.scratch.hand_off_unlinked(&guard);
    }

    /// Runs `pass` on for at most `work` units (a node walked is one, a candidate taken
    /// `PACED_POP_WORK`), from where it stopped. Returns whether the pass is done: the tree is
    /// at or under the target, or no candidate is left (a later pass finds what splits hid).
    ///
    /// # Safety
    /// A guard pinned before `pass.start` was called must still be pinned, on any thread, for
    /// the whole call (`guard` itself, or a paced pass's anchor: `paced.rs`). Every node the
    /// pass holds was reachable from this engine's roots after that pin, so nothing it holds is
    /// freed before that guard unpins.
    pub(super) unsafe fn advance(&self, pass: &mut Pass, guard: &Guard, mut work: usize) -> bool {
        let Pass {
            phase,
            target,
            next_root,
            cursor,
            stats,
            scratch,
        } = pass;
        let EvictionScratch {
            seen,
            stack,
            queue,
            ends,
            empty,
            unlinked,
            ..
        } = scratch;
        let whole = work == usize::MAX;
        if *phase == Phase::Walking {
            let items = &mut queue.items;
            let complete = self.walk_some(seen, stack, next_root, guard, &mut work, |i, n| {
                let before = items.len();
                push_candidates(items, i, n, None);
                if items.len() == before && is_empty_leaf(n, guard) {
                    empty.push(i);
                }
            });
            if !complete {
                return false;
            }
            *phase = Phase::Sweeping;
        }
        if *phase == Phase::Sweeping {
            // SAFETY: `seen` was filled by this pass's walk, under this function's contract.
            let walk = unsafe { Walk::resumed(seen, guard) };
            if !walk.sweep(empty, unlinked, stats, &mut work) {
                return false;
            }
            ends.clear();
            ends.extend((0..walk.len()).map(|i| i as u32));
            *cursor = walk.len();
            *phase = Phase::Ending;
        }
        if *phase == Phase::Ending {
            // SAFETY: as above.
            let walk = unsafe { Walk::resumed(seen, guard) };
            let step = linear_step(*cursor, &mut work);
            walk.finish_subtree_ends(ends, *cursor - step..*cursor);
            *cursor -= step;
            if *cursor > 0 {
                return false;
            }
            *phase = Phase::Sealing;
        }
        if *phase == Phase::Sealing {
            let step = linear_step(queue.queued() - *cursor, &mut work);
            queue.seal(ends, *cursor..*cursor + step);
            *cursor += step;
            if *cursor < queue.queued() {
                return false;
            }
            // A pass with unbounded work runs whole: sorted batches are cheaper there.
            if whole {
                queue.start_batches();
                *phase = Phase::Evicting;
            } else {
                queue.start_build();
                *phase = Phase::Building;
            }
        }
        if *phase == Phase::Building {
            let step = linear_step(usize::MAX, &mut work);
            if !queue.build_some(step) {
                return false;
            }
            *phase = Phase::Evicting;
        }
        if *phase == Phase::Evicting {
            // SAFETY: as above.
            let walk = unsafe { Walk::resumed(seen, guard) };
            let target = *target;
            let done = || self.total_chars() <= target;
            if !self.evict_lru(done, &walk, queue, unlinked, stats, &mut work) {
                return false;
            }
            *phase = Phase::Done;
        }
        true
    }

    /// Detaches tenants from their least recently used leaves, one at a time, until `done()`,
    /// taking (tenant, node) pairs of `walk` from `queue` (built), `PACED_POP_WORK` units of
    /// `work` each. Returns `false` if `work` ran out first. A node is a leaf for a tenant when
    /// the tenant holds it and no child does. `Candidate` order reaches a node only after its
    /// children, so a parent that the detaches below it left a leaf is evicted in its turn,
    /// without being queued again.
    fn evict_lru(
        &self,
        done: impl Fn() -> bool,
        walk: &Walk<'_, '_>,
        queue: &mut LruQueue,
        unlinked: &mut Unlinked,
        stats: &mut EvictionStats,
        work: &mut usize,
    ) -> bool {
        while !done() {
            if *work < PACED_POP_WORK {
                return false;
            }
            *work -= PACED_POP_WORK;
            let Some(c) = queue.pop() else {
                break;
            };
            let (i, id) = (c.index(), c.tenant());
            let n = walk.node(i);
            // Not a leaf for `id` while a child holds it: one whose detach failed (it is being
            // replaced), one attached after the walk, or one the walk saw with a newer tick than
            // this node's (a refresh that lost a race). Either way the node stays.
            if any_child_holds(n, id, walk.guard) {
                continue;
            }
            if tenants::detach(&n.slots, id) != Detach::Detached {
                continue;
            }
            self.counted_detach(id, n.chars);
            stats.detached += 1;
            stats.chars_freed += n.chars;
            if walk.unlink_if_empty(i, Retire::Into(unlinked)) {
                stats.nodes_removed += 1;
            }
        }
        true
    }

    pub(crate) fn remove_tenant(&self, id: TenantId) {
        // Before the walk: an insert racing the removal sets it again (see `tenant.rs`).
        self.registry.set_live(id, false);
        let guard = epoch::pin();
        let (mut seen, mut stack) = (Vec::new(), Vec::new());
        let walk = self.walk(&mut seen, &mut stack, &guard, |_, _| {});
        // Children before parents, so a parent emptied by the removal is already a leaf.
        for i in (0..walk.len()).rev() {
            let n = walk.node(i);
            if tenants::detach(&n.slots, id) == Detach::Detached {
                self.counted_detach(id, n.chars);
            }
            walk.unlink_if_empty(i, Retire::Defer);
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
        let walk = self.walk(&mut seen, &mut stack, &guard, |_, _| {});
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

/// How many of `left` items a linear step takes out of `work` (`PACED_LINEAR_ITEMS` a unit).
fn linear_step(left: usize, work: &mut usize) -> usize {
    let step = left.min(work.saturating_mul(PACED_LINEAR_ITEMS));
    *work -= step.div_ceil(PACED_LINEAR_ITEMS);
    step
}

/// Whether `node` has no children and no live tenant.
fn is_empty_leaf(node: &Node, guard: &Guard) -> bool {
    node.children
        .load(Ordering::Acquire, guard)
        .with_tag(0)
        .is_null()
        && !tenants::has_live(&node.slots)
}

/// Queues `node`'s pairs (only `only`'s, if given) as eviction candidates.
fn push_candidates(items: &mut Vec<Candidate>, index: usize, node: &Node, only: Option<TenantId>) {
    for (id, tick) in tenants::live(&node.slots) {
        if only.is_none_or(|o| o == id) {
            items.push(Candidate::new(tick, index, id));
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

    #[test]
    fn a_pass_finishes_an_unlink_left_half_way() {
        let tree = crate::Tree::new();
        tree.insert("abc", "t0");
        tree.insert("xyz", "t1");
        let engine = &tree.engine;
        let t0 = tree.lookup_tenant("t0").unwrap();
        {
            // What an unlink leaves when the parent froze under it: detached and claimed.
            let guard = epoch::pin();
            let (mut seen, mut stack) = (Vec::new(), Vec::new());
            let walk = engine.walk(&mut seen, &mut stack, &guard, |_, _| {});
            let i = (0..walk.len())
                .find(|&i| walk.node(i).label.as_str() == "abc")
                .unwrap();
            let n = walk.node(i);
            assert_eq!(tenants::detach(&n.slots, t0), Detach::Detached);
            engine.counted_detach(t0, n.chars);
            assert!(n.claim(Intent::Remove));
        }
        assert_eq!(tree.match_counts("abc").matched_chars, 3, "still linked");
        let stats = engine.evict_to_total(0);
        assert_eq!(
            tree.match_counts("abc").matched_chars,
            0,
            "the pass unlinked it"
        );
        assert_eq!(stats.nodes_removed, 2, "the stranded node and t1's leaf");
        assert_eq!(tree.total_chars(), 0);
    }

    #[test]
    fn queue_hands_out_every_candidate_in_order_as_a_heap_or_in_batches() {
        let mut queue = LruQueue::default();
        let mut x = 7u64;
        let mut all = Vec::new();
        // Built at once, in steps of one node, and in steps of 5; small and empty queues too.
        for (len, step) in [(1000, usize::MAX), (1000, 1), (513, 5), (1, 1), (0, 1)] {
            let items = queue.refill();
            for i in 0..len {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                items.push(Candidate::new(x >> 54, i, id((x >> 20) as usize % 64)));
            }
            all.clear();
            all.extend_from_slice(&queue.items);
            all.sort_unstable();
            let items = queue.items.clone();
            queue.start_build();
            let mut steps = 1;
            while !queue.build_some(step) {
                steps += 1;
            }
            if step == 1 {
                assert_eq!(steps, (len / 2).max(1), "one node sifted per step");
            }
            let taken: Vec<Candidate> = std::iter::from_fn(|| queue.pop()).collect();
            assert_eq!(taken, all, "heap: all {len}, in order");
            // The same candidates in sorted batches, taking half, then all of a refill.
            for take in [len / 2, len] {
                queue.refill().extend_from_slice(&items);
                queue.start_batches();
                let taken: Vec<Candidate> = (0..take).map_while(|_| queue.pop()).collect();
                assert_eq!(
                    taken,
                    all[..take],
                    "batches: the first {take} of {len}, in order"
                );
            }
        }
        assert_eq!(queue.pop(), None, "an emptied queue stays empty");
    }
}
