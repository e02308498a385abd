//! The budget: each model's trees kept within `max_tree_size` (in each tree's units), all the
//! eviction the policy does.
//!
//! The tree evicts (`tree/evict.rs`, at a cost proportional to what it frees); this decides
//! when and how far. A request whose insert finds its tree over the budget trims it to the
//! target, `budget - budget / EVICTION_HEADROOM_DIVISOR`, before it returns: so a tree is
//! over its budget only by the inserts of requests still in flight (at most one prompt per
//! routing thread), and a request pays for a batch of eviction once every headroom's worth of
//! new text. The evictor's tick and `run_eviction` trim whatever is still over.

use super::config::CacheAwareConfig;
use crate::constants::EVICTION_HEADROOM_DIVISOR;
use crate::tree::{EvictionStats, KeyUnit, KeyedTree};

/// When and how far trees are trimmed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    max: usize,
    /// Whether requests keep trees within it (`eviction_interval_secs > 0`: as in the seed,
    /// 0 means no eviction unless asked for).
    in_requests: bool,
}

impl Budget {
    pub(crate) fn new(config: &CacheAwareConfig) -> Self {
        Self {
            max: config.max_tree_size,
            in_requests: config.eviction_interval_secs > 0,
        }
    }

    /// After a request's insert: one atomic load when `tree` is within the budget; else the
    /// tree trimmed to the target, and what that evicted.
    pub(crate) fn after_insert<K: KeyUnit>(&self, tree: &KeyedTree<K>) -> Option<EvictionStats> {
        if self.in_requests {
            self.trim(tree)
        } else {
            None
        }
    }

    /// `tree` trimmed to the target if it is over the budget, and what that evicted (`None`
    /// if nothing).
    pub(crate) fn trim<K: KeyUnit>(&self, tree: &KeyedTree<K>) -> Option<EvictionStats> {
        if tree.total_units() <= self.max {
            return None;
        }
        let stats = tree.evict_to_total(self.max - self.max / EVICTION_HEADROOM_DIVISOR);
        (stats != EvictionStats::default()).then_some(stats)
    }
}
