//! Edge labels: immutable slices of shared key bytes.
//!
//! A label never changes once its node is published, so readers compare against it without any
//! synchronisation. A split gives both halves a slice of the same buffer instead of copying it.
//! All offsets are byte offsets on unit boundaries (see `key.rs`), where the tree's walks only
//! ever stop.

use std::sync::Arc;

/// Bytes of a shared buffer outside a label that never make it worth a copy of its own.
const WASTE_SLACK: usize = 64;

/// A slice `start..end` of a shared byte buffer.
#[derive(Clone)]
pub(crate) struct Label {
    buf: Arc<[u8]>,
    start: usize,
    end: usize,
}

impl Label {
    pub(crate) fn new(bytes: &[u8]) -> Self {
        Self {
            buf: Arc::from(bytes),
            start: 0,
            end: bytes.len(),
        }
    }

    pub(crate) fn empty() -> Self {
        Self::new(&[])
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the label is a small part of the buffer it shares: once the nodes holding the
    /// rest are gone, a copy of its own frees the rest (`compacted`).
    pub(crate) fn wastes(&self) -> bool {
        self.buf.len() > 2 * self.len() + WASTE_SLACK
    }

    /// This label, in a buffer of its own if it `wastes` its buffer, else sharing it.
    pub(crate) fn compacted(&self) -> Label {
        if self.wastes() {
            Label::new(self.bytes())
        } else {
            self.clone()
        }
    }

    /// The labels of the two halves when split at byte `at` (a unit boundary, `0 < at < len`).
    pub(crate) fn split_at(&self, at: usize) -> (Label, Label) {
        debug_assert!(at > 0 && at < self.len());
        let upper = Label {
            buf: Arc::clone(&self.buf),
            start: self.start,
            end: self.start + at,
        };
        let lower = Label {
            buf: Arc::clone(&self.buf),
            start: self.start + at,
            end: self.end,
        };
        (upper, lower)
    }
}

#[cfg(all(test, not(router_loom)))]
mod tests {
    use super::*;

    #[test]
    fn split_shares_the_buffer() {
        let l = Label::new("héllo".as_bytes());
        let (u, d) = l.split_at(3);
        assert_eq!((u.bytes(), d.bytes()), ("hé".as_bytes(), "llo".as_bytes()));
        assert!(Arc::ptr_eq(&u.buf, &d.buf));
        let long = Label::new(&[b'x'; 1000]);
        let (short, _) = long.split_at(10);
        assert!(short.wastes());
        let own = short.compacted();
        assert_eq!((own.bytes(), own.buf.len()), (&[b'x'; 10][..], 10));
        assert!(!own.wastes() && !long.wastes());
    }
}
