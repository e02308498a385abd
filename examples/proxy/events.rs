//! Subscribers to the workers' KV cache event streams (vLLM's ZeroMQ PUB socket: topic,
//! 8-byte big-endian sequence number, msgpack batch), feeding the policy's event index.
//!
//! A sequence number other than the next expected one (a gap: messages lost; or a restart:
//! numbering from 0 again), a frame that does not decode, or a reconnection means events may
//! have been lost, and a lost removal would leave the index naming the worker as a holder of
//! blocks it evicted. So each of these resets the worker (`AllBlocksCleared`: it is known to
//! hold nothing, until its next events say otherwise) and is counted; the stream goes on.
//! vLLM's replay socket, which could refill the gap instead, is not used.
#![allow(dead_code)]

use crate::server::State;
use cache_aware_router::vllm::{decode_batch, decode_sequence, WireError};
use cache_aware_router::KvEvent;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use zeromq::{Socket, SocketRecv};

/// One worker's stream.
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) worker: String,
    pub(crate) model: String,
    pub(crate) endpoint: String,
    pub(crate) stats: Stats,
}

/// What a stream has done (`Relaxed` counters: statistics).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) batches: AtomicU64,
    pub(crate) events: AtomicU64,
    /// Events of kinds the decoder does not know, skipped.
    pub(crate) skipped: AtomicU64,
    /// Frames that did not decode, and events the policy refused.
    pub(crate) errors: AtomicU64,
    /// Resets of the worker: sequence gaps, restarts, undecodable frames, reconnections.
    pub(crate) resets: AtomicU64,
}

/// Parses `--kv-events URL=ENDPOINT` (the worker's URL as given to `--worker`).
pub(crate) fn parse(spec: &str) -> Result<(String, String), String> {
    let (url, endpoint) = spec.split_once('=').ok_or_else(|| {
        format!("--kv-events {spec:?}: give WORKER_URL=tcp://HOST:PORT (the engine's --kv-events-config endpoint)")
    })?;
    if !endpoint.starts_with("tcp://") {
        return Err(format!(
            "--kv-events {spec:?}: the endpoint must be tcp://HOST:PORT"
        ));
    }
    Ok((url.trim_end_matches('/').to_string(), endpoint.to_string()))
}

/// Runs `stream` until the task is dropped: connects (retrying every second), then applies
/// every batch in order.
pub(crate) async fn run(state: Arc<State>, stream: Arc<Stream>) {
    loop {
        let mut socket = zeromq::SubSocket::new();
        let connected =
            socket.connect(&stream.endpoint).await.is_ok() && socket.subscribe("").await.is_ok();
        if !connected {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Whatever happened while disconnected is unknown.
        reset(&state, &stream);
        let mut expected: Option<u64> = None;
        while let Ok(message) = socket.recv().await {
            let frames = message.into_vec();
            if let Err(e) = apply(&state, &stream, &frames, &mut expected) {
                stream.stats.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("kv events from {}: {e}", stream.endpoint);
                reset(&state, &stream);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn reset(state: &State, stream: &Stream) {
    stream.stats.resets.fetch_add(1, Ordering::Relaxed);
    let _ = state
        .policy
        .apply_kv_event(&stream.model, &stream.worker, &KvEvent::Cleared);
}

/// Applies one message; `expected` is the next sequence number (none before the first).
fn apply(
    state: &State,
    stream: &Stream,
    frames: &[bytes::Bytes],
    expected: &mut Option<u64>,
) -> Result<(), WireError> {
    if frames.len() != 3 {
        return Err(WireError::BadFrames(frames.len()));
    }
    let seq = decode_sequence(&frames[1])? as u64;
    if expected.is_some_and(|e| e != seq) {
        reset(state, stream);
    }
    *expected = Some(seq.wrapping_add(1));
    let batch = decode_batch(&frames[2])?;
    let s = &stream.stats;
    s.batches.fetch_add(1, Ordering::Relaxed);
    s.skipped.fetch_add(batch.skipped as u64, Ordering::Relaxed);
    for e in &batch.events {
        match state
            .policy
            .apply_kv_event(&stream.model, &stream.worker, &e.event)
        {
            Ok(()) => s.events.fetch_add(1, Ordering::Relaxed),
            Err(_) => s.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
    Ok(())
}
