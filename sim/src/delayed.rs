//! Items on their way somewhere, each due at a time: delivered in order of due time, and in
//! order of sending among items due at once (KV events to a router, events between replicas).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

struct Entry<T> {
    due: f64,
    seq: u64,
    item: T,
}

impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.due
            .total_cmp(&other.due)
            .then(self.seq.cmp(&other.seq))
    }
}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Entry<T> {}

pub struct Delayed<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    sent: u64,
}

impl<T> Delayed<T> {
    pub fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            sent: 0,
        }
    }

    /// Sends `item`, due at `due`.
    pub fn push(&mut self, due: f64, item: T) {
        self.sent += 1;
        self.heap.push(Reverse(Entry {
            due,
            seq: self.sent,
            item,
        }));
    }

    /// The next item due by `now`, if any.
    pub fn pop_due(&mut self, now: f64) -> Option<T> {
        if self.heap.peek().is_some_and(|e| e.0.due <= now) {
            self.heap.pop().map(|e| e.0.item)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_due_in_time_then_sending_order() {
        let mut d = Delayed::new();
        d.push(5.0, "b");
        d.push(1.0, "a");
        d.push(5.0, "c");
        assert_eq!(d.pop_due(0.5), None);
        assert_eq!(d.pop_due(1.0), Some("a"));
        assert_eq!(d.pop_due(4.9), None);
        assert_eq!(
            (d.pop_due(9.0), d.pop_due(9.0), d.pop_due(9.0)),
            (Some("b"), Some("c"), None)
        );
    }
}
