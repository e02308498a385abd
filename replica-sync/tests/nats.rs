//! Replicas syncing through a real NATS JetStream server on loopback: each test starts its own
//! `nats-server -js` (Debian's package; `.ci/run` installs it) on a free port with a store of
//! its own, and stops and restarts it. Every wait is bounded.

use cache_aware_router::replica::ReplicaEvent;
use cache_aware_router::{
    BasicWorkerBuilder, CacheAwareConfig, CacheAwarePolicy, SelectionRule, Worker,
};
use replica_sync::{NatsServer, ReplicaSync, SyncConfig};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn policy() -> Arc<CacheAwarePolicy> {
    let p = CacheAwarePolicy::builder()
        .config(CacheAwareConfig {
            eviction_interval_secs: 0,
            cache_threshold: 0.5,
            ..CacheAwareConfig::default()
        })
        .selection(SelectionRule::Threshold)
        .build()
        .unwrap();
    for i in 0..3 {
        let w = Arc::new(BasicWorkerBuilder::new(format!("http://w{i}:8000")).build());
        p.register_worker(w as Arc<dyn Worker>).unwrap();
    }
    Arc::new(p)
}

/// Waits (bounded) until `done`; the time it took.
async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

fn routed(worker: &str, keys: &[u64]) -> ReplicaEvent {
    ReplicaEvent::Routed {
        model: String::new(),
        worker: worker.to_string(),
        keys: keys.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_converge_warm_up_and_survive_nats_going_away() {
    let mut nats = NatsServer::start();
    let (a, b) = (policy(), policy());
    let sync_a = ReplicaSync::start(SyncConfig::new(&nats.url(), "a"), a.clone());
    let sync_b = ReplicaSync::start(SyncConfig::new(&nats.url(), "b"), b.clone());
    until("both warm", Duration::from_secs(10), || {
        sync_a.stats().warmed_in().is_some() && sync_b.stats().warmed_in().is_some()
    })
    .await;

    // A routes a prefix and tells the others; B then routes it to the same worker.
    let keys = [1u64, 2, 3, 4];
    let worker = a.route_blocks("", &keys).unwrap().url().to_string();
    sync_a.publish(routed(&worker, &keys));
    let took = until("B applies A's decision", Duration::from_secs(5), || {
        sync_b.stats().applied.load(Ordering::Relaxed) >= 1
    })
    .await;
    println!("converged in {took:?}");
    let t = b.route_blocks("", &[1, 2, 3, 4, 5]).unwrap();
    assert_eq!((t.url(), t.cache_hit()), (worker.as_str(), true));
    assert_eq!(
        sync_a.stats().applied.load(Ordering::Relaxed),
        0,
        "A skips its own"
    );

    // A message that is not a replica event is counted and skipped; the stream goes on.
    let raw = async_nats::connect(nats.url()).await.unwrap();
    async_nats::jetstream::new(raw)
        .publish("router.sync", b"not a replica event".to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    until("B counts the bad message", Duration::from_secs(5), || {
        sync_b.stats().errors.load(Ordering::Relaxed) >= 1
    })
    .await;
    let applied = sync_b.stats().applied.load(Ordering::Relaxed);
    sync_a.publish(routed(&worker, &[1, 2, 3, 4, 6]));
    until(
        "B applies the next good event",
        Duration::from_secs(5),
        || sync_b.stats().applied.load(Ordering::Relaxed) > applied,
    )
    .await;

    // A replica that starts now replays the retained window before it is warm.
    let c = policy();
    let sync_c = ReplicaSync::start(SyncConfig::new(&nats.url(), "c"), c.clone());
    let warm = until("C warm", Duration::from_secs(10), || {
        sync_c.stats().warmed_in().is_some()
    })
    .await;
    println!(
        "warmed in {warm:?} ({:?} by its own count)",
        sync_c.stats().warmed_in()
    );
    let t = c.route_blocks("", &keys).unwrap();
    assert_eq!((t.url(), t.cache_hit()), (worker.as_str(), true));
    drop(t);

    // NATS goes away: routing goes on, events are dropped and counted.
    nats.stop();
    for i in 0..50u64 {
        let t = a.route_blocks("", &[100 + i]).unwrap();
        sync_a.publish(routed(t.url(), &[100 + i]));
    }
    // B publishes too, so its session ends as well and it has to reconnect.
    sync_b.publish(routed(&worker, &[200]));
    until("A counts dropped events", Duration::from_secs(10), || {
        sync_a.stats().dropped.load(Ordering::Relaxed) > 0
    })
    .await;

    // NATS comes back: the replicas reconnect and converge again.
    nats.restart();
    let keys2 = [7u64, 8, 9];
    let before = sync_b.stats().applied.load(Ordering::Relaxed);
    let worker2 = a.route_blocks("", &keys2).unwrap().url().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Published again until it gets through: the first tries may meet the reconnection.
    while sync_b.stats().applied.load(Ordering::Relaxed) <= before {
        assert!(
            Instant::now() < deadline,
            "no convergence after NATS returned"
        );
        sync_a.publish(routed(&worker2, &keys2));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = b.route_blocks("", &keys2).unwrap();
    assert_eq!((t.url(), t.cache_hit()), (worker2.as_str(), true));

    // Each event is applied once by each of the two replicas that did not publish it: a
    // reconnected replica resumes after the last message it consumed instead of replaying the
    // stream (which would refresh stale prefixes). Counted against the stream itself, since an
    // event whose acknowledgement timed out may still have been stored.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stored = || async {
        let mut stream = js.get_stream("ROUTER_SYNC").await.unwrap();
        // All but the one message that is not a replica event.
        stream.info().await.unwrap().state.messages - 1
    };
    let applied = || {
        [&sync_a, &sync_b, &sync_c]
            .iter()
            .map(|s| s.stats().applied.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while applied() < 2 * stored().await {
        assert!(Instant::now() < deadline, "events not applied within 5 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        applied(),
        2 * stored().await,
        "each event applied once by each other replica"
    );
}
