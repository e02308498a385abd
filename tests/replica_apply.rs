//! The replica apply path against the sequential reference: random sequences of peers'
//! decisions (through the wire format, `apply_replica`) and of this replica's own routing,
//! each char of a generated text one block key; every routing answer checked against what the
//! reference says the tree holds. Seeded; `MODEL_SEEDS` runs more.

mod common;

use cache_aware_router::replica::{ReplicaEvent, ReplicaMessage};
use cache_aware_router::{
    BasicWorkerBuilder, CacheAwareConfig, CacheAwarePolicy, SelectionRule, Worker,
};
use common::reference::Reference;
use common::{text, Rng};
use std::sync::Arc;

fn keys(t: &str) -> Vec<u64> {
    t.chars()
        .map(|c| (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect()
}

#[test]
fn applied_decisions_route_like_the_reference() {
    let seeds: u64 = std::env::var("MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    for seed in 0..seeds {
        let policy = CacheAwarePolicy::builder()
            .config(CacheAwareConfig {
                eviction_interval_secs: 0,
                cache_threshold: 0.5,
                ..CacheAwareConfig::default()
            })
            .selection(SelectionRule::Threshold)
            .build()
            .unwrap();
        let urls: Vec<String> = (0..4).map(|i| format!("http://w{i}:8000")).collect();
        for u in &urls {
            let w = Arc::new(BasicWorkerBuilder::new(u.clone()).build());
            policy.register_worker(w as Arc<dyn Worker>).unwrap();
        }
        let mut rng = Rng::new(seed + 700);
        let mut reference = Reference::new();
        let mut texts: Vec<String> = vec![];
        let (mut hits, mut applied) = (0, 0);
        for step in 0..300u64 {
            let base = (!texts.is_empty() && rng.below(4) != 0).then(|| rng.pick(&texts).clone());
            let t = text(&mut rng, base.as_deref(), 10);
            let ctx = format!("seed {seed} step {step}: {t:?}");
            if rng.below(3) < 2 {
                let worker = rng.pick(&urls).clone();
                let message = ReplicaMessage {
                    origin: "peer".into(),
                    seq: step,
                    event: ReplicaEvent::Routed {
                        model: String::new(),
                        worker: worker.clone(),
                        keys: keys(&t),
                    },
                };
                let bytes = message.encode().unwrap();
                policy
                    .apply_replica(&ReplicaMessage::decode(&bytes).unwrap())
                    .unwrap();
                reference.insert(&t, &worker, step);
                texts.push(t);
                applied += 1;
            } else {
                let m = reference.prefix_match(&t);
                let total = t.chars().count();
                let matched = m.matched.chars().count();
                let ticket = policy.route_blocks("", &keys(&t)).unwrap();
                if total > 0 && matched as f32 > 0.5 * total as f32 {
                    let holders = m.holders.expect("a match has holders");
                    assert!(ticket.cache_hit(), "{ctx}: a hit in the reference");
                    assert!(
                        holders.iter().any(|h| h == ticket.url()),
                        "{ctx}: {} not in {holders:?}",
                        ticket.url()
                    );
                    hits += 1;
                } else {
                    assert!(!ticket.cache_hit(), "{ctx}: a miss in the reference");
                }
                // Routing records the prompt for its pick, as the reference must too.
                reference.insert(&t, ticket.url(), step);
                texts.push(t);
            }
        }
        assert!(
            hits > 10 && applied > 100,
            "seed {seed}: {hits} hits, {applied} applied"
        );
    }
}
