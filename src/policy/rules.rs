//! The selection rules: how a request picks among the eligible workers once their load is
//! balanced, given what its prompt matched.
//!
//! What matched comes as a [`Matched`]: the holders of a tree's matched path (approximate
//! routing: the policy calls [`Rules::choose`] inside the tree's descent,
//! `Tree::match_and_insert`, so a rule reads the holders without copying them, and its pick is
//! inserted in the same descent), or the candidates' own `matched`, filled beforehand from the
//! KV event index and the record of recent decisions (precise and hybrid routing). Adding a
//! rule is a [`SelectionRule`] variant and an arm here; the policy's path does not change.
//!
//! Orderings: the cost rule's running mean of request size is a `Relaxed` load and store, not
//! an RMW: an estimate that publishes nothing, and a lost update between two threads skews it by
//! one request.

use super::candidates::Candidate;
use super::config::SelectionRule;
use crate::constants::TTFT_EXPLOIT_FACTOR;
use crate::estimate::TtftModel;
use crate::sync::{AtomicU64, Ordering};
use crate::tenant::TenantId;
use crate::tree::{Holders, MatchCounts};
use std::sync::Arc;

/// A rule and what it learns from the requests it sees.
pub(super) struct Rules {
    selection: SelectionRule,
    /// The match ratio above which a holder is a cache hit.
    threshold: f32,
    /// Running mean of request size in chars (cost rule): what one queued request costs.
    mean_chars: AtomicU64,
    /// The TTFT estimate's costs (estimated-TTFT rule), fitted by the tickets.
    ttft: Arc<TtftModel>,
}

/// What the estimated-TTFT rule predicted for its pick, for the ticket to check against the
/// first token: the prefill chars ahead of and in the request, the requests decoding, and the
/// estimate in ns.
#[derive(Clone, Copy, Debug)]
pub(super) struct Estimate {
    pub(super) prefill_chars: usize,
    pub(super) decoding: usize,
    pub(super) ns: f64,
}

impl Rules {
    pub(super) fn new(selection: SelectionRule, threshold: f32) -> Self {
        Self {
            selection,
            threshold,
            mean_chars: AtomicU64::new(0),
            ttft: Arc::new(TtftModel::new()),
        }
    }

    /// Whether the rule reads the workers' outstanding work (only the estimated-TTFT rule).
    pub(super) fn reads_work(&self) -> bool {
        self.selection == SelectionRule::EstimatedTtft
    }

    /// The TTFT estimate's costs, which the estimated-TTFT rule's tickets fit.
    pub(super) fn ttft_model(&self) -> &Arc<TtftModel> {
        &self.ttft
    }

    pub(super) fn selection(&self) -> SelectionRule {
        self.selection
    }

    /// The pick among `list` (every eligible worker, load balanced) for a prompt whose match is
    /// `counts`, held by `holders`, and whether it is a cache hit. The pick's `matched` is the
    /// prefix the rule saw it holding (0 where it did not look). `least` is the miss rule's
    /// pick, taken when the rule finds nothing better; `draw(n)` is a uniform draw in `0..n`
    /// for ties.
    pub(super) fn choose(
        &self,
        list: &mut [Candidate],
        least: Candidate,
        counts: MatchCounts,
        holders: impl Matched,
        draw: impl FnMut(u64) -> u64,
    ) -> (Candidate, bool) {
        match self.selection {
            _ if holders.is_empty() && self.selection != SelectionRule::EstimatedTtft => {
                (least, false)
            }
            SelectionRule::Threshold => self.threshold(list, least, counts, holders),
            SelectionRule::CostAware => self.cost_aware(list, least, counts, holders, draw),
            SelectionRule::EstimatedTtft => self.estimated_ttft(list, least, counts, holders, draw),
        }
    }

    /// The estimate behind `chosen` for a prompt of `total_chars`, under the estimated-TTFT
    /// rule (`None` under the others).
    pub(super) fn estimate(&self, chosen: &Candidate, total_chars: usize) -> Option<Estimate> {
        (self.selection == SelectionRule::EstimatedTtft).then(|| {
            let prefill_chars = chosen.queued_prefill + total_chars.saturating_sub(chosen.matched);
            Estimate {
                prefill_chars,
                decoding: chosen.decoding,
                ns: self.ttft.estimate_ns(prefill_chars, chosen.decoding),
            }
        })
    }

    /// What the rules learn from a decided request: its size in chars.
    pub(super) fn observe(&self, total_chars: usize) {
        if self.selection == SelectionRule::CostAware {
            // Running mean over about 64 requests.
            let mean = self.mean_chars.load(Ordering::Relaxed);
            let next = if mean == 0 {
                total_chars as u64
            } else {
                mean - mean / 64 + total_chars as u64 / 64
            };
            self.mean_chars.store(next, Ordering::Relaxed);
        }
    }

    /// The seed's rule: if more than the threshold of the prompt matched, the least loaded
    /// worker holding the matched node (the first holder on ties). Sorting `list` by tenant and
    /// finding each holder by binary search makes a hit O(holders x log workers).
    fn threshold(
        &self,
        list: &mut [Candidate],
        least: Candidate,
        counts: MatchCounts,
        holders: impl Matched,
    ) -> (Candidate, bool) {
        if counts.ratio() <= self.threshold {
            return (least, false);
        }
        let mut best: Option<Candidate> = None;
        holders.deepest(list, |c| {
            if best.is_none_or(|b| c.load < b.load) {
                best = Some(c);
            }
        });
        match best {
            // A holder of the deepest matched node holds the whole matched prefix.
            Some(b) => (
                Candidate {
                    matched: counts.matched,
                    ..b
                },
                true,
            ),
            None => (least, false),
        }
    }

    /// The cost rule: each worker's queued work (`load x` half the mean request) plus the
    /// prefill it would still do (the prompt chars it does not hold); lowest (cost, load) wins,
    /// exact ties broken at random so misses still spread. A hit if the winner holds more than
    /// the threshold of the prompt.
    fn cost_aware(
        &self,
        list: &mut [Candidate],
        least: Candidate,
        counts: MatchCounts,
        holders: impl Matched,
        mut draw: impl FnMut(u64) -> u64,
    ) -> (Candidate, bool) {
        // One queued request is costed at half a mean request: requests in flight have usually
        // begun, and their prefill is partly cached. (Swept in the simulator: 0.25x to 1.5x;
        // 0.5x kept hits within 2 points of the seed rule on both traces with the best p99.)
        let queue_cost = self.mean_chars.load(Ordering::Relaxed) as usize / 2;
        holders.fill(list);
        let key = |c: &Candidate| (c.load * queue_cost + (counts.total - c.matched), c.load);
        let chosen = lowest(list, least, |a, b| key(a).cmp(&key(b)), &mut draw);
        let hit = chosen.matched as f32 > self.threshold * counts.total as f32;
        (chosen, hit)
    }

    /// The estimated-TTFT rule: each worker's queued prefill plus the prompt's chars it does
    /// not hold, times the prefill cost, plus its decoding requests times the decode cost
    /// (`estimate.rs`); the lowest estimate wins, ties to the longer match, exact ties at
    /// random; but the holder of the longest match (past the threshold) wins while its
    /// estimate is within `TTFT_EXPLOIT_FACTOR` of the lowest. A hit if the winner holds more
    /// than the threshold of the prompt.
    fn estimated_ttft(
        &self,
        list: &mut [Candidate],
        least: Candidate,
        counts: MatchCounts,
        holders: impl Matched,
        mut draw: impl FnMut(u64) -> u64,
    ) -> (Candidate, bool) {
        holders.fill(list);
        let total = counts.total;
        let ns = self.ttft.estimator();
        let estimate = |c: &Candidate| {
            ns(
                c.queued_prefill + total.saturating_sub(c.matched),
                c.decoding,
            )
        };
        let better = |a: &Candidate, b: &Candidate| {
            estimate(a)
                .total_cmp(&estimate(b))
                .then(b.matched.cmp(&a.matched))
        };
        let mut chosen = lowest(list, least, better, &mut draw);
        // Exploit the longest match unless its estimate is clearly worse (Preble's E2): the
        // holder keeps the prefix hot for the requests that follow, which no estimate of this
        // one request sees.
        let longest = list.iter().max_by(|a, b| {
            a.matched
                .cmp(&b.matched)
                .then(estimate(b).total_cmp(&estimate(a)))
        });
        if let Some(longest) = longest {
            if longest.matched as f32 > self.threshold * total as f32
                && estimate(longest) <= estimate(&chosen) * TTFT_EXPLOIT_FACTOR
            {
                chosen = *longest;
            }
        }
        let hit = chosen.matched as f32 > self.threshold * total as f32;
        (chosen, hit)
    }
}

/// What a prompt matched, as the rules read it.
pub(super) trait Matched {
    /// Whether no worker holds any of the prompt.
    fn is_empty(&self) -> bool;
    /// Calls `f` with each candidate of `list` that holds the whole longest match.
    fn deepest(&self, list: &mut [Candidate], f: impl FnMut(Candidate));
    /// Sets each candidate's `matched` to the longest prefix of the prompt it holds.
    fn fill(&self, list: &mut [Candidate]);
}

/// A tree's matched path (approximate routing).
impl Matched for Holders<'_> {
    fn is_empty(&self) -> bool {
        Holders::is_empty(self)
    }

    /// The tenants of the deepest matched node hold the whole match (`list` is sorted by
    /// tenant for the lookups: O(holders x log workers)).
    fn deepest(&self, list: &mut [Candidate], mut f: impl FnMut(Candidate)) {
        list.sort_unstable_by_key(|c| c.tenant);
        for holder in self.iter() {
            if let Ok(i) = list.binary_search_by_key(&holder, |c| c.tenant) {
                f(list[i]);
            }
        }
    }

    fn fill(&self, list: &mut [Candidate]) {
        if Holders::is_empty(self) {
            return;
        }
        list.sort_unstable_by_key(|c| c.tenant);
        self.for_each_prefix(|tenant, units| fill_one(list, tenant, units));
    }
}

/// Candidates whose `matched` is already filled (precise and hybrid routing), the longest
/// being `longest`.
pub(super) struct Filled {
    pub(super) longest: usize,
}

impl Matched for Filled {
    fn is_empty(&self) -> bool {
        self.longest == 0
    }

    fn deepest(&self, list: &mut [Candidate], mut f: impl FnMut(Candidate)) {
        if self.longest > 0 {
            list.iter()
                .filter(|c| c.matched == self.longest)
                .for_each(|c| f(*c));
        }
    }

    fn fill(&self, _list: &mut [Candidate]) {}
}

/// Raises `tenant`'s `matched` in `list` (sorted by tenant) to `units`.
pub(super) fn fill_one(list: &mut [Candidate], tenant: TenantId, units: usize) {
    if let Ok(i) = list.binary_search_by_key(&tenant, |c| c.tenant) {
        list[i].matched = list[i].matched.max(units);
    }
}

/// The least candidate of `list` by `cmp`, starting from `least` (the miss rule's pick, as
/// `list` holds it), exact ties broken at random with `draw` so misses still spread.
fn lowest(
    list: &[Candidate],
    least: Candidate,
    cmp: impl Fn(&Candidate, &Candidate) -> std::cmp::Ordering,
    draw: &mut impl FnMut(u64) -> u64,
) -> Candidate {
    let mut chosen = list
        .iter()
        .find(|c| c.index == least.index)
        .copied()
        .unwrap_or(least);
    let mut ties = 0;
    for c in list {
        match cmp(c, &chosen) {
            std::cmp::Ordering::Less => (chosen, ties) = (*c, 0),
            std::cmp::Ordering::Equal if c.index != chosen.index => {
                ties += 1;
                if draw(ties + 1) == 0 {
                    chosen = *c;
                }
            }
            _ => {}
        }
    }
    chosen
}
