//! Tenant slots: which tenants hold a node, and when each last used it.
//!
//! Each node has a fixed array of `AtomicU64` slots. A slot packs
//! `[frozen:1][tag:15][tick:48]`, where tag 0 is EMPTY, `DEAD_TAG` is a detached tenant, and any
//! other tag is `tenant id + 1`.
//!
//! Invariants:
//! - EMPTY slots form a suffix of the array: a slot leaves EMPTY only by a CAS, and never returns
//!   to it (detaching writes DEAD). Arrays are built compacted (live slots first).
//! - A tenant is live in at most one slot of a node. An attach scans for the tenant and stops at
//!   the first EMPTY slot, which it claims by CAS. Every slot before the first EMPTY one is
//!   non-EMPTY forever, so a second attacher of the same tenant that loses the CAS re-reads that
//!   slot and finds the tenant there. This is what keeps two concurrent first attaches from
//!   counting a tenant's chars twice.
//! - A frozen slot never changes again. Freezing (`fetch_or` of the frozen bit) is how a node
//!   being replaced gets a final snapshot: any attach, refresh or detach CAS that lands before the
//!   freeze is in the snapshot, and any after it fails and sees the bit.
//!
//! Orderings: every change of a slot is a CAS (or `fetch_or`) on that one location, so the slot's
//! modification order alone decides races; `AcqRel`/`Acquire` is enough, nothing here needs a
//! total order across locations. Refreshes that lose a CAS are dropped: a tick is an LRU hint.

use crate::clock::MAX_TICK;
use crate::constants::INLINE_SLOTS;
use crate::sync::{AtomicU64, Ordering};
use crate::tenant::TenantId;

const FROZEN: u64 = 1 << 63;
const TAG_SHIFT: u32 = 48;
const TAG_MASK: u64 = 0x7FFF;
const EMPTY_TAG: u64 = 0;
const DEAD_TAG: u64 = TAG_MASK;

pub(crate) type Slots = [AtomicU64];

#[inline]
fn tag_of(v: u64) -> u64 {
    (v >> TAG_SHIFT) & TAG_MASK
}

#[inline]
fn tick_of(v: u64) -> u64 {
    v & MAX_TICK
}

#[inline]
fn encode(tag: u64, tick: u64) -> u64 {
    (tag << TAG_SHIFT) | tick.min(MAX_TICK)
}

#[inline]
fn tag_for(id: TenantId) -> u64 {
    id.index() as u64 + 1
}

/// The live tenant in a slot value, if any.
#[inline]
fn live_tenant(v: u64) -> Option<TenantId> {
    match tag_of(v) {
        EMPTY_TAG | DEAD_TAG => None,
        tag => Some(TenantId::from_index((tag - 1) as usize)),
    }
}

/// The outcome of an attach.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Attach {
    /// The tenant already held the node; its tick was refreshed.
    Present,
    /// This call attached the tenant: the caller adds the node's chars to its count.
    Attached,
    /// No EMPTY slot is left: the node must be rebuilt with room.
    Full,
    /// The node is being replaced.
    Frozen,
}

/// The outcome of a detach.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Detach {
    /// This call detached the tenant: the caller subtracts the node's chars from its count.
    Detached,
    Absent,
    Frozen,
    /// The tenant's tick is newer than the detach allows: a request used the node after the
    /// evictor read it, so it stays.
    Newer,
}

/// A node's slot array, fixed at construction: in the node itself when `INLINE_SLOTS` are
/// enough (a leaf starts with one tenant and room for more), else on the heap. Most nodes never
/// outgrow the inline slots, so they cost one allocation fewer and their slots share the node's
/// cache lines. Derefs to the slots.
pub(crate) struct SlotArray {
    inline: [AtomicU64; INLINE_SLOTS],
    /// Empty (no allocation) when the inline slots are in use.
    spilled: Box<Slots>,
}

impl std::ops::Deref for SlotArray {
    type Target = Slots;

    #[inline]
    fn deref(&self) -> &Slots {
        if self.spilled.is_empty() {
            &self.inline
        } else {
            &self.spilled
        }
    }
}

/// A fresh slot array of at least `capacity` slots holding `live` (tenant, tick) pairs first.
pub(crate) fn new_slots(live: &[(TenantId, u64)], capacity: usize) -> SlotArray {
    debug_assert!(live.len() <= capacity);
    let value = |i: usize| {
        live.get(i)
            .map_or(0, |&(id, tick)| encode(tag_for(id), tick))
    };
    if capacity <= INLINE_SLOTS {
        SlotArray {
            inline: std::array::from_fn(|i| AtomicU64::new(value(i))),
            spilled: Box::default(),
        }
    } else {
        SlotArray {
            inline: std::array::from_fn(|_| AtomicU64::new(0)),
            spilled: (0..capacity).map(|i| AtomicU64::new(value(i))).collect(),
        }
    }
}

/// Capacity for a rebuilt array holding `live` tenants: room to double.
pub(crate) fn capacity_for(live: usize) -> usize {
    (2 * live).max(live + crate::constants::MIN_TENANT_SLOTS)
}

pub(crate) fn attach(slots: &Slots, id: TenantId, tick: u64) -> Attach {
    let want = tag_for(id);
    for slot in slots {
        let mut v = slot.load(Ordering::Acquire);
        loop {
            if v & FROZEN != 0 {
                return Attach::Frozen;
            }
            match tag_of(v) {
                t if t == want => {
                    refresh_value(slot, v, tick);
                    return Attach::Present;
                }
                EMPTY_TAG => match slot.compare_exchange(
                    v,
                    encode(want, tick),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Attach::Attached,
                    // Someone claimed this slot first: look at what they wrote.
                    Err(now) => v = now,
                },
                _ => break,
            }
        }
    }
    Attach::Full
}

/// Raises the tenant's tick to `tick` if it holds the node; returns whether it does.
pub(crate) fn refresh(slots: &Slots, id: TenantId, tick: u64) -> bool {
    let want = tag_for(id);
    for slot in slots {
        let v = slot.load(Ordering::Acquire);
        match tag_of(v) {
            t if t == want => {
                refresh_value(slot, v, tick);
                return true;
            }
            EMPTY_TAG => return false,
            _ => {}
        }
    }
    false
}

#[inline]
fn refresh_value(slot: &AtomicU64, v: u64, tick: u64) {
    // Only write when the tick moves: hot shared nodes are read far more often than a coarse
    // tick advances, and a load keeps their cache line shared.
    if v & FROZEN == 0 && tick_of(v) < tick {
        let _ = slot.compare_exchange(
            v,
            encode(tag_of(v), tick),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

/// Detaches `id` if its tick is at most `at_most` (`MAX_TICK`: whatever it is). The tick is
/// checked on the value the CAS replaces, so a refresh that lands first always wins: eviction
/// never takes a node from a tenant that used it after the evictor chose it.
pub(crate) fn detach(slots: &Slots, id: TenantId, at_most: u64) -> Detach {
    let want = tag_for(id);
    for slot in slots {
        let mut v = slot.load(Ordering::Acquire);
        loop {
            if v & FROZEN != 0 {
                return Detach::Frozen;
            }
            match tag_of(v) {
                #[cfg(not(router_loom_broken_detach))]
                t if t == want && tick_of(v) > at_most => return Detach::Newer,
                t if t == want => match slot.compare_exchange(
                    v,
                    encode(DEAD_TAG, 0),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Detach::Detached,
                    // A refresh changed the tick, or a freeze landed: look again.
                    Err(now) => v = now,
                },
                EMPTY_TAG => return Detach::Absent,
                _ => break,
            }
        }
    }
    Detach::Absent
}

/// The tenant's tick if it holds the node.
pub(crate) fn tick(slots: &Slots, id: TenantId) -> Option<u64> {
    let want = tag_for(id);
    for slot in slots {
        let v = slot.load(Ordering::Acquire);
        match tag_of(v) {
            t if t == want => return Some(tick_of(v)),
            EMPTY_TAG => return None,
            _ => {}
        }
    }
    None
}

pub(crate) fn holds(slots: &Slots, id: TenantId) -> bool {
    tick(slots, id).is_some()
}

/// Live (tenant, tick) pairs, in slot order.
pub(crate) fn live(slots: &Slots) -> impl Iterator<Item = (TenantId, u64)> + '_ {
    slots
        .iter()
        .map(|s| s.load(Ordering::Acquire))
        .take_while(|&v| tag_of(v) != EMPTY_TAG)
        .filter_map(|v| live_tenant(v).map(|id| (id, tick_of(v))))
}

pub(crate) fn has_live(slots: &Slots) -> bool {
    live(slots).next().is_some()
}

/// The oldest and the newest tick of the live tenants, if any.
pub(crate) fn tick_range(slots: &Slots) -> Option<(u64, u64)> {
    live(slots).fold(None, |range, (_, t)| match range {
        None => Some((t, t)),
        Some((lo, hi)) => Some((lo.min(t), hi.max(t))),
    })
}

/// The live tenant with the oldest tick (the first in slot order on ties).
pub(crate) fn oldest(slots: &Slots) -> Option<(TenantId, u64)> {
    live(slots).fold(None, |best, (id, t)| match best {
        Some((_, b)) if b <= t => best,
        _ => Some((id, t)),
    })
}

/// Freezes every slot; afterwards `live` returns the same answer forever.
pub(crate) fn freeze(slots: &Slots) {
    for slot in slots {
        slot.fetch_or(FROZEN, Ordering::AcqRel);
    }
}

#[cfg(all(test, not(router_loom)))]
mod tests {
    use super::*;

    fn id(i: usize) -> TenantId {
        TenantId::from_index(i)
    }

    #[test]
    fn attach_refresh_detach() {
        let slots = new_slots(&[], 2);
        assert_eq!(
            slots.len(),
            INLINE_SLOTS,
            "small arrays use the inline slots"
        );
        assert_eq!(attach(&slots, id(3), 5), Attach::Attached);
        assert_eq!(attach(&slots, id(3), 9), Attach::Present);
        assert_eq!(tick(&slots, id(3)), Some(9));
        assert!(!refresh(&slots, id(4), 10));
        assert_eq!(attach(&slots, id(4), 1), Attach::Attached);
        assert_eq!(attach(&slots, id(6), 1), Attach::Attached);
        assert_eq!(attach(&slots, id(5), 1), Attach::Full);
        assert_eq!(
            detach(&slots, id(3), 8),
            Detach::Newer,
            "used at 9, after 8"
        );
        assert_eq!(detach(&slots, id(3), 9), Detach::Detached);
        assert_eq!(detach(&slots, id(3), MAX_TICK), Detach::Absent);
        assert_eq!(
            live(&slots).collect::<Vec<_>>(),
            vec![(id(4), 1), (id(6), 1)]
        );
        assert_eq!(tick_range(&slots), Some((1, 1)));
        assert_eq!(oldest(&slots), Some((id(4), 1)), "the first on ties");
        // The DEAD slot is not reused: the array is full until rebuilt.
        assert_eq!(attach(&slots, id(3), 1), Attach::Full);
    }

    #[test]
    fn frozen_slots_refuse_every_change() {
        let slots = new_slots(&[(id(1), 4)], 3);
        freeze(&slots);
        assert_eq!(attach(&slots, id(2), 1), Attach::Frozen);
        assert_eq!(attach(&slots, id(1), 9), Attach::Frozen);
        assert_eq!(detach(&slots, id(1), MAX_TICK), Detach::Frozen);
        assert_eq!(live(&slots).collect::<Vec<_>>(), vec![(id(1), 4)]);
    }

    #[test]
    fn large_arrays_spill_to_the_heap_with_their_tenants_first() {
        let live: Vec<_> = (0..4).map(|i| (id(i), i as u64)).collect();
        let slots = new_slots(&live, capacity_for(live.len()));
        assert_eq!(slots.len(), 8);
        assert_eq!(self::live(&slots).collect::<Vec<_>>(), live);
        for i in 4..8 {
            assert_eq!(attach(&slots, id(i), 0), Attach::Attached);
        }
        assert_eq!(attach(&slots, id(8), 0), Attach::Full);
    }

    #[test]
    fn capacity_leaves_room() {
        assert_eq!(capacity_for(0), 2);
        assert_eq!(capacity_for(1), 3);
        assert_eq!(capacity_for(8), 16);
    }
}

/// Loom model of the tick-conditioned detach (run by `.ci/loom`; with
/// `--cfg router_loom_broken_detach` the detach ignores the tick, and the model must fail).
#[cfg(all(test, router_loom))]
mod loom_model {
    use super::*;
    use crate::sync::{thread, Arc};

    /// Eviction read a leaf's tick as 1 and detaches it "if still at most 1", while a request
    /// refreshes it to 3. If the request then sees its tick at 3 (its refresh landed), the
    /// detach must not take the node: the request used it after the evictor chose it.
    #[test]
    fn loom_model_eviction_never_takes_a_leaf_just_used() {
        loom::model(|| {
            let id = TenantId::from_index(0);
            let slots = Arc::new(new_slots(&[(id, 1)], 1));
            let evictor = {
                let slots = slots.clone();
                thread::spawn(move || detach(&slots, id, 1))
            };
            refresh(&slots, id, 3);
            let used = tick(&slots, id) == Some(3);
            let outcome = evictor.join().unwrap();
            if used {
                assert_eq!(
                    outcome,
                    Detach::Newer,
                    "detached after a use it did not see"
                );
                assert_eq!(tick(&slots, id), Some(3));
            } else {
                assert_eq!(outcome, Detach::Detached);
            }
        });
    }
}
