//! The routing simulator: replays a request trace through routing policies over simulated
//! workers with real prefix KV caches, and reports what each policy buys (cache hits, time to
//! first token, balance) and what it costs (ns per routing decision).
//!
//! `cargo run --release` replays a built-in trace; `--trace FILE.jsonl` replays a Mooncake
//! trace (`../shared/traces/mooncake_synthetic_trace.jsonl` is a real one). `--help` lists
//! every flag.

mod batched;
mod cache;
mod delayed;
mod model;
mod plot;
mod replicas;
mod report;
mod tickets;
mod trace;

use batched::StepModel;
use cache_aware_router::{CacheAwareConfig, ConfigError};
use clap::Parser;
use model::{make_router, simulate, Serving, SimConfig, POLICIES};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Replays a request trace through routing policies and reports, per policy: token cache hit
/// rate, hit rate relative to the oracle, mean and p99 time to first token (TTFT), balance, and
/// the router's own cost per decision.
///
/// Serving models (--serving). batched (the default): each worker runs steps of continuous
/// batching with chunked prefill, as vLLM and SGLang do: a step takes up to --token-budget
/// tokens, one decode token per running request past its prefill and the rest as prefill
/// chunks in arrival order, and lasts --step-base-ms, plus --prefill-us-per-token per prefill
/// token, plus --step-us-per-request per running request. KV memory is counted in 512-token blocks: running
/// requests pin theirs, the rest of the worker's capacity (--cache-tokens) is its LRU prefix
/// cache, and a request waits until its blocks fit. The step defaults are those of
/// Llama-3.1-8B-Instruct on one H100 in NVIDIA's NIM LLM benchmarks (NIM 1.8.0: inter-token
/// latency 4.63 ms at 1 concurrent request, 7.57 ms at 100, so 4.6 ms a step plus 30 us a
/// request; docs.nvidia.com/nim/benchmarking/llm, "Performance"), and prefill at 16 us a token
/// (the NIM of Llama-3.1-Nemotron-Safety-Guard-8B, a Llama-3.1-8B, on GH200 in BF16: 15.7 ms to
/// the first token of 1,000 input tokens at 1 concurrent request; its "Performance" page).
/// fifo: each worker serves one request at a time in arrival order; prefill
/// takes --prefill-us-per-token per uncached prompt token, decode --decode-ms-per-token per
/// output token. In both, a request hits the longest run of its leading blocks cached where it
/// goes, and the router sees only the prompt's text: each block id becomes a fixed block of
/// --chars-per-block chars.
#[derive(Parser, Debug)]
#[command(name = "router-sim", version)]
struct Args {
    /// A Mooncake-format JSONL trace (timestamp ms, input_length, output_length, hash_ids).
    /// Default: a built-in trace of the same shape (seeded by --seed).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Requests in the built-in trace.
    #[arg(long, default_value_t = 4000)]
    requests: usize,
    /// Simulated workers.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Policies to compare, comma-separated: cache-aware (the seed's threshold rule),
    /// cache-aware-cost (cost-aware choice: queued work + unmatched prefill), cache-aware-ttft
    /// (lowest estimated time to first token, its costs fitted to the first tokens), precise
    /// (the TTFT rule on the workers' KV cache events only, the prompt as block hashes), hybrid
    /// (the events plus its own recent decisions), replicated (several router replicas: see
    /// --replicas; not in the default list), round-robin,
    /// random, power-of-two, least-load, prefix-hash (consistent hashing on the first block,
    /// bounded load), oracle (exact caches and queues: lowest modelled TTFT). Default: all.
    #[arg(long, value_delimiter = ',')]
    policy: Vec<String>,
    /// Tokens each worker's KV cache holds. Default: half the trace's distinct prefix tokens,
    /// so the trace does not fit in one worker.
    #[arg(long, conflicts_with = "cache_pressure")]
    cache_tokens: Option<u64>,
    /// Cache pressure: the workers' KV caches together hold an eighth of the trace's distinct
    /// blocks (each worker 1/(8 x workers)), so workers evict often and a router's record of
    /// what they hold goes stale.
    #[arg(long)]
    cache_pressure: bool,
    /// How long the workers' KV cache events take to reach the router, in milliseconds
    /// (precise and hybrid). Several values, comma-separated, run those policies once per
    /// delay, as "precise @10ms" and so on.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    event_delay_ms: Vec<f64>,
    /// The replicated policy: router replicas that requests are spread over round-robin (as an
    /// L4 load balancer does), each its own policy (the TTFT rule on the prompt's block ids)
    /// with its own view of the load. Several values, comma-separated, run it once per count.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    replicas: Vec<usize>,
    /// The replicated policy: how replicas share what they learn: none (independent trees and
    /// loads), stream (each applies the others' decisions and work snapshots --sync-delay-ms
    /// late), shared (one tree and one load view: the upper bound). Several, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "stream")]
    sync: Vec<String>,
    /// The replicated policy with --sync stream: how late a replica's events reach the others,
    /// in milliseconds.
    #[arg(long, default_value_t = 10.0)]
    sync_delay_ms: f64,
    /// Cache-aware: match ratio above which the matching worker is chosen, in [0, 1].
    #[arg(long, default_value_t = 0.3)]
    cache_threshold: f32,
    /// Cache-aware: imbalance needs max load - min load above this.
    #[arg(long, default_value_t = 64)]
    balance_abs_threshold: usize,
    /// Cache-aware: imbalance also needs max load > min load x this (>= 1).
    #[arg(long, default_value_t = 1.5)]
    balance_rel_threshold: f32,
    /// Chars of text one 512-token block becomes (about 2,048 for real text).
    #[arg(long, default_value_t = 256)]
    chars_per_block: usize,
    /// Replay this many times faster than the trace's timestamps.
    #[arg(long, default_value_t = 1.0)]
    speedup: f64,
    /// Prefill time per uncached prompt token, in microseconds. Default: 16 with --serving
    /// batched (see above), 25 with fifo.
    #[arg(long)]
    prefill_us_per_token: Option<f64>,
    /// fifo: decode time per output token, in milliseconds.
    #[arg(long, default_value_t = 2.0)]
    decode_ms_per_token: f64,
    /// How workers serve: batched (continuous batching) or fifo (one request at a time).
    #[arg(long, default_value = "batched")]
    serving: String,
    /// batched: the fixed cost of a step, in milliseconds.
    #[arg(long, default_value_t = 4.6)]
    step_base_ms: f64,
    /// batched: the cost of each running request in a step, in microseconds.
    #[arg(long, default_value_t = 30.0)]
    step_us_per_request: f64,
    /// batched: tokens one step may process (decode tokens and prefill chunks together).
    #[arg(long, default_value_t = 8192)]
    token_budget: u64,
    /// Policies replayed at once, each on a thread of its own (0: one per core). Results are
    /// the same whatever this is, but for the router's cost per decision, which is measured
    /// while the other replays run: use 1 for that column.
    #[arg(long, default_value_t = 0)]
    jobs: usize,
    /// Seed of the built-in trace and of the random policies.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the report as CSV to this file.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Also draw hit rate and p99 TTFT per policy into this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// Writes `data` to `path` through a temporary file, so a failure leaves nothing half-written.
fn write_atomically(path: &Path, data: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp-router-sim");
    std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", path.display())
        })
}

/// Every numeric setting a replay cannot use, named by its flag: counts of zero, rates that
/// are not finite and positive, service times that are negative or not finite, and an empty
/// policy list.
fn check(args: &Args) -> Result<(), String> {
    let at_least_one = [
        ("--workers", args.workers),
        ("--chars-per-block", args.chars_per_block),
        (
            "--requests",
            if args.trace.is_some() {
                1
            } else {
                args.requests
            },
        ),
    ];
    for (flag, n) in at_least_one {
        if n == 0 {
            return Err(format!("{flag} must be at least 1"));
        }
    }
    if args
        .cache_tokens
        .is_some_and(|t| t < trace::TOKENS_PER_BLOCK)
    {
        return Err(format!(
            "--cache-tokens must hold at least one block ({} tokens)",
            trace::TOKENS_PER_BLOCK
        ));
    }
    if !(args.speedup > 0.0 && args.speedup.is_finite()) {
        return Err("--speedup must be a positive, finite number".into());
    }
    let times = [
        (
            "--prefill-us-per-token",
            args.prefill_us_per_token.unwrap_or(0.0),
        ),
        ("--decode-ms-per-token", args.decode_ms_per_token),
        ("--step-base-ms", args.step_base_ms),
        ("--step-us-per-request", args.step_us_per_request),
    ];
    for (flag, t) in times {
        if !(t >= 0.0 && t.is_finite()) {
            return Err(format!(
                "{flag} must be a finite number, 0 or more (got {t})"
            ));
        }
    }
    let thresholds = [
        ("--cache-threshold", args.cache_threshold),
        ("--balance-rel-threshold", args.balance_rel_threshold),
    ];
    for (flag, x) in thresholds {
        if !x.is_finite() {
            return Err(format!("{flag} must be a finite number (got {x})"));
        }
    }
    if args.token_budget == 0 {
        return Err("--token-budget must be at least 1".into());
    }
    if !matches!(args.serving.as_str(), "batched" | "fifo") {
        return Err(format!(
            "--serving {:?}: choose batched or fifo",
            args.serving
        ));
    }
    if let Some(d) = args
        .event_delay_ms
        .iter()
        .find(|d| !(**d >= 0.0 && d.is_finite()))
    {
        return Err(format!(
            "--event-delay-ms must be finite numbers, 0 or more (got {d})"
        ));
    }
    if args.replicas.contains(&0) {
        return Err("--replicas must be at least 1".into());
    }
    if !(args.sync_delay_ms >= 0.0 && args.sync_delay_ms.is_finite()) {
        return Err(format!(
            "--sync-delay-ms must be a finite number, 0 or more (got {})",
            args.sync_delay_ms
        ));
    }
    for mode in &args.sync {
        replicas::SyncMode::parse(mode)?;
    }
    if args.policy.iter().any(|p| p.trim().is_empty()) {
        return Err("--policy names an empty policy: give names separated by commas".into());
    }
    Ok(())
}

fn run(args: Args) -> Result<(), String> {
    check(&args)?;
    let prefill_us_per_token = args
        .prefill_us_per_token
        .unwrap_or(match args.serving.as_str() {
            "fifo" => 25.0,
            _ => 16.0,
        });
    let policies: Vec<String> = if args.policy.is_empty() {
        POLICIES.iter().map(|s| s.to_string()).collect()
    } else {
        args.policy.clone()
    };
    let cache_aware = CacheAwareConfig {
        cache_threshold: args.cache_threshold,
        balance_abs_threshold: args.balance_abs_threshold,
        balance_rel_threshold: args.balance_rel_threshold,
        ..CacheAwareConfig::default()
    };
    cache_aware.validate().map_err(|e| {
        let flag = match e {
            ConfigError::CacheThreshold(_) => "--cache-threshold",
            ConfigError::BalanceRelThreshold(_) => "--balance-rel-threshold",
            _ => "cache-aware config",
        };
        format!("{flag}: {e}")
    })?;
    let (requests, source) = match &args.trace {
        Some(path) => (trace::load(path)?, path.display().to_string()),
        None => (
            trace::generate(args.requests, args.seed),
            format!("built-in trace (seed {})", args.seed),
        ),
    };
    let distinct: std::collections::HashSet<u64> = requests
        .iter()
        .flat_map(|r| r.hash_ids.iter().copied())
        .collect();
    let cache_blocks = match args.cache_tokens {
        Some(t) => (t / trace::TOKENS_PER_BLOCK) as usize,
        None if args.cache_pressure => distinct.len().div_ceil(8 * args.workers),
        None => distinct.len().div_ceil(2),
    };
    let cfg = SimConfig {
        workers: args.workers,
        cache_blocks,
        prefill_us_per_token,
        decode_ms_per_token: args.decode_ms_per_token,
        speedup: args.speedup,
        chars_per_block: args.chars_per_block,
        cache_aware,
        seed: args.seed,
        event_delay_ms: args.event_delay_ms[0],
        replicas: args.replicas[0],
        sync: replicas::SyncMode::parse(&args.sync[0])?,
        sync_delay_ms: args.sync_delay_ms,
        serving: match args.serving.as_str() {
            "fifo" => Serving::Fifo,
            _ => Serving::Batched(StepModel {
                base_us: args.step_base_ms * 1000.0,
                prefill_us_per_token,
                per_request_us: args.step_us_per_request,
                token_budget: args.token_budget,
            }),
        },
    };
    let mut routers = Vec::new();
    for p in &policies {
        if p == "replicated" {
            for &n in &args.replicas {
                for mode in &args.sync {
                    let cfg = SimConfig {
                        replicas: n,
                        sync: replicas::SyncMode::parse(mode)?,
                        ..cfg.clone()
                    };
                    let name = match cfg.sync {
                        replicas::SyncMode::Stream => {
                            format!("{n} replicas (stream @{}ms)", args.sync_delay_ms)
                        }
                        _ => format!("{n} replicas ({mode})"),
                    };
                    routers.push((name, make_router(p, &cfg)?));
                }
            }
        } else if matches!(p.as_str(), "precise" | "hybrid") && args.event_delay_ms.len() > 1 {
            for &d in &args.event_delay_ms {
                let cfg = SimConfig {
                    event_delay_ms: d,
                    ..cfg.clone()
                };
                routers.push((format!("{p} @{d}ms"), make_router(p, &cfg)?));
            }
        } else {
            routers.push((p.clone(), make_router(p, &cfg)?));
        }
    }
    let texts: Vec<String> = requests
        .iter()
        .map(|r| trace::text_of(r, cfg.chars_per_block))
        .collect();
    println!(
        "{} requests from {source}; {} workers, {} blocks ({} tokens) of cache each, {} distinct blocks in the trace",
        requests.len(),
        cfg.workers,
        cfg.cache_blocks,
        cfg.cache_blocks as u64 * trace::TOKENS_PER_BLOCK,
        distinct.len()
    );
    let bar = indicatif::ProgressBar::new((requests.len() * routers.len()) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.jobs)
        .build()
        .map_err(|e| format!("--jobs: cannot start {} threads ({e})", args.jobs))?;
    // One policy per task; `collect` keeps the report in the policies' order.
    let outcomes: Vec<_> = pool.install(|| {
        routers
            .par_iter_mut()
            .map(|(name, router)| {
                simulate(name, &mut **router, &requests, &texts, &cfg, || bar.inc(1))
            })
            .collect()
    });
    bar.finish_and_clear();
    let rows = report::rows(&outcomes);
    println!("{}", report::table(&rows));
    let bound = model::ttft_lower_bound_ms(&requests, &cfg);
    println!("{}", report::bound_line(&bound, &rows));
    for line in report::estimate_lines(&rows) {
        println!("{line}");
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?;
        write_atomically(path, &json)?;
    }
    if let Some(path) = &args.csv {
        write_atomically(path, &report::csv(&rows))?;
    }
    if let Some(path) = &args.plot {
        // Drawn to a temporary file first, like the other outputs.
        let tmp = path.with_extension("tmp-router-sim.svg");
        plot::draw(&tmp, &rows).and_then(|()| {
            std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
        })?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
