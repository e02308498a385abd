//! Tenants (worker URLs) interned to small integer ids, with their unit counts (chars, tokens
//! or blocks, per the tree's key unit).
//!
//! Invariant: an id, once issued, names the same tenant for the life of the tree, and its entry
//! (count, liveness, name) never moves, so hot paths index it without any lock.
//!
//! Protocol:
//! - Interning happens once per name, under the `DashMap` entry of that name: the id is drawn
//!   from `next` and the entry's name is set before the id is returned, so every holder of an id
//!   finds its name. Only this registration path touches the map; routing uses ids.
//! - Entries live in chunks of `TENANT_CHUNK`, allocated on first use and published with a CAS
//!   on the chunk pointer (`AcqRel`, so the zeroed entries are visible to whoever loads it with
//!   `Acquire`); a thread that loses the race frees its chunk. Chunks are freed with the registry.
//! - `units` is changed only right after the tree wins the tenant-slot CAS that attaches or
//!   detaches the tenant (see `tree/tenants.rs`), by exactly that node's unit count. Between the
//!   CAS and the add the count may lag, and an add and a subtract from two threads may land in
//!   either order, so the counter wraps transiently; at rest it is exact. `Relaxed` suffices: the
//!   count publishes nothing, and readers that need it exact read it at rest.
//! - `live` says the tenant was inserted since its last removal; a tenant is reported present
//!   when `live` is set or it holds units. Removal clears `live` before it walks the tree, so an
//!   insert racing it either sets `live` again or keeps units, and is never reported absent while
//!   it holds nodes. `Relaxed`, because nothing is published through it.

use crate::constants::{MAX_TENANTS, TENANT_CHUNK};
use crate::error::TreeError;
use crate::sync::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use crossbeam_utils::CachePadded;
use dashmap::DashMap;
use std::fmt;
use std::sync::OnceLock;

/// A tenant (worker) interned in one tree: a small integer, cheap to compare and copy.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TenantId(u16);

impl TenantId {
    /// The id as an index (0-based, dense in issue order).
    pub fn index(self) -> usize {
        self.0 as usize
    }

    pub(crate) fn from_index(index: usize) -> Self {
        debug_assert!(index < MAX_TENANTS);
        TenantId(index as u16)
    }
}

struct Entry {
    units: AtomicUsize,
    live: AtomicBool,
    name: OnceLock<Box<str>>,
}

/// Entries are cache-padded: every attach bumps its tenant's count, and unpadded counts of
/// several tenants would share a line that all routing threads write.
struct Chunk {
    entries: [CachePadded<Entry>; TENANT_CHUNK],
}

pub(crate) struct TenantRegistry {
    ids: DashMap<Box<str>, TenantId>,
    /// Ids issued so far; only advanced while holding a `DashMap` entry.
    issued: AtomicUsize,
    chunks: Box<[AtomicPtr<Chunk>]>,
}

impl TenantRegistry {
    pub(crate) fn new() -> Self {
        let chunks = (0..MAX_TENANTS / TENANT_CHUNK)
            .map(|_| AtomicPtr::new(std::ptr::null_mut()))
            .collect();
        Self {
            ids: DashMap::new(),
            issued: AtomicUsize::new(0),
            chunks,
        }
    }

    /// The id of `name`, interning it (and marking it live) if it is new.
    pub(crate) fn intern(&self, name: &str) -> Result<TenantId, TreeError> {
        if let Some(id) = self.ids.get(name) {
            return Ok(*id);
        }
        let mut failure = None;
        let id = *self.ids.entry(name.into()).or_insert_with(|| {
            let index = self.issued.load(Ordering::Relaxed);
            if index >= MAX_TENANTS {
                failure = Some(TreeError::TooManyTenants { limit: MAX_TENANTS });
                return TenantId(u16::MAX);
            }
            self.issued.store(index + 1, Ordering::Relaxed);
            let entry = self.entry_or_alloc(index);
            let _ = entry.name.set(name.into());
            entry.live.store(true, Ordering::Relaxed);
            TenantId::from_index(index)
        });
        if let Some(err) = failure {
            self.ids.remove(name);
            return Err(err);
        }
        Ok(id)
    }

    /// The id of `name` if it was ever interned.
    pub(crate) fn lookup(&self, name: &str) -> Option<TenantId> {
        self.ids.get(name).map(|id| *id)
    }

    pub(crate) fn name(&self, id: TenantId) -> &str {
        self.entry(id).and_then(|e| e.name.get()).map_or("", |n| n)
    }

    /// Checks that `id` was issued by this registry.
    pub(crate) fn check(&self, id: TenantId) -> Result<(), TreeError> {
        if id.index() < self.issued.load(Ordering::Relaxed) && self.entry(id).is_some() {
            Ok(())
        } else {
            Err(TreeError::UnknownTenant(id.index() as u32))
        }
    }

    /// Ids issued so far, in issue order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = TenantId> + '_ {
        (0..self.issued.load(Ordering::Relaxed))
            .map(TenantId::from_index)
            .filter(|id| self.entry(*id).is_some())
    }

    /// Whether the tenant is present: inserted since its last removal, or holding units (an
    /// insert that raced the removal and kept some nodes).
    pub(crate) fn is_live(&self, id: TenantId) -> bool {
        self.entry(id)
            .is_some_and(|e| e.live.load(Ordering::Relaxed))
            || self.units(id) > 0
    }

    pub(crate) fn set_live(&self, id: TenantId, live: bool) {
        if let Some(e) = self.entry(id) {
            if e.live.load(Ordering::Relaxed) != live {
                e.live.store(live, Ordering::Relaxed);
            }
        }
    }

    /// The tenant's char count; exact at rest.
    pub(crate) fn units(&self, id: TenantId) -> usize {
        self.entry(id).map_or(0, |e| {
            // A transiently wrapped count (subtract landed before add) reads as 0.
            let raw = e.units.load(Ordering::Relaxed);
            if raw > isize::MAX as usize {
                0
            } else {
                raw
            }
        })
    }

    pub(crate) fn add_units(&self, id: TenantId, units: usize) {
        if let Some(e) = self.entry(id) {
            e.units.fetch_add(units, Ordering::Relaxed);
        }
    }

    pub(crate) fn sub_units(&self, id: TenantId, units: usize) {
        if let Some(e) = self.entry(id) {
            e.units.fetch_sub(units, Ordering::Relaxed);
        }
    }

    fn entry(&self, id: TenantId) -> Option<&Entry> {
        let chunk = self.chunks.get(id.index() / TENANT_CHUNK)?;
        let ptr = chunk.load(Ordering::Acquire);
        // SAFETY: a non-null chunk pointer was published by `entry_or_alloc` from a `Box` and is
        // only freed in `Drop`, which has `&mut self`, so it outlives this `&self` borrow.
        let chunk = unsafe { ptr.as_ref() }?;
        Some(&chunk.entries[id.index() % TENANT_CHUNK])
    }

    fn entry_or_alloc(&self, index: usize) -> &Entry {
        let slot = &self.chunks[index / TENANT_CHUNK];
        if slot.load(Ordering::Acquire).is_null() {
            let fresh = Box::into_raw(Box::new(Chunk {
                entries: std::array::from_fn(|_| {
                    CachePadded::new(Entry {
                        units: AtomicUsize::new(0),
                        live: AtomicBool::new(false),
                        name: OnceLock::new(),
                    })
                }),
            }));
            if slot
                .compare_exchange(
                    std::ptr::null_mut(),
                    fresh,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                // SAFETY: `fresh` came from `Box::into_raw` above and was never published.
                drop(unsafe { Box::from_raw(fresh) });
            }
        }
        self.entry(TenantId::from_index(index))
            .expect("chunk was just published")
    }
}

impl Drop for TenantRegistry {
    fn drop(&mut self) {
        for chunk in self.chunks.iter() {
            let ptr = chunk.load(Ordering::Acquire);
            if !ptr.is_null() {
                // SAFETY: published chunks come from `Box::into_raw` and are freed only here,
                // once, with exclusive access.
                drop(unsafe { Box::from_raw(ptr) });
            }
        }
    }
}

impl fmt::Debug for TenantRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantRegistry")
            .field("issued", &self.issued.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(all(test, not(router_loom)))]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_dense() {
        let reg = TenantRegistry::new();
        let a = reg.intern("http://a").unwrap();
        let b = reg.intern("http://b").unwrap();
        assert_eq!(reg.intern("http://a").unwrap(), a);
        assert_eq!((a.index(), b.index()), (0, 1));
        assert_eq!(reg.name(b), "http://b");
        assert_eq!(reg.lookup("http://c"), None);
        assert!(reg.check(TenantId::from_index(5)).is_err());
    }

    #[test]
    fn counts_wrap_transiently_and_read_as_zero() {
        let reg = TenantRegistry::new();
        let a = reg.intern("a").unwrap();
        reg.sub_units(a, 3);
        assert_eq!(reg.units(a), 0);
        reg.add_units(a, 10);
        assert_eq!(reg.units(a), 7);
    }

    #[test]
    fn interning_past_the_limit_is_an_error() {
        let reg = TenantRegistry::new();
        for i in 0..MAX_TENANTS {
            reg.intern(&format!("t{i}")).unwrap();
        }
        let err = reg.intern("one-too-many").unwrap_err();
        assert_eq!(err, TreeError::TooManyTenants { limit: MAX_TENANTS });
        assert!(err.to_string().contains("limit"));
        assert_eq!(reg.lookup("one-too-many"), None);
    }
}
