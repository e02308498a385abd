//! A worker's prefix KV cache: an LRU of 512-token blocks keyed by the block's id (Mooncake
//! ids are prefix-chained, so an id stands for its whole prefix). A request hits the longest
//! run of its leading blocks present. Every change is reported as the KV cache events an
//! engine would publish (blocks stored, blocks removed).

use cache_aware_router::KvEvent;

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone)]
pub struct BlockCache {
    capacity: usize,
    /// Block -> last use.
    used: HashMap<u64, u64>,
    /// Last use -> block, oldest first.
    order: BTreeMap<u64, u64>,
    clock: u64,
}

impl BlockCache {
    /// A cache holding at most `capacity` blocks.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            used: HashMap::new(),
            order: BTreeMap::new(),
            clock: 0,
        }
    }

    /// How many leading blocks of `ids` are cached (without touching them).
    pub fn leading_hits(&self, ids: &[u64]) -> usize {
        ids.iter()
            .take_while(|id| self.used.contains_key(id))
            .count()
    }

    /// Caches every block of `ids` as just used, evicting least recently used blocks; pushes
    /// the events: the blocks newly stored (chained from the block before the first), then
    /// those evicted.
    pub fn touch(&mut self, ids: &[u64], events: &mut Vec<KvEvent>) {
        let mut stored: Vec<u64> = Vec::new();
        let mut parent = None;
        for (i, &id) in ids.iter().enumerate() {
            self.clock += 1;
            match self.used.insert(id, self.clock) {
                Some(old) => {
                    self.order.remove(&old);
                }
                None => {
                    if stored.is_empty() && i > 0 {
                        parent = Some(ids[i - 1]);
                    }
                    stored.push(id);
                }
            }
            self.order.insert(self.clock, id);
        }
        if !stored.is_empty() {
            events.push(KvEvent::Stored {
                parent,
                blocks: stored,
            });
        }
        self.shrink(events);
    }

    /// Holds at most `capacity` blocks from now on, evicting the least recently used; pushes
    /// the removal event.
    pub fn set_capacity(&mut self, capacity: usize, events: &mut Vec<KvEvent>) {
        self.capacity = capacity;
        self.shrink(events);
    }

    fn shrink(&mut self, events: &mut Vec<KvEvent>) {
        let mut removed = Vec::new();
        while self.used.len() > self.capacity {
            let (&tick, &id) = self
                .order
                .iter()
                .next()
                .expect("non-empty when over capacity");
            self.order.remove(&tick);
            self.used.remove(&id);
            removed.push(id);
        }
        if !removed.is_empty() {
            events.push(KvEvent::Removed { blocks: removed });
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_keeps_the_recent_and_hits_leading_runs() {
        let mut c = BlockCache::new(3);
        let mut events = vec![];
        c.touch(&[1, 2, 3], &mut events);
        assert_eq!(c.leading_hits(&[1, 2, 3, 4]), 3);
        assert_eq!(c.leading_hits(&[2, 3]), 2);
        assert_eq!(c.leading_hits(&[9, 1]), 0, "only leading blocks count");
        c.touch(&[1], &mut events); // 1 is now the most recent; 2 the least
        c.touch(&[4], &mut events);
        assert_eq!(c.len(), 3);
        assert_eq!(c.leading_hits(&[2]), 0, "2 was evicted");
        assert_eq!(c.leading_hits(&[1]), 1);
        assert_eq!(c.leading_hits(&[3, 4]), 2);
        let mut empty = BlockCache::new(0);
        empty.touch(&[1, 2], &mut events);
        assert_eq!(empty.len(), 0);
        let stored = |parent, blocks: &[u64]| KvEvent::Stored {
            parent,
            blocks: blocks.to_vec(),
        };
        let removed = |blocks: &[u64]| KvEvent::Removed {
            blocks: blocks.to_vec(),
        };
        assert_eq!(
            events,
            [
                stored(None, &[1, 2, 3]),
                stored(None, &[4]),
                removed(&[2]),
                stored(None, &[1, 2]),
                removed(&[1, 2]),
            ]
        );
        // A request extending a cached prefix stores its new blocks under the last cached one.
        events.clear();
        c.touch(&[3, 4, 7, 8], &mut events);
        assert_eq!(events[0], stored(Some(4), &[7, 8]));
    }
}
