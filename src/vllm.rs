//! vLLM's KV cache event stream, decoded: the wire format of `vllm.distributed.kv_events`.
//!
//! vLLM publishes on a ZeroMQ PUB socket one multipart message per batch: a topic frame, the
//! batch's sequence number (8 bytes, big-endian, from 0), and the batch, msgpack-encoded by
//! msgspec: `EventBatch { ts, events, data_parallel_rank }` whose events are tagged structs
//! `BlockStored { block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
//! ... }`, `BlockRemoved { block_hashes, medium, ... }` and `AllBlocksCleared`. Releases
//! differ, and every variant is accepted:
//! - structs as arrays (`array_like`, fields by position, the tag first) or as maps (fields by
//!   name, the tag under `"type"`), for the batch and for each event independently;
//! - block hashes as integers (older releases: Python's `hash()`, any sign, 64 bits) or as
//!   byte strings (newer: 32-byte digests), folded to the index's keys by [`fold_hash_int`]
//!   and [`fold_hash`];
//! - fields added at the end by later releases (`lora_name`, `extra_keys`, `group_idx`, ...),
//!   or omitted as defaults, are skipped.
//!
//! Decoding never trusts a length: a length larger than the bytes left is an error before
//! anything is allocated, nesting is bounded, and every read is bounds-checked (rmp's
//! `Bytes`). A frame that does not decode is an error as a whole (its events are not applied);
//! an event of a kind this decoder does not know is skipped and counted, and the rest of its
//! batch applies.

use crate::index::{fold_hash, fold_hash_int, KvEvent};
use rmp::decode::{self, Bytes};
use rmp::Marker;
use std::fmt;

/// Deepest nesting of a value this decoder skips (vLLM's values nest 4 deep).
const MAX_DEPTH: usize = 32;

/// vLLM's replay socket's end-of-replay marker: sequence number -1.
pub const END_OF_REPLAY: i64 = -1;

/// One decoded batch.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBatch {
    /// When the engine published it (seconds since the epoch, as the engine's clock says).
    pub ts: f64,
    /// The data-parallel rank that published it, if given.
    pub data_parallel_rank: Option<i64>,
    /// Its events, in order.
    pub events: Vec<VllmEvent>,
    /// Events of a kind this decoder does not know, skipped.
    pub skipped: usize,
}

/// One event, with what the index does not use but a subscriber may filter on.
#[derive(Debug, Clone, PartialEq)]
pub struct VllmEvent {
    /// The event, its hashes folded to index keys.
    pub event: KvEvent,
    /// Where the blocks live (`"GPU"`, `"CPU"`, ...), if the release sends it.
    pub medium: Option<String>,
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The frame ended inside a value.
    Truncated,
    /// A value of the wrong type where a field was expected.
    Unexpected {
        /// The field (or structure) being read.
        field: &'static str,
        /// What was found there (a msgpack marker).
        found: String,
    },
    /// A length larger than the bytes left in the frame.
    LengthPastEnd {
        /// The length claimed.
        claimed: u64,
        /// The bytes left.
        left: usize,
    },
    /// Values nested deeper than this decoder follows.
    TooDeep,
    /// Bytes after the batch.
    TrailingBytes(usize),
    /// A sequence-number frame that is not 8 bytes.
    BadSequence(usize),
    /// A multipart message without the three frames (topic, sequence, payload).
    BadFrames(usize),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fix = "check that the publisher is a vLLM KV event publisher (--kv-events-config with publisher zmq) and not another stream on that port";
        match self {
            WireError::Truncated => write!(f, "KV event frame ends inside a value: {fix}"),
            WireError::Unexpected { field, found } => {
                write!(
                    f,
                    "KV event frame has {found} where {field} was expected: {fix}"
                )
            }
            WireError::LengthPastEnd { claimed, left } => write!(
                f,
                "KV event frame claims {claimed} elements or bytes with {left} bytes left: {fix}"
            ),
            WireError::TooDeep => write!(
                f,
                "KV event frame nests values deeper than {MAX_DEPTH}: {fix}"
            ),
            WireError::TrailingBytes(n) => {
                write!(f, "KV event frame has {n} bytes after its batch: {fix}")
            }
            WireError::BadSequence(n) => write!(
                f,
                "KV event sequence frame is {n} bytes, not 8 (big-endian): {fix}"
            ),
            WireError::BadFrames(n) => write!(
                f,
                "KV event message has {n} frames, not 3 (topic, sequence, payload): {fix}"
            ),
        }
    }
}

impl std::error::Error for WireError {}

/// The sequence number in a message's second frame (`END_OF_REPLAY` ends a replay).
pub fn decode_sequence(frame: &[u8]) -> Result<i64, WireError> {
    let bytes: [u8; 8] = frame
        .try_into()
        .map_err(|_| WireError::BadSequence(frame.len()))?;
    Ok(i64::from_be_bytes(bytes))
}

/// Decodes one batch payload (a message's third frame).
pub fn decode_batch(payload: &[u8]) -> Result<EventBatch, WireError> {
    let mut rd = Reader(Bytes::new(payload));
    let mut batch = EventBatch {
        ts: 0.0,
        data_parallel_rank: None,
        events: Vec::new(),
        skipped: 0,
    };
    match rd.peek()? {
        Shape::Array => {
            let n = rd.array_len("EventBatch")?;
            if n < 2 {
                return Err(rd.unexpected("EventBatch", "an array of fewer than 2 fields"));
            }
            batch.ts = rd.number("EventBatch.ts")?;
            rd.events(&mut batch)?;
            if n > 2 {
                batch.data_parallel_rank = rd.opt_int("EventBatch.data_parallel_rank")?;
            }
            for _ in 3..n {
                rd.skip(0)?;
            }
        }
        Shape::Map => {
            let n = rd.map_len("EventBatch")?;
            let mut seen_events = false;
            for _ in 0..n {
                match rd.key("EventBatch")?.as_str() {
                    "ts" => batch.ts = rd.number("EventBatch.ts")?,
                    "events" => {
                        rd.events(&mut batch)?;
                        seen_events = true;
                    }
                    "data_parallel_rank" => {
                        batch.data_parallel_rank = rd.opt_int("EventBatch.data_parallel_rank")?
                    }
                    _ => rd.skip(0)?,
                }
            }
            if !seen_events {
                return Err(rd.unexpected("EventBatch.events", "a batch without events"));
            }
        }
        Shape::Other(m) => return Err(unexpected_marker("EventBatch", m)),
    }
    let left = rd.0.remaining_slice().len();
    if left > 0 {
        return Err(WireError::TrailingBytes(left));
    }
    Ok(batch)
}

enum Shape {
    Array,
    Map,
    Other(Marker),
}

/// The fields of one event, whatever its encoding.
#[derive(Default)]
struct Fields {
    kind: Option<String>,
    blocks: Option<Vec<u64>>,
    parent: Option<u64>,
    medium: Option<String>,
}

/// A cursor over a frame: rmp's `Bytes` (bounds-checked reads) plus the checks above.
struct Reader<'a>(Bytes<'a>);

fn unexpected_marker(field: &'static str, m: Marker) -> WireError {
    WireError::Unexpected {
        field,
        found: format!("{m:?}"),
    }
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.0.remaining_slice().len()
    }

    fn peek_marker(&self) -> Result<Marker, WireError> {
        self.0
            .remaining_slice()
            .first()
            .map(|b| Marker::from_u8(*b))
            .ok_or(WireError::Truncated)
    }

    fn peek(&self) -> Result<Shape, WireError> {
        Ok(match self.peek_marker()? {
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => Shape::Array,
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => Shape::Map,
            m => Shape::Other(m),
        })
    }

    fn unexpected(&self, field: &'static str, found: &str) -> WireError {
        WireError::Unexpected {
            field,
            found: found.to_string(),
        }
    }

    fn marker_error(&self, field: &'static str) -> WireError {
        match self.peek_marker() {
            Ok(m) => unexpected_marker(field, m),
            Err(e) => e,
        }
    }

    /// A length of `n` items each at least `min_bytes` long, checked against what is left.
    fn checked(&self, n: u64, min_bytes: u64) -> Result<usize, WireError> {
        let left = self.left();
        if n.saturating_mul(min_bytes) > left as u64 {
            return Err(WireError::LengthPastEnd { claimed: n, left });
        }
        Ok(n as usize)
    }

    fn array_len(&mut self, field: &'static str) -> Result<usize, WireError> {
        let n = decode::read_array_len(&mut self.0).map_err(|_| self.marker_error(field))?;
        self.checked(n as u64, 1)
    }

    fn map_len(&mut self, field: &'static str) -> Result<usize, WireError> {
        let n = decode::read_map_len(&mut self.0).map_err(|_| self.marker_error(field))?;
        self.checked(n as u64, 2)
    }

    fn string(&mut self, field: &'static str) -> Result<String, WireError> {
        let before = self.0;
        let len = decode::read_str_len(&mut self.0).map_err(|_| {
            self.0 = before;
            self.marker_error(field)
        })?;
        let bytes = self.take(len as u64)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.unexpected(field, "invalid UTF-8"))
    }

    fn key(&mut self, field: &'static str) -> Result<String, WireError> {
        self.string(field)
    }

    /// The next `len` bytes, consumed.
    fn take(&mut self, len: u64) -> Result<&'a [u8], WireError> {
        let n = self.checked(len, 1)?;
        let (head, rest) = self.0.remaining_slice().split_at(n);
        self.0 = Bytes::new(rest);
        Ok(head)
    }

    fn is_nil(&self) -> Result<bool, WireError> {
        Ok(matches!(self.peek_marker()?, Marker::Null))
    }

    fn number(&mut self, field: &'static str) -> Result<f64, WireError> {
        Ok(match self.peek_marker()? {
            Marker::F64 => decode::read_f64(&mut self.0).map_err(|_| WireError::Truncated)?,
            Marker::F32 => decode::read_f32(&mut self.0).map_err(|_| WireError::Truncated)? as f64,
            _ => self.int(field)? as f64,
        })
    }

    fn int(&mut self, field: &'static str) -> Result<i128, WireError> {
        let before = self.0;
        decode::read_int::<i128, _>(&mut self.0).map_err(|e| {
            self.0 = before;
            match e {
                decode::NumValueReadError::InvalidMarkerRead(_)
                | decode::NumValueReadError::InvalidDataRead(_) => WireError::Truncated,
                _ => self.marker_error(field),
            }
        })
    }

    fn opt_int(&mut self, field: &'static str) -> Result<Option<i64>, WireError> {
        if self.is_nil()? {
            self.skip(0)?;
            return Ok(None);
        }
        let v = self.int(field)?;
        i64::try_from(v)
            .map(Some)
            .map_err(|_| self.unexpected(field, "an integer past 64 bits"))
    }

    fn opt_string(&mut self, field: &'static str) -> Result<Option<String>, WireError> {
        if self.is_nil()? {
            self.skip(0)?;
            return Ok(None);
        }
        self.string(field).map(Some)
    }

    /// A block hash: an integer or a byte string, folded to an index key.
    fn hash(&mut self, field: &'static str) -> Result<u64, WireError> {
        match self.peek_marker()? {
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                let len = decode::read_bin_len(&mut self.0).map_err(|_| WireError::Truncated)?;
                Ok(fold_hash(self.take(len as u64)?))
            }
            _ => self.int(field).map(fold_hash_int),
        }
    }

    fn opt_hash(&mut self, field: &'static str) -> Result<Option<u64>, WireError> {
        if self.is_nil()? {
            self.skip(0)?;
            return Ok(None);
        }
        self.hash(field).map(Some)
    }

    fn hashes(&mut self, field: &'static str) -> Result<Vec<u64>, WireError> {
        let n = self.array_len(field)?;
        (0..n).map(|_| self.hash(field)).collect()
    }

    /// Skips one value of any type.
    fn skip(&mut self, depth: usize) -> Result<(), WireError> {
        if depth > MAX_DEPTH {
            return Err(WireError::TooDeep);
        }
        let marker = decode::read_marker(&mut self.0).map_err(|_| WireError::Truncated)?;
        let data = match marker {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                0
            }
            Marker::U8 | Marker::I8 => 1,
            Marker::U16 | Marker::I16 => 2,
            Marker::U32 | Marker::I32 | Marker::F32 => 4,
            Marker::U64 | Marker::I64 | Marker::F64 => 8,
            Marker::FixStr(n) => n as u64,
            Marker::Str8 | Marker::Bin8 => self.be_len(1)?,
            Marker::Str16 | Marker::Bin16 => self.be_len(2)?,
            Marker::Str32 | Marker::Bin32 => self.be_len(4)?,
            Marker::FixExt1 => 2,
            Marker::FixExt2 => 3,
            Marker::FixExt4 => 5,
            Marker::FixExt8 => 9,
            Marker::FixExt16 => 17,
            Marker::Ext8 => self.be_len(1)? + 1,
            Marker::Ext16 => self.be_len(2)? + 1,
            Marker::Ext32 => self.be_len(4)? + 1,
            Marker::FixArray(n) => return self.skip_items(n as u64, depth),
            Marker::Array16 => {
                let n = self.be_len(2)?;
                return self.skip_items(n, depth);
            }
            Marker::Array32 => {
                let n = self.be_len(4)?;
                return self.skip_items(n, depth);
            }
            Marker::FixMap(n) => return self.skip_items(2 * n as u64, depth),
            Marker::Map16 => {
                let n = self.be_len(2)?;
                return self.skip_items(2 * n, depth);
            }
            Marker::Map32 => {
                let n = self.be_len(4)?;
                return self.skip_items(2 * n, depth);
            }
            Marker::Reserved => return Err(unexpected_marker("a value", marker)),
        };
        self.take(data).map(|_| ())
    }

    fn skip_items(&mut self, n: u64, depth: usize) -> Result<(), WireError> {
        self.checked(n, 1)?;
        for _ in 0..n {
            self.skip(depth + 1)?;
        }
        Ok(())
    }

    fn be_len(&mut self, bytes: usize) -> Result<u64, WireError> {
        let raw = self.take(bytes as u64)?;
        Ok(raw.iter().fold(0u64, |n, b| (n << 8) | *b as u64))
    }

    /// The batch's event list, into `batch`.
    fn events(&mut self, batch: &mut EventBatch) -> Result<(), WireError> {
        let n = self.array_len("EventBatch.events")?;
        batch.events.reserve(n.min(1024));
        for _ in 0..n {
            let fields = match self.peek()? {
                Shape::Array => self.array_event()?,
                Shape::Map => self.map_event()?,
                Shape::Other(m) => return Err(unexpected_marker("an event", m)),
            };
            let event = match fields.kind.as_deref() {
                Some("BlockStored") => KvEvent::Stored {
                    parent: fields.parent,
                    blocks: fields
                        .blocks
                        .ok_or_else(|| self.unexpected("BlockStored", "no block_hashes"))?,
                },
                Some("BlockRemoved") => KvEvent::Removed {
                    blocks: fields
                        .blocks
                        .ok_or_else(|| self.unexpected("BlockRemoved", "no block_hashes"))?,
                },
                Some("AllBlocksCleared") => KvEvent::Cleared,
                _ => {
                    batch.skipped += 1;
                    continue;
                }
            };
            batch.events.push(VllmEvent {
                event,
                medium: fields.medium,
            });
        }
        Ok(())
    }

    /// An event as an array: the tag, then the fields by position.
    fn array_event(&mut self) -> Result<Fields, WireError> {
        let n = self.array_len("an event")?;
        if n == 0 {
            return Err(self.unexpected("an event", "an empty array"));
        }
        let kind = self.string("the event tag")?;
        let mut f = Fields::default();
        let mut read = 1;
        match kind.as_str() {
            "BlockStored" if n >= 5 => {
                f.blocks = Some(self.hashes("BlockStored.block_hashes")?);
                f.parent = self.opt_hash("BlockStored.parent_block_hash")?;
                self.skip(0)?; // token_ids
                self.skip(0)?; // block_size
                read = 5;
                if n > 5 {
                    self.skip(0)?; // lora_id
                    read = 6;
                }
                if n > 6 {
                    f.medium = self.opt_string("BlockStored.medium")?;
                    read = 7;
                }
            }
            "BlockRemoved" if n >= 2 => {
                f.blocks = Some(self.hashes("BlockRemoved.block_hashes")?);
                read = 2;
                if n > 2 {
                    f.medium = self.opt_string("BlockRemoved.medium")?;
                    read = 3;
                }
            }
            "BlockStored" | "BlockRemoved" => {
                return Err(self.unexpected("an event", "an event missing required fields"))
            }
            _ => {}
        }
        for _ in read..n {
            self.skip(0)?;
        }
        f.kind = Some(kind);
        Ok(f)
    }

    /// An event as a map: the tag under `"type"`, the fields by name.
    fn map_event(&mut self) -> Result<Fields, WireError> {
        let n = self.map_len("an event")?;
        let mut f = Fields::default();
        for _ in 0..n {
            match self.key("an event's field name")?.as_str() {
                "type" => f.kind = Some(self.string("the event tag")?),
                "block_hashes" => f.blocks = Some(self.hashes("block_hashes")?),
                "parent_block_hash" => f.parent = self.opt_hash("parent_block_hash")?,
                "medium" => f.medium = self.opt_string("medium")?,
                _ => self.skip(0)?,
            }
        }
        Ok(f)
    }
}
