//! What router replicas tell each other, and how a replica applies it.
//!
//! Replicas behind one load balancer each see a slice of the traffic. They share compact
//! events, not trees: for each routing decision, the model, the worker and the request's block
//! keys ([`ReplicaEvent::Routed`]: a peer inserts them for that worker into its own block tree,
//! so every tree converges on the union of what was routed); and each worker's outstanding work
//! as this replica sees it ([`ReplicaEvent::Work`], a snapshot: a peer sums the latest
//! snapshot of every other replica into the worker's peer work, `Worker::set_peer_work`).
//! Transport is the caller's (the example proxy publishes through NATS JetStream); this module
//! is the wire format and the apply path, runtime-free.
//!
//! Wire format (big-endian): `b"RR"`, version 1, kind (1 routed, 2 work), sequence number
//! (u64), origin, model and worker (each a u16 length and UTF-8 bytes), then for `Routed` a
//! u32 count and that many u64 keys, for `Work` three u64 (in flight, queued prefill,
//! decoding). A routed event is 22 bytes plus its names plus 8 bytes a block.

use crate::worker::PeerWork;
use std::collections::HashMap;
use std::fmt;

const MAGIC: &[u8; 2] = b"RR";
const VERSION: u8 = 1;

/// One replica's event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaEvent {
    /// The replica routed a request with these block keys to `worker`.
    Routed {
        /// The request's model.
        model: String,
        /// The worker's URL.
        worker: String,
        /// The request's block keys, in order.
        keys: Vec<u64>,
    },
    /// The work the replica has outstanding on `worker` now (its own tickets only).
    Work {
        /// The worker's model.
        model: String,
        /// The worker's URL.
        worker: String,
        /// The replica's own work there.
        work: PeerWork,
    },
}

/// An event with its origin and that origin's sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaMessage {
    /// The replica that sent it (its name).
    pub origin: String,
    /// Its position in the origin's stream.
    pub seq: u64,
    /// What happened.
    pub event: ReplicaEvent,
}

/// Why a replica message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaWireError {
    /// Shorter than its fields say.
    Truncated,
    /// Not a replica message of a version this replica reads (first bytes shown).
    BadHeader([u8; 4]),
    /// A name that is not UTF-8.
    BadName,
    /// Bytes after the message.
    TrailingBytes(usize),
    /// A name longer than 65,535 bytes (on encoding).
    NameTooLong(usize),
}

impl fmt::Display for ReplicaWireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fix = "check that every replica runs the same release and that nothing else publishes on the sync subject";
        match self {
            ReplicaWireError::Truncated => write!(f, "replica message ends early: {fix}"),
            ReplicaWireError::BadHeader(h) => {
                write!(f, "not a replica message of version {VERSION} (starts {h:02x?}): {fix}")
            }
            ReplicaWireError::BadName => write!(f, "replica message has a name that is not UTF-8: {fix}"),
            ReplicaWireError::TrailingBytes(n) => {
                write!(f, "replica message has {n} bytes after its end: {fix}")
            }
            ReplicaWireError::NameTooLong(n) => write!(
                f,
                "a model, worker or replica name of {n} bytes cannot be sent: keep names under 64 KiB"
            ),
        }
    }
}

impl std::error::Error for ReplicaWireError {}

impl ReplicaMessage {
    /// The message's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, ReplicaWireError> {
        let (kind, model, worker) = match &self.event {
            ReplicaEvent::Routed { model, worker, .. } => (1, model, worker),
            ReplicaEvent::Work { model, worker, .. } => (2, model, worker),
        };
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(MAGIC);
        out.extend([VERSION, kind]);
        out.extend(self.seq.to_be_bytes());
        for name in [&self.origin, model, worker] {
            let len =
                u16::try_from(name.len()).map_err(|_| ReplicaWireError::NameTooLong(name.len()))?;
            out.extend(len.to_be_bytes());
            out.extend(name.as_bytes());
        }
        match &self.event {
            ReplicaEvent::Routed { keys, .. } => {
                out.extend((keys.len() as u32).to_be_bytes());
                keys.iter().for_each(|k| out.extend(k.to_be_bytes()));
            }
            ReplicaEvent::Work { work, .. } => {
                for n in [work.in_flight, work.queued_prefill, work.decoding] {
                    out.extend((n as u64).to_be_bytes());
                }
            }
        }
        Ok(out)
    }

    /// A message from its bytes; every length is checked against what is left.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReplicaWireError> {
        let mut r = Cursor(bytes);
        let head = r.take(4)?;
        if &head[..2] != MAGIC || head[2] != VERSION || !(1..=2).contains(&head[3]) {
            let mut h = [0u8; 4];
            h.copy_from_slice(head);
            return Err(ReplicaWireError::BadHeader(h));
        }
        let kind = head[3];
        let seq = r.u64()?;
        let origin = r.name()?;
        let model = r.name()?;
        let worker = r.name()?;
        let event = if kind == 1 {
            let n = r.u32()? as usize;
            if n > r.0.len() / 8 {
                return Err(ReplicaWireError::Truncated);
            }
            let keys = (0..n).map(|_| r.u64()).collect::<Result<_, _>>()?;
            ReplicaEvent::Routed {
                model,
                worker,
                keys,
            }
        } else {
            let mut n = || r.u64().map(|v| v as usize);
            let work = PeerWork {
                in_flight: n()?,
                queued_prefill: n()?,
                decoding: n()?,
            };
            ReplicaEvent::Work {
                model,
                worker,
                work,
            }
        };
        if !r.0.is_empty() {
            return Err(ReplicaWireError::TrailingBytes(r.0.len()));
        }
        Ok(ReplicaMessage { origin, seq, event })
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ReplicaWireError> {
        if n > self.0.len() {
            return Err(ReplicaWireError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, ReplicaWireError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, ReplicaWireError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn name(&mut self) -> Result<String, ReplicaWireError> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| ReplicaWireError::BadName)
    }
}

/// The latest work snapshot of every other replica, per worker, and their sum.
#[derive(Debug, Default)]
pub struct PeerWorkTable {
    latest: HashMap<(String, String), HashMap<String, PeerWork>>,
}

impl PeerWorkTable {
    /// Records `origin`'s snapshot of (`model`, `worker`); returns the sum over all origins.
    pub fn record(&mut self, origin: &str, model: &str, worker: &str, work: PeerWork) -> PeerWork {
        let by_origin = self
            .latest
            .entry((model.to_string(), worker.to_string()))
            .or_default();
        by_origin.insert(origin.to_string(), work);
        by_origin
            .values()
            .fold(PeerWork::default(), |sum, w| PeerWork {
                in_flight: sum.in_flight + w.in_flight,
                queued_prefill: sum.queued_prefill + w.queued_prefill,
                decoding: sum.decoding + w.decoding,
            })
    }
}

#[cfg(all(test, not(router_loom)))]
mod tests {
    use super::*;

    fn routed() -> ReplicaMessage {
        ReplicaMessage {
            origin: "replica-a".into(),
            seq: 7,
            event: ReplicaEvent::Routed {
                model: "llama".into(),
                worker: "http://w1:8000".into(),
                keys: vec![1, u64::MAX, 0],
            },
        }
    }

    #[test]
    fn messages_round_trip_and_every_truncation_is_an_error() {
        let work = ReplicaMessage {
            origin: "b".into(),
            seq: u64::MAX,
            event: ReplicaEvent::Work {
                model: "".into(),
                worker: "http://w2:8000".into(),
                work: PeerWork {
                    in_flight: 3,
                    queued_prefill: 4096,
                    decoding: 2,
                },
            },
        };
        for m in [routed(), work] {
            let bytes = m.encode().unwrap();
            assert_eq!(ReplicaMessage::decode(&bytes), Ok(m.clone()));
            for cut in 0..bytes.len() {
                assert!(ReplicaMessage::decode(&bytes[..cut]).is_err(), "cut {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(
                ReplicaMessage::decode(&longer),
                Err(ReplicaWireError::TrailingBytes(1))
            );
        }
        // 22 bytes of header and lengths, the names, 8 bytes a key.
        assert_eq!(routed().encode().unwrap().len(), 22 + 9 + 5 + 14 + 3 * 8);
    }

    #[test]
    fn malformed_messages_are_errors() {
        let bytes = routed().encode().unwrap();
        let mut bad = bytes.clone();
        bad[2] = 9;
        assert!(matches!(
            ReplicaMessage::decode(&bad),
            Err(ReplicaWireError::BadHeader(_))
        ));
        // A key count far past the bytes left.
        let mut huge = bytes[..bytes.len() - 3 * 8 - 4].to_vec();
        huge.extend(u32::MAX.to_be_bytes());
        assert_eq!(
            ReplicaMessage::decode(&huge),
            Err(ReplicaWireError::Truncated)
        );
        // A name that is not UTF-8.
        let mut name = bytes.clone();
        name[16] = 0xff;
        assert_eq!(
            ReplicaMessage::decode(&name),
            Err(ReplicaWireError::BadName)
        );
        let long = ReplicaMessage {
            origin: "x".repeat(70_000),
            ..routed()
        };
        assert_eq!(long.encode(), Err(ReplicaWireError::NameTooLong(70_000)));
        assert!(long.encode().unwrap_err().to_string().contains("64 KiB"));
    }

    #[test]
    fn peer_work_sums_the_latest_snapshot_of_each_replica() {
        let mut t = PeerWorkTable::default();
        let w = |n| PeerWork {
            in_flight: n,
            queued_prefill: 10 * n,
            decoding: n,
        };
        assert_eq!(t.record("a", "m", "w1", w(2)), w(2));
        assert_eq!(t.record("b", "m", "w1", w(3)), w(5));
        assert_eq!(
            t.record("a", "m", "w1", w(1)),
            w(4),
            "a's newer snapshot replaces its older"
        );
        assert_eq!(t.record("a", "m", "w2", w(7)), w(7), "per worker");
    }
}
