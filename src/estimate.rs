//! What a worker's outstanding work costs in time: the TTFT estimate of
//! [`crate::SelectionRule::EstimatedTtft`], and its fit to the first-token times tickets report.
//!
//! Estimated TTFT on a worker = (its queued prefill chars + the prompt's chars it does not hold)
//! x the prefill cost per char + its decoding requests x the decode-interference cost. The
//! prefill cost is fitted online: each reported first token moves it 1/16 of the way to what
//! that observation implies (an exponentially weighted mean over about 16 requests); the
//! decode cost stays at its default, since one observation cannot separate the two.
//!
//! Orderings: both costs are `f64` bits in atomics, read and written `Relaxed` with a plain
//! load and store, not an RMW: an estimate that publishes nothing, and an update lost between
//! two threads skews the mean by one observation.

use crate::sync::{AtomicU64, Ordering};
use std::time::Duration;

/// The default prefill cost: 25 us a token (a Llama-3-8B-class model on one H100), about 4
/// chars a token.
const DEFAULT_PREFILL_NS_PER_CHAR: f64 = 6_000.0;
/// The default decode interference: what one running request adds to a step (30 us).
const DEFAULT_DECODE_NS: f64 = 30_000.0;
/// Weight of a new observation in the prefill cost's running mean.
const FIT_WEIGHT: f64 = 1.0 / 16.0;

/// The costs behind the TTFT estimate, shared by a policy's rule and its tickets.
#[derive(Debug)]
pub(crate) struct TtftModel {
    prefill_ns_per_char: AtomicU64,
    decode_ns: AtomicU64,
}

impl TtftModel {
    pub(crate) fn new() -> Self {
        Self {
            prefill_ns_per_char: AtomicU64::new(DEFAULT_PREFILL_NS_PER_CHAR.to_bits()),
            decode_ns: AtomicU64::new(DEFAULT_DECODE_NS.to_bits()),
        }
    }

    fn prefill(&self) -> f64 {
        f64::from_bits(self.prefill_ns_per_char.load(Ordering::Relaxed))
    }

    fn decode(&self) -> f64 {
        f64::from_bits(self.decode_ns.load(Ordering::Relaxed))
    }

    /// The estimated TTFT, in ns, of a request that leaves `prefill_chars` to prefill before
    /// its first token (what is queued ahead of it, and its own unmatched chars) on a worker
    /// decoding `decoding` requests.
    pub(crate) fn estimate_ns(&self, prefill_chars: usize, decoding: usize) -> f64 {
        prefill_chars as f64 * self.prefill() + decoding as f64 * self.decode()
    }

    /// A first token came `elapsed` after routing, for a request estimated with
    /// `prefill_chars` and `decoding`: the prefill cost moves toward what this implies.
    pub(crate) fn observe(&self, elapsed: Duration, prefill_chars: usize, decoding: usize) {
        if prefill_chars == 0 {
            return;
        }
        let prefill_ns = elapsed.as_nanos() as f64 - decoding as f64 * self.decode();
        let sample = (prefill_ns / prefill_chars as f64).max(0.0);
        let mean = self.prefill();
        let next = mean + FIT_WEIGHT * (sample - mean);
        self.prefill_ns_per_char
            .store(next.to_bits(), Ordering::Relaxed);
    }
}

#[cfg(all(test, not(router_loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_adds_prefill_and_decode_and_the_fit_converges() {
        let m = TtftModel::new();
        assert_eq!(m.estimate_ns(1000, 2), 1000.0 * 6_000.0 + 2.0 * 30_000.0);
        // Every request takes 2 us a char plus its decoding share: the cost converges to 2 us.
        for _ in 0..200 {
            let elapsed = Duration::from_nanos(500 * 2_000 + 3 * 30_000);
            m.observe(elapsed, 500, 3);
        }
        assert!((m.prefill() - 2_000.0).abs() < 1.0, "{}", m.prefill());
        m.observe(Duration::from_secs(1), 0, 0);
        assert!((m.prefill() - 2_000.0).abs() < 1.0, "nothing to learn from");
    }
}
