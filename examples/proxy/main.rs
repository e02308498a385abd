//! A small HTTP reverse proxy in front of inference workers, routing with the cache-aware
//! engine's native API:
//!
//! `cargo run --release --example proxy -- --listen 127.0.0.1:8080 --worker http://127.0.0.1:30000 --worker http://127.0.0.1:30001 [--model NAME]`
//!
//! Accepts `POST /v1/completions`, `/v1/chat/completions` and `/generate`; reports workers at
//! `GET /workers` and the policy's counters at `GET /metrics` (Prometheus text).
#![allow(missing_docs)]

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
    let state = server::State::new(&args.workers, &args.model)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    println!(
        "routing {} workers on http://{}",
        state.workers.len(),
        args.listen
    );
    tokio::spawn(server::probe(
        state.clone(),
        Duration::from_secs(args.probe_secs.max(1)),
    ));
    server::serve(listener, state).await;
    Ok(())
}
