//! The cache-aware policy's configuration and its validation.

use std::fmt;

/// What a miss (match ratio at or below `cache_threshold`) is routed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissRule {
    /// The least-loaded healthy worker, ties broken at random (default): spreads misses over
    /// idle workers.
    #[default]
    LeastLoaded,
    /// The seed's rule: the least-loaded worker of the model with the smallest tree, first on
    /// ties. At low load it sends every miss to the same worker.
    SmallestTree,
}

/// How a balanced request picks among workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SelectionRule {
    /// The seed's rule (the seed-compatible constructors' `new` and `with_config`): if more
    /// than `cache_threshold` of the prompt matches, the least-loaded worker holding the
    /// longest match, however long its queue; else the miss rule.
    Threshold,
    /// Cost-aware: every eligible worker is scored by its queued work plus the prefill it would
    /// still have to do, `load x half the mean request chars + unmatched chars`, where its
    /// match is the longest prefix of the prompt it holds; the lowest score wins. A long match
    /// wins only while the worker's queue does not cost more than the prefill it saves.
    CostAware,
    /// Estimated time to first token: every eligible worker is scored by the prefill it has
    /// queued (prompt chars routed to it and not past their first token, from the load
    /// tickets) plus this prompt's chars it does not hold, times a prefill cost per char, plus
    /// its requests decoding times a decode-interference cost; the lowest estimate wins, ties
    /// to the longer match. The prefill cost is learned from the first-token times the
    /// tickets report ([`crate::LoadTicket::first_token`]); until then it is 6 us a char
    /// (25 us a token of about 4 chars). The holder of the longest match keeps the request
    /// while its estimate is within 2x of the lowest. Needs the native API's tickets to see
    /// queued work. The default of [`crate::CacheAwarePolicy::builder`].
    #[default]
    EstimatedTtft,
}

/// What [`crate::CacheAwarePolicy::route_blocks`] matches a request's block hashes against.
/// (`route` and `route_tokens` always match the policy's own record.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoutingMode {
    /// The policy's own record of the blocks it routed to each worker (the model's block tree),
    /// as `route` does for texts. Needs no events.
    #[default]
    Approximate,
    /// The workers' KV cache events only ([`crate::CacheAwarePolicy::apply_kv_event`]): what
    /// each engine says it holds now. Records nothing of its own.
    Precise,
    /// The events, and beside them the record of the policy's own decisions; each worker is
    /// scored by the longer of the two matches. A decision counts for a worker that publishes
    /// events only for the hybrid window after it was made (until the worker's own events
    /// catch up with it: Dynamo's "predict on route"); for a worker that has published none it
    /// counts as in approximate routing.
    Hybrid,
}

/// The seed's configuration, same fields. Defaults are the SGLang router's command-line
/// defaults: threshold 0.3, imbalance when `max - min > 64` and `max > 1.5 * min`, eviction
/// every 120 s, 2^26 chars per model tree.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheAwareConfig {
    /// Match ratio (matched chars / request chars) above which the matching worker is chosen.
    /// In `[0, 1]`.
    pub cache_threshold: f32,
    /// Imbalance needs `max_load - min_load` above this.
    pub balance_abs_threshold: usize,
    /// Imbalance also needs `max_load > min_load * balance_rel_threshold`. At least 1.
    pub balance_rel_threshold: f32,
    /// Seconds between the evictor's ticks (it trims trees still over budget and frees what
    /// evictions retired); 0 starts no evictor thread and turns off eviction in requests, as
    /// in the seed (`run_eviction` still trims on demand).
    pub eviction_interval_secs: u64,
    /// Chars one model's tree may hold, summed over workers (a node cached by two workers
    /// counts twice). Eviction keeps each tree under it: the request whose insert crosses it
    /// trims the tree before it returns. (The seed applied it per worker; `evict_cache` keeps
    /// that meaning.)
    pub max_tree_size: usize,
}

impl Default for CacheAwareConfig {
    fn default() -> Self {
        Self {
            cache_threshold: 0.3,
            balance_abs_threshold: 64,
            balance_rel_threshold: 1.5,
            eviction_interval_secs: 120,
            max_tree_size: 1 << 26,
        }
    }
}

/// A configuration value the policy cannot work with.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigError {
    /// `cache_threshold` was NaN or outside `[0, 1]`.
    CacheThreshold(f32),
    /// `balance_rel_threshold` was NaN or below 1.
    BalanceRelThreshold(f32),
    /// `max_tree_size` was 0.
    MaxTreeSize,
    /// The evictor thread could not be started (the OS refused a thread).
    EvictorSpawn(String),
    /// `CacheAwarePolicyBuilder::index_workers` was not in `1..=256`.
    IndexWorkers(usize),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::CacheThreshold(v) => write!(
                f,
                "invalid CacheAwareConfig::cache_threshold {v}: it is a match ratio, set it between 0.0 and 1.0"
            ),
            ConfigError::BalanceRelThreshold(v) => write!(
                f,
                "invalid CacheAwareConfig::balance_rel_threshold {v}: it compares max load to min load, set it to 1.0 or more"
            ),
            ConfigError::MaxTreeSize => write!(
                f,
                "invalid CacheAwareConfig::max_tree_size 0: a tree must be allowed at least 1 char"
            ),
            ConfigError::IndexWorkers(n) => write!(
                f,
                "invalid index_workers {n}: the KV event index tracks between 1 and 256 workers per model"
            ),
            ConfigError::EvictorSpawn(e) => write!(
                f,
                "could not start the evictor thread ({e}): raise the process's thread limit, or set eviction_interval_secs to 0 and call run_eviction yourself"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl CacheAwareConfig {
    /// Checks every field; the error names the first bad one and what to set it to.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.cache_threshold) {
            return Err(ConfigError::CacheThreshold(self.cache_threshold));
        }
        if self.balance_rel_threshold.is_nan() || self.balance_rel_threshold < 1.0 {
            return Err(ConfigError::BalanceRelThreshold(self.balance_rel_threshold));
        }
        if self.max_tree_size == 0 {
            return Err(ConfigError::MaxTreeSize);
        }
        Ok(())
    }

    /// The seed's imbalance rule: `(max - min) > abs && max > min * rel`.
    pub(crate) fn is_imbalanced(&self, max: usize, min: usize) -> bool {
        max.saturating_sub(min) > self.balance_abs_threshold
            && (max as f32) > (min as f32) * self.balance_rel_threshold
    }
}

#[cfg(all(test, not(router_loom)))]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        assert!(CacheAwareConfig::default().validate().is_ok());
        for bad in [f32::NAN, -0.1, 1.5] {
            let c = CacheAwareConfig {
                cache_threshold: bad,
                ..Default::default()
            };
            let err = c.validate().unwrap_err();
            assert!(err.to_string().contains("cache_threshold"));
        }
        let c = CacheAwareConfig {
            balance_rel_threshold: 0.5,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("balance_rel_threshold"));
        let c = CacheAwareConfig {
            balance_rel_threshold: f32::NAN,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = CacheAwareConfig {
            max_tree_size: 0,
            ..Default::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::MaxTreeSize));
    }

    #[test]
    fn imbalance_rule_is_the_seeds() {
        let c = CacheAwareConfig {
            balance_abs_threshold: 5,
            balance_rel_threshold: 2.0,
            ..Default::default()
        };
        assert!(c.is_imbalanced(20, 0));
        assert!(!c.is_imbalanced(5, 0), "difference must exceed abs");
        assert!(!c.is_imbalanced(20, 10), "max must exceed min * rel");
        assert!(c.is_imbalanced(21, 10));
    }
}
