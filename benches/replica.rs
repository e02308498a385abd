//! What replica sync costs one router: the request path's part (copy the decision's block keys
//! and enqueue them on a bounded channel; a full queue drops), per decision, against the
//! decision itself, and the background publisher's part (encode the event); and how fast one core decodes and applies peers' events (routed block keys
//! into the block tree, work snapshots into peer work), on the Mooncake trace's block ids.
//!
//! `cargo bench --bench replica` (env: `BENCH_PASSES` applies of the stream, default 3).
#![allow(missing_docs)]

mod baseline;
mod support;

use cache_aware_router::replica::{ReplicaEvent, ReplicaMessage};
use cache_aware_router::{
    BasicWorkerBuilder, CacheAwareConfig, CacheAwarePolicy, PeerWork, SelectionRule, Worker,
};
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{env, mooncake_ids};

const WORKERS: usize = 8;

fn policy() -> CacheAwarePolicy {
    let p = CacheAwarePolicy::builder()
        .config(CacheAwareConfig {
            eviction_interval_secs: 0,
            ..CacheAwareConfig::default()
        })
        .selection(SelectionRule::EstimatedTtft)
        .build()
        .expect("valid config");
    for i in 0..WORKERS {
        let w = Arc::new(BasicWorkerBuilder::new(format!("http://worker-{i}:8000")).build());
        p.register_worker(w as Arc<dyn Worker>).expect("registers");
    }
    p
}

fn main() {
    let passes = env("BENCH_PASSES", 3);
    let (trace, source) = mooncake_ids();
    println!(
        "# replica sync: {source}, {} requests, {WORKERS} workers",
        trace.len()
    );

    // The request path: route, then encode the decision and try_send it (a full queue drops).
    let router = policy();
    let (tx, rx) = crossbeam_channel::bounded::<(usize, Vec<u64>)>(1 << 16);
    let mut route = Histogram::<u64>::new(3).unwrap();
    let mut enqueue = Histogram::<u64>::new(3).unwrap();
    let mut encode = Histogram::<u64>::new(3).unwrap();
    let mut seq = 0;
    for ids in &trace {
        let t = Instant::now();
        let ticket = router.route_blocks("", ids).expect("a worker");
        route.record(t.elapsed().as_nanos() as u64).unwrap();
        let t = Instant::now();
        let _ = tx.try_send((ticket.index(), ids.to_vec()));
        enqueue.record(t.elapsed().as_nanos() as u64).unwrap();
        // The publisher's side, here on the same thread, timed apart.
        while let Ok((worker, keys)) = rx.try_recv() {
            let t = Instant::now();
            seq += 1;
            let message = ReplicaMessage {
                origin: "replica-a".into(),
                seq,
                event: ReplicaEvent::Routed {
                    model: String::new(),
                    worker: format!("http://worker-{worker}:8000"),
                    keys,
                },
            };
            std::hint::black_box(message.encode().expect("short names"));
            encode.record(t.elapsed().as_nanos() as u64).unwrap();
        }
    }
    println!(
        "\n## The request path, per decision ({} decisions)",
        trace.len()
    );
    println!("| part | p50 | p99 | p99.9 |");
    println!("|---|---|---|---|");
    for (name, h) in [
        ("route_blocks", &route),
        ("request path: copy the keys, enqueue", &enqueue),
        ("publisher: build and encode the event", &encode),
    ] {
        println!(
            "| {name} | {} ns | {} ns | {} ns |",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999)
        );
    }

    // A peer's stream: every decision and a work snapshot after each, encoded.
    let mut stream = Vec::new();
    for (i, ids) in trace.iter().enumerate() {
        let worker = format!("http://worker-{}:8000", i % WORKERS);
        let event = ReplicaEvent::Routed {
            model: String::new(),
            worker: worker.clone(),
            keys: ids.clone(),
        };
        let work = ReplicaEvent::Work {
            model: String::new(),
            worker,
            work: PeerWork {
                in_flight: i % 7,
                queued_prefill: i % 5000,
                decoding: i % 3,
            },
        };
        for event in [event, work] {
            let m = ReplicaMessage {
                origin: "replica-b".into(),
                seq: stream.len() as u64,
                event,
            };
            stream.push(m.encode().expect("short names"));
        }
    }
    let mut best = Duration::MAX;
    for _ in 0..passes {
        let peer = policy();
        let t = Instant::now();
        for bytes in &stream {
            let m = ReplicaMessage::decode(bytes).expect("valid");
            peer.apply_replica(&m).expect("registered");
        }
        best = best.min(t.elapsed());
    }
    let keys: usize = trace.iter().map(|t| t.len()).sum();
    println!(
        "\n## Applying a peer's stream on one core: {} events ({} routed with {keys} block keys, {} work snapshots)",
        stream.len(),
        trace.len(),
        trace.len()
    );
    println!(
        "{:.1} ms: {:.0} K events/s, {:.1} M block keys/s (best of {passes}, cold trees)",
        best.as_secs_f64() * 1e3,
        stream.len() as f64 / best.as_secs_f64() / 1e3,
        keys as f64 / best.as_secs_f64() / 1e6
    );
}
