//! The candidates of one decision: each eligible worker's tenant id, index and load, read once.

use crate::constants::INLINE_WORKERS;
use crate::tenant::TenantId;
use crate::worker::Worker;

/// One eligible worker as a decision sees it: its tenant id, its index in the caller's list,
/// and its load, read once.
#[derive(Clone, Copy)]
pub(super) struct Candidate {
    pub(super) tenant: TenantId,
    pub(super) index: usize,
    pub(super) load: usize,
    /// Chars of the prompt it holds (cost-aware rule).
    pub(super) matched: usize,
    /// Prompt chars routed to it and not past their first token (`Worker::work`).
    pub(super) queued_prefill: usize,
    /// Requests it is decoding (`Worker::work`).
    pub(super) decoding: usize,
}

impl Candidate {
    pub(super) const NONE: Candidate = Candidate {
        tenant: TenantId::FIRST,
        index: 0,
        load: 0,
        matched: 0,
        queued_prefill: 0,
        decoding: 0,
    };

    /// Candidate `index`, tenant `tenant`, with `worker`'s load read now, and its work too if
    /// `with_work` (the estimated-TTFT rule reads it; the others leave it at 0).
    pub(super) fn new(
        tenant: TenantId,
        index: usize,
        worker: &dyn Worker,
        with_work: bool,
    ) -> Self {
        let (queued_prefill, decoding) = match worker.work() {
            Some(w) if with_work => (w.queued_prefill(), w.decoding()),
            _ => (0, 0),
        };
        Candidate {
            tenant,
            index,
            load: worker.load(),
            matched: 0,
            queued_prefill,
            decoding,
        }
    }
}

/// The candidates of one decision: a stack array for fleets up to `INLINE_WORKERS`, a `Vec`
/// past it.
pub(super) struct Snapshot {
    inline: [Candidate; INLINE_WORKERS],
    len: usize,
    spilled: Vec<Candidate>,
}

impl Snapshot {
    pub(super) fn new() -> Self {
        Snapshot {
            inline: [Candidate::NONE; INLINE_WORKERS],
            len: 0,
            spilled: Vec::new(),
        }
    }

    #[inline]
    pub(super) fn push(&mut self, c: Candidate) {
        if self.len < INLINE_WORKERS {
            self.inline[self.len] = c;
        } else {
            if self.spilled.is_empty() {
                self.spilled.extend_from_slice(&self.inline);
            }
            self.spilled.push(c);
        }
        self.len += 1;
    }

    pub(super) fn clear(&mut self) {
        self.len = 0;
        self.spilled.clear();
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [Candidate] {
        if self.len <= INLINE_WORKERS {
            &mut self.inline[..self.len]
        } else {
            &mut self.spilled
        }
    }
}
