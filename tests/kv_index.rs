//! The precise index (`KvIndex`) against a sequential reference: random event streams of
//! stores (with right, wrong and missing parents), removes (held or not), clears, duplicates
//! and reordered batches, comparing every overlap and counter; then writers racing readers.

mod common;

use cache_aware_router::{IndexError, KvEvent, KvIndex, KvIndexConfig};
use common::Rng;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

/// Which workers hold which block, and what the index should have counted.
#[derive(Default)]
struct Reference {
    holders: HashMap<u64, BTreeSet<usize>>,
    unknown_parent: u64,
    stored_already_held: u64,
    removed_not_held: u64,
}

impl Reference {
    fn apply(&mut self, worker: usize, event: &KvEvent) {
        match event {
            KvEvent::Stored { parent, blocks } => {
                if let Some(p) = parent {
                    if !self.holds(worker, *p) {
                        self.unknown_parent += 1;
                    }
                }
                for b in blocks {
                    if !self.holders.entry(*b).or_default().insert(worker) {
                        self.stored_already_held += 1;
                    }
                }
            }
            KvEvent::Removed { blocks } => {
                for b in blocks {
                    let removed = self
                        .holders
                        .get_mut(b)
                        .is_some_and(|set| set.remove(&worker));
                    if !removed {
                        self.removed_not_held += 1;
                    }
                }
            }
            KvEvent::Cleared => {
                for set in self.holders.values_mut() {
                    set.remove(&worker);
                }
            }
        }
    }

    fn holds(&self, worker: usize, block: u64) -> bool {
        self.holders
            .get(&block)
            .is_some_and(|s| s.contains(&worker))
    }

    fn overlaps(&self, blocks: &[u64], workers: usize) -> BTreeMap<usize, usize> {
        (0..workers)
            .map(|w| (w, blocks.iter().take_while(|b| self.holds(w, **b)).count()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    fn held(&self, worker: usize) -> usize {
        self.holders
            .values()
            .filter(|s| s.contains(&worker))
            .count()
    }
}

fn overlaps(index: &KvIndex, blocks: &[u64]) -> BTreeMap<usize, usize> {
    let mut out = BTreeMap::new();
    index.overlaps(blocks, |w, n| {
        assert!(out.insert(w, n).is_none(), "worker {w} reported twice");
    });
    out
}

/// Prompts as chains of block keys: groups sharing a system prefix, multi-turn extensions, and
/// keys spread over the whole 64-bit range (0 included).
fn prompts(rng: &mut Rng, n: usize) -> Vec<Vec<u64>> {
    let mut out: Vec<Vec<u64>> = vec![];
    for i in 0..n {
        let mut p = match rng.below(3) {
            0 if !out.is_empty() => {
                let base = rng.pick(&out);
                base[..rng.below(base.len()) + 1].to_vec()
            }
            _ => vec![],
        };
        for _ in 0..rng.below(12) + 1 {
            let key = if i == 0 && p.is_empty() {
                0
            } else {
                rng.next()
            };
            p.push(key);
        }
        out.push(p);
    }
    out
}

fn random_event(rng: &mut Rng, prompts: &[Vec<u64>], held: &[u64]) -> KvEvent {
    let p = rng.pick(prompts);
    match rng.below(10) {
        0..=5 => {
            let start = rng.below(p.len());
            let end = start + 1 + rng.below(p.len() - start);
            let parent = match (start, rng.below(8)) {
                (0, _) => None,
                // A wrong parent now and then (an event out of order, or from a replay).
                (_, 0) => Some(rng.next()),
                _ => Some(p[start - 1]),
            };
            KvEvent::Stored {
                parent,
                blocks: p[start..end].to_vec(),
            }
        }
        6..=8 => {
            // Usually blocks the worker holds (a suffix of a prompt), sometimes any.
            let blocks = if !held.is_empty() && rng.below(4) != 0 {
                (0..rng.below(4) + 1).map(|_| *rng.pick(held)).collect()
            } else {
                let from = rng.below(p.len());
                p[from..].to_vec()
            };
            KvEvent::Removed { blocks }
        }
        _ => {
            if rng.below(10) == 0 {
                KvEvent::Cleared
            } else {
                KvEvent::Removed { blocks: vec![] }
            }
        }
    }
}

fn run(seed: u64, workers: usize, config: KvIndexConfig) {
    let mut rng = Rng::new(seed);
    let index = KvIndex::with_config(config).unwrap();
    let mut reference = Reference::default();
    let prompts = prompts(&mut rng, 60);
    let mut held: Vec<Vec<u64>> = vec![vec![]; workers];
    let mut pending: Vec<(usize, KvEvent)> = vec![];
    for step in 0..600 {
        let w = rng.below(workers);
        let event = random_event(&mut rng, &prompts, &held[w]);
        if let KvEvent::Stored { blocks, .. } = &event {
            held[w].extend(blocks);
        }
        pending.push((w, event));
        // Batches of events, sometimes applied in reverse (a reordering the index must
        // handle like any other sequence: the reference applies the same order).
        if pending.len() > rng.below(4) {
            if rng.below(5) == 0 {
                pending.reverse();
            }
            for (w, e) in pending.drain(..) {
                index.apply(w, &e).unwrap();
                reference.apply(w, &e);
            }
        }
        let ctx = format!("seed {seed} step {step}");
        for _ in 0..3 {
            let p = rng.pick(&prompts);
            let q = &p[..rng.below(p.len()) + 1];
            assert_eq!(
                overlaps(&index, q),
                reference.overlaps(q, workers),
                "{ctx}: {q:?}"
            );
        }
        let s = index.stats();
        assert_eq!(
            (s.unknown_parent, s.stored_already_held, s.removed_not_held),
            (
                reference.unknown_parent,
                reference.stored_already_held,
                reference.removed_not_held
            ),
            "{ctx}: counters"
        );
        let mut held_by = vec![0; workers];
        for set in reference.holders.values() {
            for w in set {
                held_by[*w] += 1;
            }
        }
        for (w, n) in held_by.iter().enumerate() {
            assert_eq!(index.blocks_held(w), *n, "{ctx}: worker {w}");
        }
        let live = reference.holders.values().filter(|s| !s.is_empty()).count();
        assert_eq!(s.live_blocks, live, "{ctx}: live blocks");
    }
    for p in &prompts {
        assert_eq!(
            overlaps(&index, p),
            reference.overlaps(p, workers),
            "seed {seed}"
        );
        for (w, held) in held.iter().enumerate() {
            for b in held {
                assert_eq!(index.holds(w, *b), reference.holds(w, *b));
            }
        }
    }
}

#[test]
fn random_event_streams_match_the_reference() {
    let seeds: u64 = std::env::var("MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    for seed in 0..seeds {
        // One shard and few slots: tables rebuild often and keep dead entries between.
        let config = match seed % 3 {
            0 => KvIndexConfig {
                max_workers: 8,
                shards: 1,
            },
            1 => KvIndexConfig {
                max_workers: 130,
                shards: 4,
            },
            _ => KvIndexConfig::default(),
        };
        let workers = config.max_workers.min(if seed % 3 == 1 { 130 } else { 6 });
        run(seed, workers, config);
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let index = KvIndex::new();
    let stored = KvEvent::Stored {
        parent: None,
        blocks: vec![1],
    };
    assert_eq!(
        index.apply(64, &stored),
        Err(IndexError::WorkerOutOfRange {
            worker: 64,
            max_workers: 64
        })
    );
    assert!(index
        .apply(64, &KvEvent::Cleared)
        .unwrap_err()
        .to_string()
        .contains("max_workers"));
    assert!(!index.holds(1000, 1));
    assert_eq!(index.blocks_held(1000), 0);
    for (workers, shards) in [(0, 64), (257, 64), (8, 0), (8, 3), (8, 8192)] {
        let err = KvIndex::with_config(KvIndexConfig {
            max_workers: workers,
            shards,
        })
        .unwrap_err();
        assert!(err.to_string().contains("KvIndexConfig::"), "{err}");
    }
    // Empty queries and empty events are fine.
    index.overlaps(&[], |_, _| panic!("nothing to report"));
    index
        .apply(0, &KvEvent::Removed { blocks: vec![] })
        .unwrap();
}

/// Writers (one per worker) apply store/remove streams while readers match: a reader never sees
/// a worker on a chain that only another worker stores, nor an overlap longer than the query,
/// and at rest every worker's state equals its own stream applied in order.
#[test]
fn writers_racing_readers_never_report_a_wrong_holder() {
    const WORKERS: usize = 4;
    let index = Arc::new(
        KvIndex::with_config(KvIndexConfig {
            max_workers: WORKERS,
            shards: 2,
        })
        .unwrap(),
    );
    // Worker w's private chains: keys with w in the top byte; plus chains all workers store.
    let chain =
        |w: u64, c: u64| -> Vec<u64> { (0..16).map(|i| (w << 56) | (c << 8) | i).collect() };
    let shared: Vec<u64> = (0..16).map(|i| 0xFF00_0000_0000_0000 | i).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (index, stop) = (index.clone(), stop.clone());
            let shared = shared.clone();
            thread::spawn(move || {
                let mut rng = Rng::new(r + 77);
                let mut checks = 0u64;
                while !stop.load(Ordering::Relaxed) || checks < 1000 {
                    let w = rng.below(WORKERS) as u64;
                    let q = chain(w, rng.below(64) as u64);
                    index.overlaps(&q, |got, n| {
                        assert_eq!(got as u64, w, "a private chain of {w} reported for {got}");
                        assert!(n <= q.len());
                    });
                    index.overlaps(&shared, |got, n| assert!(got < WORKERS && n <= 16));
                    checks += 1;
                }
                checks
            })
        })
        .collect();
    let writers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let index = index.clone();
            let shared = shared.clone();
            thread::spawn(move || {
                let mut rng = Rng::new(w as u64);
                let mut reference = Reference::default();
                for round in 0..20_000 {
                    let c = rng.below(64) as u64;
                    let event = match rng.below(6) {
                        0..=2 => KvEvent::Stored {
                            parent: None,
                            blocks: chain(w as u64, c),
                        },
                        3 => KvEvent::Removed {
                            blocks: chain(w as u64, c)[rng.below(16)..].to_vec(),
                        },
                        4 => KvEvent::Stored {
                            parent: None,
                            blocks: shared[..rng.below(16) + 1].to_vec(),
                        },
                        _ if round % 2000 == 0 => KvEvent::Cleared,
                        _ => KvEvent::Removed {
                            blocks: shared[rng.below(16)..].to_vec(),
                        },
                    };
                    index.apply(w, &event).unwrap();
                    reference.apply(w, &event);
                }
                reference
            })
        })
        .collect();
    let references: Vec<Reference> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() >= 1000);
    }
    for (w, reference) in references.iter().enumerate() {
        assert_eq!(index.blocks_held(w), reference.held(w), "worker {w}");
        for c in 0..64 {
            let q = chain(w as u64, c);
            let expect = reference.overlaps(&q, WORKERS);
            assert_eq!(overlaps(&index, &q), expect, "worker {w} chain {c}");
        }
        let got = overlaps(&index, &shared).get(&w).copied();
        let expect = reference.overlaps(&shared, WORKERS).get(&w).copied();
        assert_eq!(got, expect, "worker {w} on the shared chain");
    }
}
