//! Several router replicas in front of one fleet, as behind an L4 load balancer: requests go to
//! the replicas round-robin, and each replica is its own `CacheAwarePolicy` (the TTFT rule,
//! routing the prompt's block ids in approximate mode) with its own view of the workers' load.
//!
//! - `none`: independent replicas: each knows only what it routed and what it has in flight.
//! - `stream`: each replica tells the others, `sync_delay_ms` later, every request it routed
//!   (model, worker, block keys: `ReplicaEvent::Routed`, applied as an insert into their block
//!   tree) and, with each decision, its own work on every worker (`ReplicaEvent::Work`,
//!   snapshots summed into the workers' peer work), through the library's wire format and
//!   `apply_replica`, as the NATS transport carries them.
//! - `shared`: one policy for all replicas: the upper bound of sharing.

use crate::delayed::Delayed;
use crate::model::{Cluster, Router, SimConfig};
use crate::tickets::Tickets;
use crate::trace::Request;
use cache_aware_router::replica::{ReplicaEvent, ReplicaMessage};
use cache_aware_router::{
    BasicWorker, BasicWorkerBuilder, CacheAwareConfig, CacheAwarePolicy, ManualClock,
    SelectionRule, Worker,
};
use std::sync::Arc;

/// How replicas share what they learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    None,
    Shared,
    Stream,
}

impl SyncMode {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(SyncMode::None),
            "shared" => Ok(SyncMode::Shared),
            "stream" => Ok(SyncMode::Stream),
            other => Err(format!("--sync {other:?}: choose none, shared or stream")),
        }
    }
}

struct Replica {
    name: String,
    policy: CacheAwarePolicy,
    workers: Vec<Arc<BasicWorker>>,
    clock: ManualClock,
}

impl Replica {
    fn new(name: String, cfg: &SimConfig) -> Result<Self, String> {
        let clock = ManualClock::new();
        let policy = CacheAwarePolicy::builder()
            .selection(SelectionRule::EstimatedTtft)
            .config(CacheAwareConfig {
                eviction_interval_secs: 0,
                ..cfg.cache_aware.clone()
            })
            .tie_seed(cfg.seed)
            .clock(clock.clone().into())
            .build()
            .map_err(|e| e.to_string())?;
        let mut workers = Vec::new();
        for i in 0..cfg.workers {
            let w = Arc::new(BasicWorkerBuilder::new(format!("sim://worker-{i}")).build());
            policy
                .register_worker(w.clone() as Arc<dyn Worker>)
                .map_err(|e| e.to_string())?;
            workers.push(w);
        }
        Ok(Self {
            name,
            policy,
            workers,
            clock,
        })
    }
}

pub struct Replicated {
    replicas: Vec<Replica>,
    /// How many replicas the load balancer spreads over (`shared`: all through one policy).
    spread: usize,
    mode: SyncMode,
    delay_us: f64,
    next: usize,
    /// Messages on their way: (to replica, bytes).
    in_flight: Delayed<(usize, Vec<u8>)>,
    sent: u64,
    tickets: Tickets,
}

impl Replicated {
    pub fn new(cfg: &SimConfig) -> Result<Self, String> {
        let n = cfg.replicas.max(1);
        let policies = if cfg.sync == SyncMode::Shared { 1 } else { n };
        let replicas = (0..policies)
            .map(|r| Replica::new(format!("replica-{r}"), cfg))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            replicas,
            spread: n,
            mode: cfg.sync,
            delay_us: cfg.sync_delay_ms * 1000.0,
            next: 0,
            in_flight: Delayed::new(),
            sent: 0,
            tickets: Tickets::default(),
        })
    }

    /// Sends `event` from replica `from` to every other replica, due `delay` from `now`.
    fn broadcast(&mut self, from: usize, now: f64, event: ReplicaEvent) {
        self.sent += 1;
        let message = ReplicaMessage {
            origin: self.replicas[from].name.clone(),
            seq: self.sent,
            event,
        };
        let bytes = message.encode().expect("simulated names are short");
        for to in (0..self.replicas.len()).filter(|&to| to != from) {
            self.in_flight
                .push(now + self.delay_us, (to, bytes.clone()));
        }
    }

    /// Applies every message due by `now` to its replica.
    fn deliver(&mut self, now: f64) {
        while let Some((to, bytes)) = self.in_flight.pop_due(now) {
            let message = ReplicaMessage::decode(&bytes).expect("encoded above");
            self.replicas[to]
                .policy
                .apply_replica(&message)
                .expect("every replica registers the same workers");
        }
    }
}

impl Router for Replicated {
    fn route(&mut self, req: &Request, _text: &str, now: f64, _cluster: &Cluster) -> usize {
        self.deliver(now);
        let r = if self.replicas.len() == 1 {
            0
        } else {
            self.next % self.spread
        };
        self.next += 1;
        let replica = &self.replicas[r];
        replica.clock.set((now / 1000.0) as u64);
        let ticket = replica
            .policy
            .route_blocks("", &req.hash_ids)
            .expect("workers are healthy");
        if self.mode == SyncMode::Stream {
            let worker = ticket.url().to_string();
            self.broadcast(
                r,
                now,
                ReplicaEvent::Routed {
                    model: String::new(),
                    worker,
                    keys: req.hash_ids.clone(),
                },
            );
            for w in 0..self.replicas[r].workers.len() {
                let worker = &self.replicas[r].workers[w];
                let event = ReplicaEvent::Work {
                    model: String::new(),
                    worker: worker.url().to_string(),
                    work: worker.own_work(),
                };
                self.broadcast(r, now, event);
            }
        }
        let predicted = (req.hash_ids.len() - ticket.prefill_chars()) as u64;
        self.tickets.hold(ticket, predicted)
    }
    fn first_token(&mut self, _worker: usize, request: usize, ttft_us: f64) -> Option<f64> {
        self.tickets.first_token(request, ttft_us)
    }
    fn complete(&mut self, _worker: usize, request: usize) {
        self.tickets.complete(request);
    }
    fn predicted_hit_blocks(&self, request: usize) -> Option<u64> {
        self.tickets.predicted(request)
    }
}
