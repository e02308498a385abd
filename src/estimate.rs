//! What a worker's outstanding work costs in time: the TTFT estimate of
//! [`crate::SelectionRule::EstimatedTtft`], and its fit to the first-token times tickets report.
//!
//! Estimated TTFT on a worker = a fixed cost + (its queued prefill chars + the prompt's chars
//! it does not hold) x the prefill cost per char + its decoding requests x the
//! decode-interference cost. The fixed and the prefill cost are fitted online, by least squares
//! over exponentially weighted means (about the last `1 / FIT_WEIGHT` reports) of the prefill
//! chars and the first-token times less the decode term; until `MIN_REPORTS` have come, and
//! while the chars reported do not vary, the defaults hold. The decode cost stays at its
//! default: it is small beside a prefill, and the reports cannot separate it from the rest.
//!
//! Orderings: the means are `f64` bits in atomics, read and written `Relaxed` with plain loads
//! and stores, not RMWs: an estimate that publishes nothing, and a report lost or mixed between
//! two threads skews the means by one observation.

use crate::sync::{AtomicU64, Ordering};
use std::time::Duration;

/// The default prefill cost: 25 us a token (a Llama-3-8B-class model on one H100), about 4
/// chars a token.
const DEFAULT_PREFILL_NS_PER_CHAR: f64 = 6_000.0;
/// The decode interference: what one running request adds to a step (30 us).
const DECODE_NS: f64 = 30_000.0;
/// Weight of a new report in the running means.
const FIT_WEIGHT: f64 = 1.0 / 64.0;
/// Reports before the fit replaces the defaults.
const MIN_REPORTS: u64 = 16;

/// An `f64` running mean in an atomic.
#[derive(Debug)]
struct Mean(AtomicU64);

impl Mean {
    fn new() -> Self {
        Self(AtomicU64::new(0f64.to_bits()))
    }
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    /// Moves the mean toward `sample`; the first report sets it.
    fn add(&self, sample: f64, first: bool) {
        let next = if first {
            sample
        } else {
            let mean = self.get();
            mean + FIT_WEIGHT * (sample - mean)
        };
        self.0.store(next.to_bits(), Ordering::Relaxed);
    }
}

/// The costs behind the TTFT estimate, shared by a policy's rule and its tickets.
#[derive(Debug)]
pub(crate) struct TtftModel {
    reports: AtomicU64,
    /// Means of x (prefill chars), y (first-token ns less the decode term), x², x·y.
    x: Mean,
    y: Mean,
    xx: Mean,
    xy: Mean,
}

impl TtftModel {
    pub(crate) fn new() -> Self {
        Self {
            reports: AtomicU64::new(0),
            x: Mean::new(),
            y: Mean::new(),
            xx: Mean::new(),
            xy: Mean::new(),
        }
    }

    /// (fixed ns, prefill ns per char): the fit, or the defaults.
    fn costs(&self) -> (f64, f64) {
        if self.reports.load(Ordering::Relaxed) < MIN_REPORTS {
            return (0.0, DEFAULT_PREFILL_NS_PER_CHAR);
        }
        let (x, y) = (self.x.get(), self.y.get());
        let var = self.xx.get() - x * x;
        let cov = self.xy.get() - x * y;
        if var <= 1.0 || cov <= 0.0 {
            // No spread in the chars to fit a slope on: all of the time per char.
            let per_char = if x > 0.0 {
                y.max(0.0) / x
            } else {
                DEFAULT_PREFILL_NS_PER_CHAR
            };
            return (0.0, per_char);
        }
        let slope = cov / var;
        (((y - slope * x).max(0.0)), slope)
    }

    /// The estimated TTFT, in ns, of a request that leaves `prefill_chars` to prefill before
    /// its first token (what is queued ahead of it, and its own unmatched chars) on a worker
    /// decoding `decoding` requests.
    pub(crate) fn estimate_ns(&self, prefill_chars: usize, decoding: usize) -> f64 {
        self.estimator()(prefill_chars, decoding)
    }

    /// `estimate_ns` with the costs read once: for the estimates of one decision, which would
    /// otherwise read and fit the running means again for every comparison.
    pub(crate) fn estimator(&self) -> impl Fn(usize, usize) -> f64 {
        let (fixed, per_char) = self.costs();
        move |prefill_chars, decoding| {
            fixed + prefill_chars as f64 * per_char + decoding as f64 * DECODE_NS
        }
    }

    /// A first token came `elapsed` after routing, for a request estimated with
    /// `prefill_chars` and `decoding`: the fit takes it in.
    pub(crate) fn observe(&self, elapsed: Duration, prefill_chars: usize, decoding: usize) {
        let x = prefill_chars as f64;
        let y = (elapsed.as_nanos() as f64 - decoding as f64 * DECODE_NS).max(0.0);
        let first = self.reports.fetch_add(1, Ordering::Relaxed) == 0;
        self.x.add(x, first);
        self.y.add(y, first);
        self.xx.add(x * x, first);
        self.xy.add(x * y, first);
    }
}

#[cfg(all(test, not(router_loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_starts_from_defaults_and_fits_reports() {
        let m = TtftModel::new();
        assert_eq!(m.estimate_ns(1000, 2), 1000.0 * 6_000.0 + 2.0 * 30_000.0);
        // Reports of 5 ms plus 2 us a char (plus the decode term), over varied prompts: the
        // fit finds both.
        for i in 0..2000u64 {
            let chars = 100 + (i * 7919) % 5000;
            let ns = 5_000_000 + 2_000 * chars + 3 * 30_000;
            m.observe(Duration::from_nanos(ns), chars as usize, 3);
        }
        let (fixed, per_char) = m.costs();
        assert!((per_char - 2_000.0).abs() < 1.0, "{per_char}");
        assert!((fixed - 5_000_000.0).abs() < 5_000.0, "{fixed}");
        let expect = 5_000_000.0 + 2_000.0 * 1000.0;
        assert!((m.estimate_ns(1000, 0) - expect).abs() < expect * 0.01);
    }
}
