//! A copy-on-write cell: lock-free reads of a rarely changed value (the policy's model and
//! worker tables).
//!
//! Readers load the pointer under an epoch guard (`Acquire`, pairing with the `Release` store
//! that published the value) and read the value in place. Writers are serialised by a mutex
//! that readers never touch: a writer clones the current value, changes the clone, publishes it
//! with one store, and retires the old value through the epoch. Writes are registrations and
//! removals, never part of routing a request.

use crate::sync::Ordering;
use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned};
use std::fmt;
use std::sync::Mutex;

pub(crate) struct CowCell<T> {
    value: Atomic<T>,
    writers: Mutex<()>,
}

impl<T: Clone> CowCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            value: Atomic::new(value),
            writers: Mutex::new(()),
        }
    }

    pub(crate) fn load<'g>(&self, guard: &'g Guard) -> &'g T {
        // SAFETY: the pointer is never null (set in `new`, replaced only by `update`), and a
        // replaced value is retired through the epoch, so it lives while `guard` does.
        unsafe { self.value.load(Ordering::Acquire, guard).deref() }
    }

    /// Replaces the value with `change(current clone)`, returning what `change` returned.
    pub(crate) fn update<R>(&self, change: impl FnOnce(&mut T) -> R) -> R {
        let _writer = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        let guard = epoch::pin();
        let current = self.value.load(Ordering::Acquire, &guard);
        // SAFETY: as in `load`.
        let mut next = unsafe { current.deref() }.clone();
        let result = change(&mut next);
        self.value.store(Owned::new(next), Ordering::Release);
        // SAFETY: `current` is unreachable now; pinned readers keep it until they unpin.
        unsafe { guard.defer_destroy(current) };
        result
    }
}

impl<T> Drop for CowCell<T> {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no reader or writer is left.
        unsafe {
            let guard = epoch::unprotected();
            drop(self.value.load(Ordering::Relaxed, guard).into_owned());
        }
    }
}

impl<T: fmt::Debug + Clone> fmt::Debug for CowCell<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let guard = epoch::pin();
        self.load(&guard).fmt(f)
    }
}
