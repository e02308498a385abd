//! A worker's prefix KV cache: an LRU of 512-token blocks keyed by the block's id (Mooncake
//! ids are prefix-chained, so an id stands for its whole prefix). A request hits the longest
//! run of its leading blocks present.

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

    /// Caches every block of `ids` as just used, evicting least recently used blocks.
    pub fn touch(&mut self, ids: &[u64]) {
        for &id in ids {
            self.clock += 1;
            if let Some(old) = self.used.insert(id, self.clock) {
                self.order.remove(&old);
            }
            self.order.insert(self.clock, id);
        }
        self.shrink();
    }

    /// Holds at most `capacity` blocks from now on, evicting the least recently used.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.shrink();
    }

    fn shrink(&mut self) {
        while self.used.len() > self.capacity {
            let (&tick, &id) = self
                .order
                .iter()
                .next()
                .expect("non-empty when over capacity");
            self.order.remove(&tick);
            self.used.remove(&id);
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
        c.touch(&[1, 2, 3]);
        assert_eq!(c.leading_hits(&[1, 2, 3, 4]), 3);
        assert_eq!(c.leading_hits(&[2, 3]), 2);
        assert_eq!(c.leading_hits(&[9, 1]), 0, "only leading blocks count");
        c.touch(&[1]); // 1 is now the most recent; 2 the least
        c.touch(&[4]);
        assert_eq!(c.len(), 3);
        assert_eq!(c.leading_hits(&[2]), 0, "2 was evicted");
        assert_eq!(c.leading_hits(&[1]), 1);
        assert_eq!(c.leading_hits(&[3, 4]), 2);
        let mut empty = BlockCache::new(0);
        empty.touch(&[1, 2]);
        assert_eq!(empty.len(), 0);
    }
}
