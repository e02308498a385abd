//! Router replicas sharing what they learn through NATS JetStream.
//!
//! Each replica publishes its events (`cache_aware_router::replica`: routed requests as block
//! keys, work snapshots) to one JetStream stream with bounded retention (age and size), and
//! consumes the stream from its start, applying the other replicas' events to its own policy
//! (`CacheAwarePolicy::apply_replica`) and skipping its own. A replica that starts replays the
//! retained window first, so it serves warm; the time it took is recorded. After a reconnect it
//! resumes after the last message it consumed (each is applied once), or from the start again
//! if the stream was recreated meanwhile.
//!
//! The request path only enqueues ([`ReplicaSync::publish`]: a `try_send` on a bounded queue);
//! a background task publishes and waits for each acknowledgement. When NATS is unreachable,
//! routing goes on locally: the queue fills, further events are dropped and counted (memory
//! stays bounded), and the tasks reconnect, recreate the stream if it is gone, and resume.

mod server;

pub use server::NatsServer;

use async_nats::jetstream::{self, consumer::push::OrderedConfig, consumer::DeliverPolicy, stream};
use cache_aware_router::replica::{ReplicaEvent, ReplicaMessage};
use cache_aware_router::CacheAwarePolicy;
use futures::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Where and how replicas sync.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// This replica's name: unique among the replicas (each run adds its own suffix, and skips
    /// only the events that run published).
    pub replica: String,
    /// The JetStream stream (default `ROUTER_SYNC`).
    pub stream: String,
    /// The subject events are published on (default `router.sync`).
    pub subject: String,
    /// How long the stream keeps an event (default 10 minutes).
    pub max_age: Duration,
    /// How many bytes the stream keeps at most (default 256 MiB).
    pub max_bytes: i64,
    /// Events waiting to be published before more are dropped (default 65,536).
    pub queue: usize,
}

impl SyncConfig {
    /// The defaults for replica `replica` of the server at `url`.
    pub fn new(url: &str, replica: &str) -> Self {
        Self {
            url: url.to_string(),
            replica: replica.to_string(),
            stream: "ROUTER_SYNC".into(),
            subject: "router.sync".into(),
            max_age: Duration::from_secs(600),
            max_bytes: 256 << 20,
            queue: 1 << 16,
        }
    }
}

/// What the sync has done (`Relaxed` counters: statistics).
#[derive(Debug)]
pub struct SyncStats {
    /// Events this replica published (acknowledged by the stream).
    pub published: AtomicU64,
    /// Events this replica dropped: the queue was full, or NATS did not acknowledge them in
    /// time (such an event may still have been stored, and then peers apply it).
    pub dropped: AtomicU64,
    /// Other replicas' events applied.
    pub applied: AtomicU64,
    /// Of those, routed requests (the rest are work snapshots).
    pub applied_routed: AtomicU64,
    /// Messages that did not decode or apply.
    pub errors: AtomicU64,
    /// Milliseconds between the last applied event's publication and its application.
    pub lag_ms: AtomicU64,
    /// Milliseconds the replay of the retained window took at start (`u64::MAX` until done).
    pub warm_ms: AtomicU64,
}

impl Default for SyncStats {
    fn default() -> Self {
        Self {
            published: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            applied_routed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
            warm_ms: AtomicU64::new(u64::MAX),
        }
    }
}

impl SyncStats {
    /// How long the start-up replay took, once it is done.
    pub fn warmed_in(&self) -> Option<Duration> {
        match self.warm_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

/// A replica's sync: its publish queue and its background task.
#[derive(Debug)]
pub struct ReplicaSync {
    tx: mpsc::Sender<ReplicaEvent>,
    stats: Arc<SyncStats>,
    task: JoinHandle<()>,
}

impl ReplicaSync {
    /// Starts syncing `policy` (call inside a tokio runtime). Never fails: the connection is
    /// made, and remade, in the background.
    pub fn start(mut config: SyncConfig, policy: Arc<CacheAwarePolicy>) -> Self {
        // This run's own origin: a replica restarted under the same name replays what it
        // published before, like any peer's, and skips only what this run publishes.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        config.replica = format!("{}#{nanos:x}", config.replica);
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let stats = Arc::new(SyncStats::default());
        let task = tokio::spawn(run(config, policy, rx, stats.clone()));
        Self { tx, stats, task }
    }

    /// Enqueues one of this replica's events for publication; drops and counts it if the
    /// queue is full. Never waits.
    pub fn publish(&self, event: ReplicaEvent) {
        if self.tx.try_send(event).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What the sync has done.
    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }
}

impl Drop for ReplicaSync {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects, sets up and runs until the connection fails, then again, for ever.
async fn run(
    config: SyncConfig,
    policy: Arc<CacheAwarePolicy>,
    mut rx: mpsc::Receiver<ReplicaEvent>,
    stats: Arc<SyncStats>,
) {
    let started = Instant::now();
    let mut seq = 0u64;
    let mut cursor = None;
    loop {
        if session(
            &config,
            &policy,
            &mut rx,
            &stats,
            started,
            &mut seq,
            &mut cursor,
        )
        .await
        .is_err()
        {
            // Whatever waits now would wait for a server that is not there: drop it, counted.
            while rx.try_recv().is_ok() {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Why a session ended.
struct Ended;

/// Where consuming stopped: the stream's creation time (a recreated stream numbers from 1
/// again) and the last stream sequence consumed.
#[derive(Clone, Copy)]
struct Cursor {
    created: time::OffsetDateTime,
    consumed: u64,
}

/// One connection: the stream set up, then publishing and consuming until either fails.
async fn session(
    config: &SyncConfig,
    policy: &CacheAwarePolicy,
    rx: &mut mpsc::Receiver<ReplicaEvent>,
    stats: &SyncStats,
    started: Instant,
    seq: &mut u64,
    cursor: &mut Option<Cursor>,
) -> Result<(), Ended> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .connect(&config.url)
        .await
        .map_err(|_| Ended)?;
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![config.subject.clone()],
            max_age: config.max_age,
            max_bytes: config.max_bytes,
            ..Default::default()
        })
        .await
        .map_err(|_| Ended)?;
    let info = stream.cached_info();
    let (created, last) = (info.created, info.state.last_sequence);
    // The same stream as before: on from the next message still retained. Else from its start.
    let from = match *cursor {
        Some(c) if c.created == created => (c.consumed + 1).max(info.state.first_sequence),
        _ => 1,
    };
    if from > last && stats.warm_ms.load(Ordering::Relaxed) == u64::MAX {
        stats
            .warm_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_subject: client.new_inbox(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            filter_subject: config.subject.clone(),
            ..Default::default()
        })
        .await
        .map_err(|_| Ended)?;
    let mut messages = consumer.messages().await.map_err(|_| Ended)?;
    let publish = async {
        while let Some(event) = rx.recv().await {
            *seq += 1;
            let message = ReplicaMessage {
                origin: config.replica.clone(),
                seq: *seq,
                event,
            };
            let Ok(bytes) = message.encode() else {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let acked = tokio::time::timeout(Duration::from_secs(1), async {
                js.publish(config.subject.clone(), bytes.into())
                    .await
                    .map_err(|_| Ended)?
                    .await
                    .map_err(|_| Ended)
            })
            .await;
            match acked {
                Ok(Ok(_)) => {
                    stats.published.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return Ended;
                }
            }
        }
        Ended
    };
    let consume = async {
        while let Some(message) = messages.next().await {
            let Ok(message) = message else {
                return Ended;
            };
            let info = message
                .info()
                .ok()
                .map(|i| (i.stream_sequence, i.published));
            match ReplicaMessage::decode(&message.payload) {
                Ok(m) if m.origin == config.replica => {}
                Ok(m) => match policy.apply_replica(&m) {
                    Ok(()) => {
                        stats.applied.fetch_add(1, Ordering::Relaxed);
                        if matches!(m.event, ReplicaEvent::Routed { .. }) {
                            stats.applied_routed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Some((sequence, published)) = info {
                *cursor = Some(Cursor {
                    created,
                    consumed: sequence,
                });
                let lag = (time::OffsetDateTime::now_utc() - published)
                    .whole_milliseconds()
                    .max(0) as u64;
                stats.lag_ms.store(lag, Ordering::Relaxed);
                if sequence >= last && stats.warm_ms.load(Ordering::Relaxed) == u64::MAX {
                    stats
                        .warm_ms
                        .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
            }
        }
        Ended
    };
    tokio::select! {
        _ = publish => {}
        _ = consume => {}
    }
    Err(Ended)
}
