//! Eviction that costs what it evicts: a best-first descent to the stalest leaves.
//!
//! Every attach and refresh runs down the whole path with one tick, so a node's newest tick
//! bounds every tick in its subtree: a subtree whose root was last used at `t` holds nothing
//! used later. `Engine::evict_to` keeps a small frontier of nodes keyed by that bound and always
//! opens the stalest one. An internal node gives way to its children (all of them, or a window
//! of `EVICT_FANOUT` from a random offset where there are more); a leaf, keyed by its oldest
//! tenant, gives up that tenant, and is unlinked once no tenant holds it, at which point its
//! parent, if that left it a leaf, joins the frontier. So the first leaves it takes are those
//! of the subtrees used longest ago, oldest tenant first: LRU where every node's children fit
//! the window, and Redis-style sampled LRU where they do not. The frontier starts from every
//! shard root; a call runs rounds (a fresh frontier each) until the tree is at its target or a
//! round frees nothing.
//!
//! **Cost.** A call opens the nodes on the way to what it evicts, plus the children it keys on
//! the way: nothing of the tree it leaves alone beyond those windows. There is no walk of the
//! tree, no sort of it, and no state kept between calls, so any thread can evict at any time:
//! the request whose insert takes its tree over budget evicts what brings it back under.
//!
//! **Concurrency.** The call is pinned like a reader, and every pointer it keeps (the frontier,
//! the nodes it opened, as raw pointers in a reusable per-thread buffer) is loaded under that
//! one guard and forgotten before it unpins. It changes the tree only through the tenant-slot
//! CAS and the replace protocol that inserts use (`tenants.rs`, `node.rs`), so it never stops a
//! match or an insert. The detach carries the tick the call read: a request that uses the leaf
//! in between wins, and the leaf stays (loom model `eviction_never_takes_a_leaf_just_used`). A
//! node being replaced (split or compacted by an insert) refuses the detach and is skipped;
//! a later round meets its successor. An unlink whose parent froze leaves the node claimed for
//! removal, and the next thread through it (an insert, or an eviction) finishes it. No atomics
//! of its own: child arrays are loaded `Acquire`, pairing with the `AcqRel` CAS that published
//! them (`children.rs`).
//!
//! **Memory.** What an unlink takes out (the node, the old child array) is retired through the
//! epoch. A call that unlinked anything then flushes its thread's garbage bag into the global
//! queue and collects once (up to crossbeam-epoch's eight bags), so the thread that evicts frees
//! about as much as it unlinks, and evicted nodes do not wait in the queue for a pin that may
//! never come. A parent whose label is a small slice of a buffer it shared with the unlinked
//! leaf is compacted (`Label::compacted`), so dead text does not outlive its node.

use super::children::{self, Child};
use super::key::KeyUnit;
use super::node::{finish_replace, Intent, Node};
use super::tenants::{self, Detach};
use super::{Engine, EvictionStats};
use crate::constants::EVICT_FANOUT;
use crate::sync::Ordering;
use crossbeam_epoch::{self as epoch, Guard, Shared};
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Parent index of a shard root.
const NO_PARENT: u32 = u32::MAX;

/// A node the call has keyed, and where it hangs.
struct Opened {
    node: *const Node,
    parent: u32,
}

/// The call's working memory, reused by the next call on the same thread.
#[derive(Default)]
struct Scratch {
    /// Every node keyed this round; frontier entries index into it.
    opened: Vec<Opened>,
    /// Least key first; among equal keys, the latest batch first, and within a batch (the
    /// children of one node) in first-char order: so a subtree keyed as one tick is taken depth
    /// first, children before their parent and subtrees in order, as the seed's LRU takes them.
    frontier: BinaryHeap<Entry>,
    /// Batches put on the frontier this round.
    batches: u32,
    rng: u64,
}

/// A frontier entry: (key tick, batch reversed, index into `opened`), least first.
type Entry = Reverse<(u64, Reverse<u32>, u32)>;

impl Scratch {
    fn clear(&mut self) {
        self.opened.clear();
        self.frontier.clear();
        self.batches = 0;
    }

    /// Puts opened node `i` back on the frontier, keyed `key`, as a batch of its own.
    fn enqueue(&mut self, key: u64, i: u32) {
        self.batches += 1;
        self.frontier.push(Reverse((key, Reverse(self.batches), i)));
    }

    fn node<'g>(&self, i: u32, _guard: &'g Guard) -> &'g Node {
        // SAFETY: every pointer in `opened` was loaded this round under the call's guard, a
        // shard root or an entry of a child array, so it stays allocated while `_guard` lives.
        unsafe { &*self.opened[i as usize].node }
    }

    /// A draw in `0..n` (xorshift64*).
    fn below(&mut self, n: usize) -> usize {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        ((self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) as u128 * n as u128) >> 64) as usize
    }

    /// Keys `node` (under the opened node `parent`) and puts it on the frontier in the current
    /// batch.
    fn push(&mut self, node: *const Node, parent: u32, guard: &Guard) {
        // SAFETY: an entry of a child array loaded under `guard`.
        let key = key(unsafe { &*node }, guard);
        self.opened.push(Opened { node, parent });
        let i = (self.opened.len() - 1) as u32;
        self.frontier.push(Reverse((key, Reverse(self.batches), i)));
    }

    /// Puts the children of opened node `i` on the frontier in the current batch: all of them,
    /// or a window of `EVICT_FANOUT` from a random offset.
    fn push_children(&mut self, i: u32, entries: &[Child], guard: &Guard) {
        let take = entries.len().min(EVICT_FANOUT);
        let start = match entries.len() > EVICT_FANOUT {
            true => self.below(entries.len()),
            false => 0,
        };
        for k in 0..take {
            let c = entries[(start + k) % entries.len()];
            self.push(c.node, i, guard);
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        // Seeded per thread from a stack address: windows only need to spread.
        rng: (&0u8 as *const u8 as u64) | 1,
        ..Scratch::default()
    });
}

/// Runs `f` with this thread's scratch, or a fresh one if it is in use (or under loom, whose
/// threads share one OS thread's locals).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    let fresh = || Scratch {
        rng: 0x9E37_79B9_7F4A_7C15,
        ..Scratch::default()
    };
    if cfg!(router_loom) {
        return f(&mut fresh());
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        Err(_) => f(&mut fresh()),
    })
}

impl<K: KeyUnit> Engine<K> {
    /// Detaches tenants from the stalest leaves until the tree holds at most `target` chars
    /// (or a round frees nothing: everything left is being replaced, or nothing is left).
    pub(crate) fn evict_to(&self, target: usize) -> EvictionStats {
        let mut stats = EvictionStats::default();
        if self.total_units() <= target {
            return stats;
        }
        let guard = epoch::pin();
        with_scratch(|s| {
            loop {
                let before = stats;
                s.clear();
                // The shard roots' children: one batch, in shard order.
                for root in self.roots.iter() {
                    let array = root.children.load(Ordering::Acquire, &guard).with_tag(0);
                    // SAFETY: loaded from a child pointer under `guard`.
                    let entries = unsafe { children::entries(array, &guard) };
                    if !entries.is_empty() {
                        s.opened.push(Opened {
                            node: &**root,
                            parent: NO_PARENT,
                        });
                        s.push_children((s.opened.len() - 1) as u32, entries, &guard);
                    }
                }
                while self.total_units() > target {
                    let Some(Reverse((key, _, i))) = s.frontier.pop() else {
                        break;
                    };
                    self.open(s, i, key, &mut stats, &guard);
                }
                if self.total_units() <= target || stats == before {
                    break;
                }
            }
            s.clear();
        });
        if stats.nodes_removed > 0 {
            // Free about what this call unlinked, here, rather than leave it queued.
            guard.flush();
        }
        stats
    }

    /// Opens frontier entry `i`, keyed `key`: an inner node gives way to its children, a leaf
    /// gives up its oldest tenant if that is still the one it was keyed by.
    fn open(&self, s: &mut Scratch, i: u32, key: u64, stats: &mut EvictionStats, guard: &Guard) {
        let n = s.node(i, guard);
        let array = n.children.load(Ordering::Acquire, guard).with_tag(0);
        // SAFETY: loaded from a child pointer under `guard`.
        let entries = unsafe { children::entries(array, guard) };
        if !entries.is_empty() {
            s.batches += 1;
            s.push_children(i, entries, guard);
            return;
        }
        let Some((id, tick)) = tenants::oldest(&n.slots) else {
            if self.unlink(s, i, guard) {
                stats.nodes_removed += 1;
            }
            return;
        };
        if tick > key {
            // Used since it was keyed (or its oldest tenant left): back in line by its new key.
            s.enqueue(tick, i);
            return;
        }
        match tenants::detach(&n.slots, id, key) {
            Detach::Detached => {}
            // Used between the two reads: back in line by its new key.
            Detach::Newer => {
                s.enqueue(key + 1, i);
                return;
            }
            // Being replaced (a later round meets the successor), or gone already.
            Detach::Frozen | Detach::Absent => return,
        }
        self.counted_detach(id, n.units);
        stats.detached += 1;
        stats.units_freed += n.units;
        match tenants::oldest(&n.slots) {
            Some((_, next)) => s.enqueue(next, i),
            None => {
                if self.unlink(s, i, guard) {
                    stats.nodes_removed += 1;
                }
            }
        }
    }

    /// Unlinks opened node `i` if it is an empty leaf. Then its parent, if that left it a
    /// leaf, joins the frontier; if not, and its label is a small slice of a buffer it shared
    /// with what was unlinked, it is compacted.
    fn unlink(&self, s: &mut Scratch, i: u32, guard: &Guard) -> bool {
        let n = s.node(i, guard);
        let p = s.opened[i as usize].parent;
        if !is_empty_leaf(n, guard) || p == NO_PARENT {
            return false;
        }
        let parent = s.node(p, guard);
        // Claim it, or help whatever intent holds it already: an unlink left half-way because
        // the parent froze under it, or an insert's split or compaction. The replacement
        // re-checks emptiness on the frozen snapshot and says what it decided.
        n.claim(Intent::Remove);
        let node = Shared::from(n as *const Node);
        if !matches!(finish_replace::<K>(parent, node, guard), Ok(true)) {
            return false;
        }
        let grandparent = s.opened[p as usize].parent;
        if grandparent == NO_PARENT {
            return true;
        }
        if parent.children.load(Ordering::Acquire, guard).is_null() {
            s.enqueue(key(parent, guard), p);
        } else if parent.label.wastes() && parent.claim(Intent::Compact) {
            let grandparent = s.node(grandparent, guard);
            let _ = finish_replace::<K>(grandparent, Shared::from(parent as *const Node), guard);
        }
        true
    }
}

/// A node's place on the frontier: a leaf's oldest tick (its next tenant to evict), an inner
/// node's newest (the bound of its subtree). A node no tenant holds keys as 0: it is an empty
/// leaf, or its tenants left it while a child kept one, and either way it is opened first.
fn key(n: &Node, guard: &Guard) -> u64 {
    let leaf = n
        .children
        .load(Ordering::Acquire, guard)
        .with_tag(0)
        .is_null();
    match tenants::tick_range(&n.slots) {
        Some((oldest, _)) if leaf => oldest,
        Some((_, newest)) => newest,
        None => 0,
    }
}

/// Frees what evictions (in any thread) retired, as far as no reader still holds it: flushes
/// and collects crossbeam-epoch's queue `COLLECTS` times (a collect frees up to eight bags of
/// 64 entries, and costs little when there is nothing to free).
pub(crate) fn collect_retired() {
    const COLLECTS: usize = 64;
    for _ in 0..COLLECTS {
        epoch::pin().flush();
    }
}

/// Whether `node` has no children and no live tenant.
pub(super) fn is_empty_leaf(node: &Node, guard: &Guard) -> bool {
    node.children
        .load(Ordering::Acquire, guard)
        .with_tag(0)
        .is_null()
        && !tenants::has_live(&node.slots)
}
