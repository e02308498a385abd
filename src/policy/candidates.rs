//! The candidates of one decision: each eligible worker's tenant id, index and load, read once.

use crate::constants::INLINE_WORKERS;
use crate::tenant::TenantId;
use crate::worker::Worker;
use std::mem::MaybeUninit;

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
/// past it. The stack array is left uninitialised (zeroing its 3 KiB was 5% of a cold
/// shared-prefix replay's instructions under callgrind); `len` counts the entries written.
pub(super) struct Snapshot {
    inline: [MaybeUninit<Candidate>; INLINE_WORKERS],
    len: usize,
    spilled: Vec<Candidate>,
}

impl Snapshot {
    pub(super) fn new() -> Self {
        Snapshot {
            inline: [const { MaybeUninit::uninit() }; INLINE_WORKERS],
            len: 0,
            spilled: Vec::new(),
        }
    }

    #[inline]
    pub(super) fn push(&mut self, c: Candidate) {
        if self.len < INLINE_WORKERS {
            self.inline[self.len] = MaybeUninit::new(c);
        } else {
            if self.spilled.is_empty() {
                let inline = self.written().to_vec();
                self.spilled = inline;
            }
            self.spilled.push(c);
        }
        self.len += 1;
    }

    pub(super) fn clear(&mut self) {
        self.len = 0;
        self.spilled.clear();
    }

    /// The inline entries written so far (all of them once it is full).
    fn written(&self) -> &[Candidate] {
        let n = self.len.min(INLINE_WORKERS);
        // SAFETY: `push` writes entries in order and bumps `len` after each, so the first
        // `min(len, INLINE_WORKERS)` are initialised; `MaybeUninit<Candidate>` has
        // `Candidate`'s layout.
        unsafe { &*(&self.inline[..n] as *const [MaybeUninit<Candidate>] as *const [Candidate]) }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [Candidate] {
        if self.len <= INLINE_WORKERS {
            let n = self.len;
            // SAFETY: as in `written`: the first `len` entries are initialised.
            unsafe {
                &mut *(&mut self.inline[..n] as *mut [MaybeUninit<Candidate>] as *mut [Candidate])
            }
        } else {
            &mut self.spilled
        }
    }
}

#[cfg(all(test, not(router_loom)))]
mod tests {
    use super::*;
    use crate::BasicWorkerBuilder;

    /// Up to `INLINE_WORKERS` candidates stay on the stack; past it they spill, in order, and
    /// `clear` starts over.
    #[test]
    fn a_snapshot_holds_every_candidate_in_order_inline_or_spilled() {
        let w = BasicWorkerBuilder::new("http://w").build();
        let mut snapshot = Snapshot::new();
        for round in 0..2 {
            snapshot.clear();
            for len in 0..INLINE_WORKERS + 6 {
                let ids: Vec<usize> = snapshot.as_mut_slice().iter().map(|c| c.index).collect();
                assert_eq!(
                    ids,
                    (0..len).collect::<Vec<_>>(),
                    "round {round}, {len} pushed"
                );
                let tenant = TenantId::from_index(len % 16);
                snapshot.push(Candidate::new(tenant, len, &w, false));
            }
        }
    }
}
