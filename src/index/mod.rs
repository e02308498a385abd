//! The precise index: which worker holds which KV block, kept exactly from the engines' own KV
//! cache events, and how many leading blocks of a request each worker holds.
//!
//! Engines (vLLM, SGLang) hash a prompt in fixed-size token blocks, each block's hash chained
//! from its parent's, so one hash names a whole prefix. The index is therefore flat: a block key
//! maps to the set of workers holding it (a bitmask), in a hash table split into shards
//! (`table.rs`: lock-free reads, one writer per shard at a time). A match walks the request's
//! block keys in order, narrowing the set of workers that held every block so far; a worker's
//! overlap is the number of blocks before it dropped out. No tree is needed, and none is kept.
//!
//! Events and what they do:
//! - `Stored { parent, blocks }`: the worker holds each block. A parent the index does not know
//!   the worker to hold is counted (`unknown_parent`) and the blocks are stored anyway: they
//!   name their prefixes, and the worker does hold them; a request matches them only once the
//!   worker holds the blocks before them too.
//! - `Removed { blocks }`: the worker no longer holds them; only its bits change. A block it was
//!   not known to hold is counted (`removed_not_held`) and ignored.
//! - `Cleared`: the worker holds nothing (a scan of the table: rare, on an engine reset).
//!
//! One worker's events must be applied in the order the engine published them (the subscriber
//! enforces this with the engine's sequence numbers and resets a worker on a gap); events of
//! different workers may be applied from different threads at once, and alongside any number
//! of matches.
//!
//! Counters are `Relaxed`: they are statistics and publish nothing.

mod table;

use crate::error::IndexError;
use crate::sync::{AtomicU64, AtomicUsize, Ordering};
use crossbeam_epoch as epoch;
use crossbeam_utils::CachePadded;
use std::fmt;
use table::{spread, stored, Shard};

/// Most workers one index tracks (4 mask words per block).
pub const MAX_INDEX_WORKERS: usize = 256;

/// How a [`KvIndex`] is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvIndexConfig {
    /// Workers the index can track, numbered `0..max_workers`; `1..=256` (default 64). Each
    /// block costs one 8-byte mask word per 64 workers.
    pub max_workers: usize,
    /// Independent shards, each with its own table and writer lock: a power of two in
    /// `1..=4096` (default 64). More shards let more event streams apply at once.
    pub shards: usize,
}

impl Default for KvIndexConfig {
    fn default() -> Self {
        Self {
            max_workers: 64,
            shards: 64,
        }
    }
}

/// One KV cache event of one worker, its block hashes already folded to keys
/// ([`fold_hash`], [`fold_hash_int`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    /// The worker stored `blocks`, in order, the first one chained from `parent` (`None`: the
    /// first block of a prompt).
    Stored {
        /// The block before the first stored one.
        parent: Option<u64>,
        /// The stored blocks' keys.
        blocks: Vec<u64>,
    },
    /// The worker evicted `blocks`.
    Removed {
        /// The removed blocks' keys.
        blocks: Vec<u64>,
    },
    /// The worker dropped its whole cache.
    Cleared,
}

/// The index key of a block hash given as bytes (vLLM's newer releases send 32-byte digests):
/// the bytes read as a big-endian integer, modulo 2^64, i.e. the last eight bytes. That is the
/// integer vLLM sends for the same block when told to send integers
/// (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`), so both forms of one block share a key.
/// Deterministic across processes and releases; two distinct blocks share a key with
/// probability about 2^-64 per pair, and a collision costs a match that counts one block as
/// held by the holders of the other.
pub fn fold_hash(bytes: &[u8]) -> u64 {
    let tail = &bytes[bytes.len().saturating_sub(8)..];
    tail.iter().fold(0, |acc, b| (acc << 8) | *b as u64)
}

/// The index key of a block hash given as an integer (vLLM's older releases, and SGLang): its
/// low 64 bits, two's complement for negative values.
pub fn fold_hash_int(hash: i128) -> u64 {
    hash as u64
}

/// What the index has applied, and what it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvIndexStats {
    /// (worker, block) pairs added by `Stored` events.
    pub blocks_stored: u64,
    /// Stored blocks the worker already held (a duplicate or replayed event).
    pub stored_already_held: u64,
    /// `Stored` events whose parent the worker was not known to hold.
    pub unknown_parent: u64,
    /// (worker, block) pairs dropped by `Removed` events.
    pub blocks_removed: u64,
    /// Removed blocks the worker was not known to hold.
    pub removed_not_held: u64,
    /// `Cleared` events (and [`KvIndex::clear`] calls).
    pub clears: u64,
    /// Blocks some worker holds now.
    pub live_blocks: usize,
    /// (worker, block) pairs held now.
    pub held_pairs: usize,
    /// Bytes of the index's tables.
    pub bytes: usize,
}

#[derive(Default)]
struct Counters {
    blocks_stored: AtomicU64,
    stored_already_held: AtomicU64,
    unknown_parent: AtomicU64,
    blocks_removed: AtomicU64,
    removed_not_held: AtomicU64,
    clears: AtomicU64,
}

/// Which workers hold which KV blocks, from their KV cache events. See the module notes.
///
/// ```
/// use cache_aware_router::{KvEvent, KvIndex};
///
/// let index = KvIndex::new();
/// index.apply(0, &KvEvent::Stored { parent: None, blocks: vec![11, 12, 13] }).unwrap();
/// index.apply(1, &KvEvent::Stored { parent: None, blocks: vec![11] }).unwrap();
/// let mut overlaps = vec![];
/// index.overlaps(&[11, 12, 99], |worker, blocks| overlaps.push((worker, blocks)));
/// overlaps.sort();
/// assert_eq!(overlaps, [(0, 2), (1, 1)]);
/// ```
pub struct KvIndex {
    shards: Box<[CachePadded<Shard>]>,
    shard_bits: u32,
    words: usize,
    max_workers: usize,
    held: Box<[AtomicUsize]>,
    counters: Counters,
}

impl KvIndex {
    /// An empty index with the default configuration (64 workers, 64 shards).
    pub fn new() -> Self {
        Self::with_config(KvIndexConfig::default()).expect("the default configuration is valid")
    }

    /// An empty index; fails on a worker count or shard count out of range.
    pub fn with_config(config: KvIndexConfig) -> Result<Self, IndexError> {
        let KvIndexConfig {
            max_workers,
            shards,
        } = config;
        if max_workers == 0 || max_workers > MAX_INDEX_WORKERS {
            return Err(IndexError::InvalidMaxWorkers(max_workers));
        }
        if shards == 0 || shards > 4096 || !shards.is_power_of_two() {
            return Err(IndexError::InvalidShards(shards));
        }
        let words = max_workers.div_ceil(64);
        Ok(Self {
            shards: (0..shards)
                .map(|_| CachePadded::new(Shard::new(words)))
                .collect(),
            shard_bits: shards.trailing_zeros(),
            words,
            max_workers,
            held: (0..max_workers).map(|_| AtomicUsize::new(0)).collect(),
            counters: Counters::default(),
        })
    }

    /// Workers this index can track.
    pub fn max_workers(&self) -> usize {
        self.max_workers
    }

    /// Applies one event of `worker`.
    pub fn apply(&self, worker: usize, event: &KvEvent) -> Result<(), IndexError> {
        match event {
            KvEvent::Stored { parent, blocks } => self.store(worker, *parent, blocks),
            KvEvent::Removed { blocks } => self.remove(worker, blocks),
            KvEvent::Cleared => self.clear(worker),
        }
    }

    /// `worker` stored `blocks`, chained from `parent`.
    pub fn store(
        &self,
        worker: usize,
        parent: Option<u64>,
        blocks: &[u64],
    ) -> Result<(), IndexError> {
        let bit = self.bit(worker)?;
        let guard = epoch::pin();
        if let Some(parent) = parent {
            if !self.holds_pinned(bit, parent, &guard) {
                self.counters.unknown_parent.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut added = 0;
        for &block in blocks {
            let (shard, key, hash) = self.locate(block);
            if shard.update(key, hash, self.shard_bits, bit, true, &guard) {
                added += 1;
            }
        }
        let c = &self.counters;
        c.blocks_stored.fetch_add(added as u64, Ordering::Relaxed);
        c.stored_already_held
            .fetch_add((blocks.len() - added) as u64, Ordering::Relaxed);
        self.held[worker].fetch_add(added, Ordering::Relaxed);
        Ok(())
    }

    /// `worker` evicted `blocks`.
    pub fn remove(&self, worker: usize, blocks: &[u64]) -> Result<(), IndexError> {
        let bit = self.bit(worker)?;
        let guard = epoch::pin();
        let mut dropped = 0;
        for &block in blocks {
            let (shard, key, hash) = self.locate(block);
            if shard.update(key, hash, self.shard_bits, bit, false, &guard) {
                dropped += 1;
            }
        }
        let c = &self.counters;
        c.blocks_removed
            .fetch_add(dropped as u64, Ordering::Relaxed);
        c.removed_not_held
            .fetch_add((blocks.len() - dropped) as u64, Ordering::Relaxed);
        self.held[worker].fetch_sub(dropped, Ordering::Relaxed);
        Ok(())
    }

    /// `worker` holds nothing any more (its engine cleared its cache or restarted). Scans
    /// every table.
    pub fn clear(&self, worker: usize) -> Result<(), IndexError> {
        let bit = self.bit(worker)?;
        let guard = epoch::pin();
        let cleared: usize = self
            .shards
            .iter()
            .map(|s| s.clear_worker(bit, &guard))
            .sum();
        self.held[worker].fetch_sub(cleared, Ordering::Relaxed);
        self.counters.clears.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether `worker` holds `block` (false for a worker out of range).
    pub fn holds(&self, worker: usize, block: u64) -> bool {
        match self.bit(worker) {
            Ok(bit) => self.holds_pinned(bit, block, &epoch::pin()),
            Err(_) => false,
        }
    }

    /// Blocks `worker` holds (0 for a worker out of range).
    pub fn blocks_held(&self, worker: usize) -> usize {
        self.held.get(worker).map_or(0, |n| {
            let n = n.load(Ordering::Relaxed);
            // Transiently negative while a store and a removal of one worker race.
            if n > isize::MAX as usize {
                0
            } else {
                n
            }
        })
    }

    /// For every worker holding at least the first block of `blocks`: how many leading blocks
    /// of `blocks` it holds (Dynamo's overlap scores), in no particular order. Takes no lock
    /// and allocates nothing; stops at the first block no remaining worker holds.
    pub fn overlaps(&self, blocks: &[u64], mut f: impl FnMut(usize, usize)) {
        if self.words == 1 {
            return self.overlaps_one_word(blocks, f);
        }
        const MAX_WORDS: usize = MAX_INDEX_WORKERS / 64;
        let words = self.words;
        let mut running = [0u64; MAX_WORDS];
        for (w, word) in running.iter_mut().enumerate().take(words) {
            let bits = (self.max_workers - w * 64).min(64);
            *word = if bits == 64 {
                u64::MAX
            } else {
                (1 << bits) - 1
            };
        }
        let guard = epoch::pin();
        for (depth, &block) in blocks.iter().enumerate() {
            let (shard, key, hash) = self.locate(block);
            let mut any = 0;
            let found = shard.read(key, hash, self.shard_bits, &guard, |masks| {
                for (w, mask) in masks.iter().enumerate() {
                    let now = running[w] & mask.load(Ordering::Relaxed);
                    report(w, running[w] & !now, depth, &mut f);
                    running[w] = now;
                    any |= now;
                }
            });
            if found.is_none() {
                for (w, &word) in running.iter().enumerate().take(words) {
                    report(w, word, depth, &mut f);
                }
                return;
            }
            if any == 0 {
                return;
            }
        }
        for (w, &word) in running.iter().enumerate().take(words) {
            report(w, word, blocks.len(), &mut f);
        }
    }

    /// `overlaps` for up to 64 workers: one mask word per block.
    fn overlaps_one_word(&self, blocks: &[u64], mut f: impl FnMut(usize, usize)) {
        let mut running = if self.max_workers == 64 {
            u64::MAX
        } else {
            (1 << self.max_workers) - 1
        };
        let guard = epoch::pin();
        for (depth, &block) in blocks.iter().enumerate() {
            let (shard, key, hash) = self.locate(block);
            let mask = shard
                .read(key, hash, self.shard_bits, &guard, |masks| {
                    masks[0].load(Ordering::Relaxed)
                })
                .unwrap_or(0);
            let now = running & mask;
            if now != running {
                report(0, running & !now, depth, &mut f);
                if now == 0 {
                    return;
                }
                running = now;
            }
        }
        report(0, running, blocks.len(), &mut f);
    }

    /// What the index has applied and holds now.
    pub fn stats(&self) -> KvIndexStats {
        let c = &self.counters;
        let guard = epoch::pin();
        KvIndexStats {
            blocks_stored: c.blocks_stored.load(Ordering::Relaxed),
            stored_already_held: c.stored_already_held.load(Ordering::Relaxed),
            unknown_parent: c.unknown_parent.load(Ordering::Relaxed),
            blocks_removed: c.blocks_removed.load(Ordering::Relaxed),
            removed_not_held: c.removed_not_held.load(Ordering::Relaxed),
            clears: c.clears.load(Ordering::Relaxed),
            live_blocks: self.shards.iter().map(|s| s.live()).sum(),
            held_pairs: (0..self.max_workers).map(|w| self.blocks_held(w)).sum(),
            bytes: self.shards.iter().map(|s| s.bytes(&guard)).sum(),
        }
    }

    fn bit(&self, worker: usize) -> Result<(usize, u64), IndexError> {
        if worker >= self.max_workers {
            return Err(IndexError::WorkerOutOfRange {
                worker,
                max_workers: self.max_workers,
            });
        }
        Ok((worker / 64, 1 << (worker % 64)))
    }

    /// The shard, stored key and hash of `block`.
    #[inline]
    fn locate(&self, block: u64) -> (&Shard, u64, u64) {
        let key = stored(block);
        let hash = spread(key);
        let shard = if self.shard_bits == 0 {
            0
        } else {
            (hash >> (64 - self.shard_bits)) as usize
        };
        (&self.shards[shard], key, hash)
    }

    fn holds_pinned(&self, (word, bit): (usize, u64), block: u64, guard: &epoch::Guard) -> bool {
        let (shard, key, hash) = self.locate(block);
        shard
            .read(key, hash, self.shard_bits, guard, |masks| {
                masks[word].load(Ordering::Relaxed) & bit != 0
            })
            .unwrap_or(false)
    }
}

/// Calls `f(worker, depth)` for every worker bit set in `dropped` (word `w`) if `depth > 0`.
#[inline]
fn report(w: usize, mut dropped: u64, depth: usize, f: &mut impl FnMut(usize, usize)) {
    if depth == 0 {
        return;
    }
    while dropped != 0 {
        let bit = dropped.trailing_zeros() as usize;
        f(w * 64 + bit, depth);
        dropped &= dropped - 1;
    }
}

impl Default for KvIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for KvIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvIndex")
            .field("max_workers", &self.max_workers)
            .field("shards", &self.shards.len())
            .field("stats", &self.stats())
            .finish()
    }
}
