//! A small HTTP reverse proxy in front of inference workers, routing with the cache-aware
//! engine's native API:
//!
//! `cargo run --release --example proxy -- --listen 127.0.0.1:8080 --worker http://127.0.0.1:30000 --worker http://127.0.0.1:30001 [--model NAME]`
//!
//! Accepts `POST /v1/completions`, `/v1/chat/completions` and `/generate`; reports workers at
//! `GET /workers` and the policy's counters at `GET /metrics` (Prometheus text).
//!
//! Requests are routed by their text; with `--tokenizer`, by their token ids; with
//! `--tokenizer` and `--kv-events WORKER=tcp://HOST:PORT` (each vLLM engine's KV event
//! stream), by the engines' own block hashes of their tokens, in hybrid mode. With
//! `--replica-sync nats://HOST:4222`, replicas share what they route through NATS JetStream.
#![allow(missing_docs)]

mod events;
mod keys;
mod server;

use clap::Parser;
use std::time::Duration;

#[derive(Parser, Debug)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// A worker's base URL, or `URL=MODEL` for a worker of another model (repeat for each
    /// worker). Requests go to the workers of their body's `model` when some worker serves it,
    /// else to those of --model.
    #[arg(long = "worker", required_unless_present = "mock")]
    workers: Vec<String>,
    /// Instead of proxying, serve a stand-in worker on this address that answers every request
    /// at once (for measuring the proxy's overhead).
    #[arg(long)]
    mock: Option<String>,
    /// The model of workers given without `=MODEL` ("" is the default model).
    #[arg(long, default_value = "")]
    model: String,
    /// Seconds between health probes of unhealthy workers.
    #[arg(long, default_value_t = 1)]
    probe_secs: u64,
    /// A Hugging Face tokenizer.json, the engines' tokenizer: route by token ids.
    #[arg(long)]
    tokenizer: Option<std::path::PathBuf>,
    /// `WORKER_URL=tcp://HOST:PORT`: subscribe to that worker's vLLM KV event stream (its
    /// `--kv-events-config` endpoint) and route by what the engines hold (repeat for each
    /// worker; needs --tokenizer). Workers without a stream are covered by the router's own
    /// decisions.
    #[arg(long = "kv-events")]
    kv_events: Vec<String>,
    /// The engines' `--block-size`, in tokens (for block hashes).
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// The engines' PYTHONHASHSEED (vLLM seeds its block hash chain with it; without a fixed
    /// seed on the engines, their hashes cannot be reproduced and hybrid routing falls back on
    /// the router's own decisions).
    #[arg(long, default_value = "0")]
    hash_seed: String,
    /// A NATS server with JetStream (`nats://HOST:4222`): share routed requests (as block
    /// keys) and each worker's work with the other router replicas, and apply theirs.
    #[arg(long)]
    replica_sync: Option<String>,
    /// This replica's name among the replicas (default: the --listen address).
    #[arg(long)]
    replica_name: Option<String>,
    /// With --replica-sync: seconds to wait for the replay of the stream before serving
    /// (requests that arrive meanwhile wait in the listen queue); then it serves, warm or not.
    #[arg(long, default_value_t = 10)]
    warm_secs: u64,
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    if let Some(addr) = &args.mock {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        println!("stand-in worker on http://{addr}");
        server::serve_mock(listener).await;
        return Ok(());
    }
    if args.block_size == 0 {
        return Err("--block-size must be at least 1".into());
    }
    let routing = server::Routing {
        tokenizer: args.tokenizer.clone(),
        block_size: args.block_size,
        hash_seed: args.hash_seed.clone(),
        kv_events: args.kv_events.clone(),
        replica_sync: args.replica_sync.clone().map(|url| {
            let name = args
                .replica_name
                .clone()
                .unwrap_or_else(|| args.listen.clone());
            (url, name)
        }),
    };
    let state = server::State::with_routing(&args.workers, &args.model, routing)?;
    for stream in &state.streams {
        tokio::spawn(events::run(state.clone(), stream.clone()));
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    println!(
        "routing {} workers by {} on http://{} ({} KV event streams)",
        state.workers.len(),
        state.keys.name(),
        args.listen,
        state.streams.len()
    );
    tokio::spawn(server::share_work(state.clone(), Duration::from_millis(50)));
    if let Some(sync) = &state.sync {
        // The listener is bound (a bad address fails at once), but nothing is served cold.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(args.warm_secs);
        loop {
            if let Some(took) = sync.stats().warmed_in() {
                println!("replica sync: warm from the stream in {took:?}");
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                println!(
                    "replica sync: no replay within {}s (is NATS reachable?): serving from this \
                     replica's own decisions until it catches up",
                    args.warm_secs
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tokio::spawn(server::probe(
        state.clone(),
        Duration::from_secs(args.probe_secs.max(1)),
    ));
    server::serve(listener, state).await;
    Ok(())
}
