//! One shard of the block index: an open-addressing hash table from block key to the bitmask of
//! workers holding that block, read without locks and written under the shard's mutex.
//!
//! Layout: a power-of-two array of entries, each a key word followed by `words` mask words
//! (bit `w` of the masks: worker `w` holds the block). Linear probing from a slot picked by the
//! key's multiplicative hash. Key `EMPTY` (0) marks a free slot; a block key 0 is stored as
//! `ZERO_KEY` instead (a collision of two keys out of 2^64, documented with the key fold).
//!
//! Invariant: a slot's key, once written, never changes for the life of its table. A key whose
//! masks drop to zero stays as a dead entry (readers see "no holder") until the next rebuild,
//! so a reader that found a key reads that key's masks, never another's.
//!
//! Protocol:
//! - Readers pin the epoch, load the table pointer (`Acquire`, pairing with the `Release` swap
//!   that published it, so the whole table is visible) and probe: a key load (`Acquire`,
//!   pairing with the writer's `Release` key store, so the masks written before it are
//!   visible), then the masks (`Relaxed`: later changes to a mask publish nothing else, and a
//!   match only needs some value each mask held while it ran).
//! - Writers hold the shard's mutex, so there is one writer per shard at a time: a new entry
//!   writes its masks (`Relaxed`), then its key (`Release`); a mask change is a plain
//!   load and store (`Relaxed`), since no other writer can touch it meanwhile.
//! - When live plus dead entries would pass 3/4 of the slots, the writer builds a new table
//!   sized for the live entries (dead ones are left behind: this is where they go), publishes
//!   it with a `Release` swap and retires the old one through the epoch, so readers still
//!   probing it finish on a consistent snapshot. Writers only ever see the current table: they
//!   load it under the mutex that every swap holds.

use crate::sync::{AtomicU64, Mutex, Ordering};
use crossbeam_epoch::{Atomic, Guard, Owned};

/// A free slot.
const EMPTY: u64 = 0;
/// What block key 0 is stored as.
pub(crate) const ZERO_KEY: u64 = 0x9E37_79B9_7F4A_7C15;

/// Slots of a new (or emptied) table.
#[cfg(not(router_loom))]
const MIN_SLOTS: usize = 256;
/// Under loom every cell is a modelled atomic: a handful of slots.
#[cfg(router_loom)]
const MIN_SLOTS: usize = 4;

/// The stored form of a block key: never `EMPTY`.
#[inline]
pub(crate) fn stored(key: u64) -> u64 {
    if key == EMPTY {
        ZERO_KEY
    } else {
        key
    }
}

/// The multiplicative hash both the shard and the slot are taken from (block hashes from
/// engines are already uniform; this spreads keys that are not, such as small integers).
#[inline]
pub(crate) fn spread(key: u64) -> u64 {
    key.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

struct Table {
    /// Slots minus one.
    mask: usize,
    /// Bits of the slot index: the slot is taken from the hash's bits below the shard's.
    bits: u32,
    /// Mask words per entry.
    words: usize,
    cells: Box<[AtomicU64]>,
}

impl Table {
    fn new(slots: usize, words: usize) -> Self {
        debug_assert!(slots.is_power_of_two());
        Self {
            mask: slots - 1,
            bits: slots.trailing_zeros(),
            words,
            cells: (0..slots * (1 + words))
                .map(|_| AtomicU64::new(EMPTY))
                .collect(),
        }
    }

    fn slots(&self) -> usize {
        self.mask + 1
    }

    #[inline]
    fn home(&self, hash: u64, shard_bits: u32) -> usize {
        // The bits just below the shard's: independent of the shard choice.
        ((hash << shard_bits) >> (63 - self.bits) >> 1) as usize
    }

    #[inline]
    fn entry(&self, slot: usize) -> &[AtomicU64] {
        let stride = 1 + self.words;
        &self.cells[slot * stride..(slot + 1) * stride]
    }

    /// The slot holding `key`, or the free slot where it would go.
    #[inline]
    fn find(&self, key: u64, hash: u64, shard_bits: u32) -> (usize, bool) {
        let mut slot = self.home(hash, shard_bits);
        loop {
            let k = self.entry(slot)[0].load(Ordering::Acquire);
            if k == key {
                return (slot, true);
            }
            if k == EMPTY {
                return (slot, false);
            }
            slot = (slot + 1) & self.mask;
        }
    }
}

/// What the writers of a shard keep: entries in use (live and dead) and live ones.
#[derive(Default)]
struct Counts {
    used: usize,
    live: usize,
}

pub(crate) struct Shard {
    table: Atomic<Table>,
    writer: Mutex<Counts>,
    words: usize,
}

impl Shard {
    pub(crate) fn new(words: usize) -> Self {
        Self {
            table: Atomic::new(Table::new(MIN_SLOTS, words)),
            writer: Mutex::new(Counts::default()),
            words,
        }
    }

    /// Calls `f` with the masks of `key` (stored form), or returns `None` if no entry has it.
    #[inline]
    pub(crate) fn read<R>(
        &self,
        key: u64,
        hash: u64,
        shard_bits: u32,
        guard: &Guard,
        f: impl FnOnce(&[AtomicU64]) -> R,
    ) -> Option<R> {
        let table = self.table.load(Ordering::Acquire, guard);
        // SAFETY: loaded under `guard`; a replaced table is retired through the epoch, so it
        // stays allocated while `guard` lives. The pointer is never null.
        let table = unsafe { table.deref() };
        match table.find(key, hash, shard_bits) {
            (slot, true) => Some(f(&table.entry(slot)[1..])),
            (_, false) => None,
        }
    }

    /// Sets (`hold`) or clears worker bit `bit` of word `word` on `key`'s entry, adding the
    /// entry if it is missing and `hold` is set. Returns whether the bit changed.
    pub(crate) fn update(
        &self,
        key: u64,
        hash: u64,
        shard_bits: u32,
        (word, bit): (usize, u64),
        hold: bool,
        guard: &Guard,
    ) -> bool {
        let mut counts = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut table = self.current(guard);
        let (mut slot, mut found) = table.find(key, hash, shard_bits);
        if !found {
            if !hold {
                return false;
            }
            if (counts.used + 1) * 4 > table.slots() * 3 {
                let live = counts.live + 1;
                table = self.rebuild(&mut counts, live, shard_bits, guard);
                (slot, found) = table.find(key, hash, shard_bits);
                debug_assert!(!found);
            }
        }
        let entry = table.entry(slot);
        let masks = &entry[1..];
        let old = masks[word].load(Ordering::Relaxed);
        let new = if hold { old | bit } else { old & !bit };
        if new == old {
            return false;
        }
        let others = masks
            .iter()
            .enumerate()
            .any(|(i, m)| i != word && m.load(Ordering::Relaxed) != 0);
        masks[word].store(new, Ordering::Relaxed);
        if !found {
            // Masks first, then the key that makes them reachable.
            entry[0].store(key, Ordering::Release);
            counts.used += 1;
        }
        match (old != 0 || others, new != 0 || others) {
            (false, true) => counts.live += 1,
            (true, false) => counts.live -= 1,
            _ => {}
        }
        true
    }

    /// Clears worker bit `bit` of word `word` on every entry; returns how many it was set on.
    pub(crate) fn clear_worker(&self, (word, bit): (usize, u64), guard: &Guard) -> usize {
        let mut counts = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let table = self.current(guard);
        let mut cleared = 0;
        for slot in 0..table.slots() {
            let entry = table.entry(slot);
            if entry[0].load(Ordering::Relaxed) == EMPTY {
                continue;
            }
            let masks = &entry[1..];
            let old = masks[word].load(Ordering::Relaxed);
            if old & bit != 0 {
                masks[word].store(old & !bit, Ordering::Relaxed);
                cleared += 1;
                if masks.iter().all(|m| m.load(Ordering::Relaxed) == 0) {
                    counts.live -= 1;
                }
            }
        }
        cleared
    }

    /// Bytes this shard's table takes.
    pub(crate) fn bytes(&self, guard: &Guard) -> usize {
        let _counts = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let table = self.current(guard);
        table.cells.len() * std::mem::size_of::<AtomicU64>() + std::mem::size_of::<Table>()
    }

    /// Entries with at least one holder.
    pub(crate) fn live(&self) -> usize {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).live
    }

    /// The table writers work on (call with the writer lock held).
    fn current<'g>(&self, guard: &'g Guard) -> &'g Table {
        // SAFETY: loaded under `guard` (and the writer lock, so no swap retires it meanwhile);
        // never null.
        unsafe { self.table.load(Ordering::Acquire, guard).deref() }
    }

    /// Replaces the table with one sized for `live` entries (at most half full, so a rebuild
    /// is followed by at least half as many inserts as it copied), keeping the live entries
    /// only.
    /// Call with the writer lock held (`counts` is its state).
    fn rebuild<'g>(
        &self,
        counts: &mut Counts,
        live: usize,
        shard_bits: u32,
        guard: &'g Guard,
    ) -> &'g Table {
        let old = self.current(guard);
        let slots = (live * 2 + 1).next_power_of_two().max(MIN_SLOTS);
        let new = Owned::new(Table::new(slots, self.words)).into_shared(guard);
        // Test-only broken variant (loom must catch it): publish the table before filling it.
        #[cfg(router_loom_broken_rebuild)]
        self.table.store(new, Ordering::Release);
        // SAFETY: allocated just above and not freed before `guard` drops.
        let new_ref = unsafe { new.deref() };
        let mut copied = 0;
        for slot in 0..old.slots() {
            let entry = old.entry(slot);
            let key = entry[0].load(Ordering::Relaxed);
            if key == EMPTY || entry[1..].iter().all(|m| m.load(Ordering::Relaxed) == 0) {
                continue;
            }
            let (to, found) = new_ref.find(key, spread(key), shard_bits);
            debug_assert!(!found);
            let dest = new_ref.entry(to);
            for (d, s) in dest[1..].iter().zip(&entry[1..]) {
                d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            dest[0].store(key, Ordering::Relaxed);
            copied += 1;
        }
        *counts = Counts {
            used: copied,
            live: copied,
        };
        #[cfg(not(router_loom_broken_rebuild))]
        let retired = self.table.swap(new, Ordering::Release, guard);
        #[cfg(router_loom_broken_rebuild)]
        let retired = crossbeam_epoch::Shared::from(old as *const Table);
        // SAFETY: unreachable from the shard now; readers still probing it are pinned, and the
        // epoch frees it after they unpin.
        unsafe { guard.defer_destroy(retired) };
        new_ref
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no reader or writer can hold the table any more.
        unsafe {
            let guard = crossbeam_epoch::unprotected();
            let table = self.table.load(Ordering::Relaxed, guard);
            drop(table.into_owned());
        }
    }
}
