//! A coarse monotonic tick for last-access times.
//!
//! Reading the clock is once per operation, never per node. The default is milliseconds since the
//! tree was created; a manual clock lets tests and trace replays drive time themselves so eviction
//! order is reproducible. Ticks are 48-bit (they are packed into tenant slots); 2^48 ms is 8,900
//! years, so they never wrap in practice and are saturated if they would.
//!
//! The manual clock's counter uses `Relaxed`: a tick is a hint for LRU order, and nothing else is
//! published through it.

use crate::sync::{Arc, AtomicU64, Ordering};
use std::fmt;
use std::time::Instant;

/// The largest tick a tenant slot can hold.
pub(crate) const MAX_TICK: u64 = (1 << 48) - 1;

/// Where a tree reads its last-access times from.
#[derive(Clone)]
pub struct Clock {
    kind: ClockKind,
}

#[derive(Clone)]
enum ClockKind {
    Monotonic(Instant),
    Manual(ManualClock),
}

/// A clock that only moves when told to: for deterministic tests and trace replays.
#[derive(Clone, Default)]
pub struct ManualClock {
    tick: Arc<AtomicU64>,
}

impl ManualClock {
    /// A manual clock at tick 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `ticks`.
    pub fn advance(&self, ticks: u64) {
        self.tick.fetch_add(ticks, Ordering::Relaxed);
    }

    /// Sets the clock to `tick` (it may go backwards; the tree only uses it to order accesses).
    pub fn set(&self, tick: u64) {
        self.tick.store(tick, Ordering::Relaxed);
    }

    /// The current tick.
    pub fn now(&self) -> u64 {
        self.tick.load(Ordering::Relaxed)
    }
}

impl Clock {
    /// Milliseconds since this clock was created.
    pub fn monotonic() -> Self {
        Self {
            kind: ClockKind::Monotonic(Instant::now()),
        }
    }

    /// The current tick, saturated to 48 bits.
    pub(crate) fn now(&self) -> u64 {
        let tick = match &self.kind {
            ClockKind::Monotonic(start) => elapsed_ms(start),
            ClockKind::Manual(manual) => manual.now(),
        };
        tick.min(MAX_TICK)
    }
}

#[cfg(not(router_loom))]
fn elapsed_ms(start: &Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Under loom every execution of a model must be deterministic, and real time would feed
/// different ticks into slot CASes on each run: the monotonic clock stands still there.
#[cfg(router_loom)]
fn elapsed_ms(_start: &Instant) -> u64 {
    0
}

impl Default for Clock {
    fn default() -> Self {
        Self::monotonic()
    }
}

impl From<ManualClock> for Clock {
    fn from(manual: ManualClock) -> Self {
        Self {
            kind: ClockKind::Manual(manual),
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ClockKind::Monotonic(_) => f.write_str("Clock::Monotonic"),
            ClockKind::Manual(m) => write!(f, "Clock::Manual({})", m.now()),
        }
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManualClock({})", self.now())
    }
}

#[cfg(all(test, not(router_loom)))]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let manual = ManualClock::new();
        let clock = Clock::from(manual.clone());
        assert_eq!(clock.now(), 0);
        manual.advance(5);
        assert_eq!(clock.now(), 5);
        manual.set(u64::MAX);
        assert_eq!(clock.now(), MAX_TICK, "ticks saturate at 48 bits");
    }

    #[test]
    fn monotonic_clock_does_not_go_back() {
        let clock = Clock::monotonic();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
    }
}
