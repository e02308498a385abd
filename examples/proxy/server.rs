//! The proxy: routes OpenAI-style and SGLang-style requests with the native API and forwards
//! them, holding each request's load ticket until its response body is fully sent or the
//! client goes away. Used by `main.rs` and, in-process, by `tests/proxy.rs`.
#![allow(dead_code)]

use crate::events::{self, Stream};
use crate::keys::Keys;
use bytes::Bytes;
use cache_aware_router::replica::ReplicaEvent;
use cache_aware_router::{
    BasicWorker, BasicWorkerBuilder, CacheAwareConfig, CacheAwarePolicy, LoadTicket, RoutingMode,
    Worker,
};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use replica_sync::{ReplicaSync, SyncConfig};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

pub(crate) type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Request bodies larger than this are refused (413).
const MAX_BODY: usize = 64 << 20;

pub(crate) struct State {
    /// Wall time spent in `route` (ns) and routing decisions made: the span timer behind
    /// `router_route_seconds_total` / `router_routes_total`.
    route_ns: AtomicU64,
    routes: AtomicU64,
    pub(crate) policy: Arc<CacheAwarePolicy>,
    pub(crate) workers: Vec<Arc<BasicWorker>>,
    /// Models some worker serves (the default first).
    models: Vec<String>,
    pub(crate) model: String,
    /// What requests are routed by.
    pub(crate) keys: Keys,
    /// The workers' KV event streams (`--kv-events`).
    pub(crate) streams: Vec<Arc<Stream>>,
    /// Sharing with the other router replicas (`--replica-sync`).
    pub(crate) sync: Option<ReplicaSync>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// How requests are keyed, beyond their text.
#[derive(Debug, Clone, Default)]
pub(crate) struct Routing {
    /// A Hugging Face `tokenizer.json`: route by token ids.
    pub(crate) tokenizer: Option<PathBuf>,
    /// The engines' `--block-size` and `PYTHONHASHSEED` (for block hashes).
    pub(crate) block_size: usize,
    pub(crate) hash_seed: String,
    /// `WORKER_URL=tcp://HOST:PORT`: route by the engines' KV events (hybrid mode).
    pub(crate) kv_events: Vec<String>,
    /// A NATS server to share routed requests and work with the other replicas through, and
    /// this replica's name among them.
    pub(crate) replica_sync: Option<(String, String)>,
}

impl State {
    /// Workers as `URL` (serving `default_model`) or `URL=MODEL`, routed by text.
    pub(crate) fn new(specs: &[String], default_model: &str) -> Result<Arc<Self>, String> {
        Self::with_routing(specs, default_model, Routing::default())
    }

    /// Workers as `URL` (serving `default_model`) or `URL=MODEL`, routed as `routing` says.
    pub(crate) fn with_routing(
        specs: &[String],
        default_model: &str,
        routing: Routing,
    ) -> Result<Arc<Self>, String> {
        let syncing = routing.replica_sync.is_some();
        let keys = match (&routing.tokenizer, routing.kv_events.is_empty()) {
            (None, true) if syncing => Keys::Chunks,
            (None, true) => Keys::Text,
            (Some(path), true) if syncing => {
                Keys::load(path, Some((routing.block_size, &routing.hash_seed)))?
            }
            (None, false) => {
                return Err("--kv-events needs --tokenizer: requests are matched against the engines' block hashes of their tokens".into())
            }
            (Some(path), true) => Keys::load(path, None)?,
            (Some(path), false) => {
                Keys::load(path, Some((routing.block_size, &routing.hash_seed)))?
            }
        };
        // The builder's default rule: the lowest estimated time to first token, fitted to the
        // first tokens this proxy reports. With events, hybrid: the events, and the router's
        // own recent decisions for what they have not reported yet.
        let mode = if routing.kv_events.is_empty() {
            RoutingMode::Approximate
        } else {
            RoutingMode::Hybrid
        };
        let policy = CacheAwarePolicy::builder()
            .config(CacheAwareConfig::default())
            .mode(mode)
            .build()
            .map_err(|e| e.to_string())?;
        let mut workers = Vec::new();
        let mut models = vec![default_model.to_string()];
        for spec in specs {
            let (url, model) = spec.split_once('=').unwrap_or((spec, default_model));
            let w = Arc::new(
                BasicWorkerBuilder::new(url.trim_end_matches('/'))
                    .model_id(model)
                    .build(),
            );
            policy
                .register_worker(w.clone() as Arc<dyn Worker>)
                .map_err(|e| e.to_string())?;
            if !models.iter().any(|m| m == model) {
                models.push(model.to_string());
            }
            workers.push(w);
        }
        let mut streams = Vec::new();
        for spec in &routing.kv_events {
            let (url, endpoint) = events::parse(spec)?;
            let Some(w) = workers.iter().find(|w| w.url() == url) else {
                return Err(format!(
                    "--kv-events {spec:?}: {url} is not one of the --worker URLs"
                ));
            };
            streams.push(Arc::new(Stream {
                worker: url,
                model: w.model_id().to_string(),
                endpoint,
                stats: Default::default(),
            }));
        }
        let policy = Arc::new(policy);
        let sync = routing
            .replica_sync
            .as_ref()
            .map(|(url, name)| ReplicaSync::start(SyncConfig::new(url, name), policy.clone()));
        Ok(Arc::new(Self {
            route_ns: AtomicU64::new(0),
            routes: AtomicU64::new(0),
            policy,
            workers,
            models,
            model: default_model.to_string(),
            keys,
            streams,
            sync,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }))
    }

    /// The model to route a body's request under: its `model` field if a worker serves it,
    /// else the proxy's default model.
    fn model_for<'a>(&'a self, body: &'a serde_json::Value) -> &'a str {
        body.get("model")
            .and_then(|m| m.as_str())
            .filter(|m| self.models.iter().any(|served| served == m))
            .unwrap_or(&self.model)
    }
}

/// Serves connections from `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, state.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Tells the other replicas this replica's own work on every worker, every `period` (a
/// snapshot each: they sum the latest of every replica).
pub(crate) async fn share_work(state: Arc<State>, period: Duration) {
    let Some(sync) = &state.sync else {
        return;
    };
    loop {
        tokio::time::sleep(period).await;
        for w in &state.workers {
            sync.publish(ReplicaEvent::Work {
                model: w.model_id().to_string(),
                worker: w.url().to_string(),
                work: w.own_work(),
            });
        }
    }
}

/// Marks unhealthy workers healthy again when `GET /health` answers 2xx; every `period`.
pub(crate) async fn probe(state: Arc<State>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        for w in state.workers.iter().filter(|w| !w.is_healthy()) {
            let Ok(uri) = format!("{}/health", w.url()).parse::<hyper::Uri>() else {
                continue;
            };
            let req = Request::get(uri)
                .body(Full::new(Bytes::new()))
                .expect("a valid request");
            if let Ok(Ok(resp)) = tokio::time::timeout(period, state.client.request(req)).await {
                if resp.status().is_success() {
                    w.set_healthy(true);
                }
            }
        }
    }
}

fn full(status: StatusCode, content_type: &str, body: String) -> Response<ProxyBody> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a valid response")
}

fn error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    full(
        status,
        "application/json",
        serde_json::json!({ "error": message }).to_string(),
    )
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<ProxyBody>, hyper::Error> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => full(StatusCode::OK, "text/plain", "ok".into()),
        (&Method::GET, "/workers") => workers(&state),
        (&Method::GET, "/metrics") => metrics(&state),
        (&Method::POST, "/v1/completions" | "/v1/chat/completions" | "/generate") => {
            proxy(req, state).await
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "no such endpoint: use POST /v1/completions, /v1/chat/completions or /generate",
        ),
    })
}

fn workers(state: &State) -> Response<ProxyBody> {
    let list: Vec<_> = state
        .workers
        .iter()
        .map(|w| {
            serde_json::json!({
                "url": w.url(), "healthy": w.is_healthy(),
                "in_flight": w.load(), "routed": w.processed_requests(),
                "queued_prefill_chars": w.work().map_or(0, |k| k.queued_prefill()),
                "decoding": w.work().map_or(0, |k| k.decoding()),
            })
        })
        .collect();
    full(
        StatusCode::OK,
        "application/json",
        serde_json::Value::from(list).to_string(),
    )
}

/// The policy's counters in the Prometheus text format.
fn metrics(state: &State) -> Response<ProxyBody> {
    let m = state.policy.metrics();
    let mut out = String::new();
    for (name, help, value) in [
        (
            "router_cache_hits_total",
            "Decisions that followed a cached prefix.",
            m.cache_hits,
        ),
        (
            "router_cache_misses_total",
            "Decisions made on a miss.",
            m.cache_misses,
        ),
        (
            "router_load_balancing_events_total",
            "Decisions where imbalance overrode the cache.",
            m.load_balancing_events,
        ),
        (
            "router_no_worker_total",
            "Requests with no healthy worker.",
            m.no_worker,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        ));
    }
    out.push_str("# HELP router_worker_in_flight Requests in flight per worker.\n# TYPE router_worker_in_flight gauge\n");
    for w in &m.workers {
        out.push_str(&format!(
            "router_worker_in_flight{{worker=\"{}\"}} {}\n",
            w.url, w.in_flight
        ));
    }
    out.push_str("# HELP router_worker_queued_prefill_chars Prompt chars routed per worker and not past their first token.\n# TYPE router_worker_queued_prefill_chars gauge\n");
    for w in &m.workers {
        out.push_str(&format!(
            "router_worker_queued_prefill_chars{{worker=\"{}\"}} {}\n",
            w.url, w.queued_prefill_chars
        ));
    }
    out.push_str("# HELP router_worker_decoding Requests past their first token and not finished, per worker.\n# TYPE router_worker_decoding gauge\n");
    for w in &m.workers {
        out.push_str(&format!(
            "router_worker_decoding{{worker=\"{}\"}} {}\n",
            w.url, w.decoding
        ));
    }
    out.push_str("# HELP router_worker_routed_total Requests routed per worker.\n# TYPE router_worker_routed_total counter\n");
    for w in &m.workers {
        out.push_str(&format!(
            "router_worker_routed_total{{worker=\"{}\"}} {}\n",
            w.url, w.routed
        ));
    }
    let (ns, n) = (
        state.route_ns.load(Ordering::Relaxed),
        state.routes.load(Ordering::Relaxed),
    );
    out.push_str(&format!(
        "# HELP router_route_seconds_total Time spent in routing decisions.\n\
         # TYPE router_route_seconds_total counter\nrouter_route_seconds_total {}\n\
         # HELP router_routes_total Routing decisions.\n\
         # TYPE router_routes_total counter\nrouter_routes_total {n}\n",
        ns as f64 / 1e9
    ));
    for (name, help, get) in [
        (
            "router_kv_event_batches_total",
            "KV event batches applied, per worker stream.",
            (|s: &events::Stats| s.batches.load(Ordering::Relaxed)) as fn(&events::Stats) -> u64,
        ),
        (
            "router_kv_events_total",
            "KV events applied, per worker stream.",
            |s| s.events.load(Ordering::Relaxed),
        ),
        (
            "router_kv_events_skipped_total",
            "KV events of unknown kinds skipped, per worker stream.",
            |s| s.skipped.load(Ordering::Relaxed),
        ),
        (
            "router_kv_event_errors_total",
            "KV event frames that did not decode, and events refused, per worker stream.",
            |s| s.errors.load(Ordering::Relaxed),
        ),
        (
            "router_kv_event_resets_total",
            "Workers reset to holding nothing (gaps, restarts, bad frames, reconnections).",
            |s| s.resets.load(Ordering::Relaxed),
        ),
    ] {
        if state.streams.is_empty() {
            break;
        }
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
        for s in &state.streams {
            out.push_str(&format!(
                "{name}{{worker=\"{}\"}} {}\n",
                s.worker,
                get(&s.stats)
            ));
        }
    }
    if let Some(sync) = &state.sync {
        let st = sync.stats();
        for (name, kind, help, value) in [
            (
                "router_sync_published_total",
                "counter",
                "Events published to the other replicas.",
                st.published.load(Ordering::Relaxed),
            ),
            (
                "router_sync_dropped_total",
                "counter",
                "Events dropped: queue full or NATS unreachable.",
                st.dropped.load(Ordering::Relaxed),
            ),
            (
                "router_sync_applied_total",
                "counter",
                "Other replicas' events applied.",
                st.applied.load(Ordering::Relaxed),
            ),
            (
                "router_sync_applied_routed_total",
                "counter",
                "Other replicas' routed requests applied (the rest of the applied are work snapshots).",
                st.applied_routed.load(Ordering::Relaxed),
            ),
            (
                "router_sync_errors_total",
                "counter",
                "Sync messages that did not decode or apply.",
                st.errors.load(Ordering::Relaxed),
            ),
            (
                "router_sync_lag_milliseconds",
                "gauge",
                "Publication to application of the last event applied.",
                st.lag_ms.load(Ordering::Relaxed),
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        if let Some(took) = st.warmed_in() {
            out.push_str(&format!(
                "# HELP router_sync_warm_milliseconds How long the replay of the stream took at start.\n\
                 # TYPE router_sync_warm_milliseconds gauge\nrouter_sync_warm_milliseconds {}\n",
                took.as_millis()
            ));
        }
    }
    out.push_str(
        "# HELP router_tree_chars Chars cached per model tree.\n# TYPE router_tree_chars gauge\n",
    );
    for (model, chars) in &m.tree_chars {
        out.push_str(&format!("router_tree_chars{{model=\"{model}\"}} {chars}\n"));
    }
    full(StatusCode::OK, "text/plain; version=0.0.4", out)
}

/// The routing text of a request body: the prompt, or every chat message in order.
pub(crate) fn routing_text(path: &str, body: &serde_json::Value) -> Result<String, &'static str> {
    let as_text = |v: &serde_json::Value| -> Option<String> {
        match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(parts) => Some(
                parts
                    .iter()
                    .filter_map(|p| {
                        p.as_str()
                            .map(str::to_string)
                            .or_else(|| p.get("text")?.as_str().map(str::to_string))
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            _ => None,
        }
    };
    let text = match path {
        "/v1/chat/completions" => {
            let messages = body
                .get("messages")
                .and_then(|m| m.as_array())
                .ok_or("no messages array in the body")?;
            let mut s = String::new();
            for m in messages {
                let role = m.get("role").and_then(|r| r.as_str()).unwrap_or("user");
                let content = m.get("content").and_then(as_text).unwrap_or_default();
                s.push_str(role);
                s.push_str(": ");
                s.push_str(&content);
                s.push('\n');
            }
            s
        }
        "/generate" => body
            .get("text")
            .and_then(as_text)
            .ok_or("no text in the body")?,
        _ => body
            .get("prompt")
            .and_then(as_text)
            .ok_or("no prompt in the body")?,
    };
    if text.is_empty() {
        return Err("the prompt is empty");
    }
    Ok(text)
}

/// An upstream body that holds the request's load ticket until the last frame is sent or the
/// body is dropped (the client went away), and reports the first token to it when the first
/// data frame goes out to the client (for a streamed completion, the first event: the worker's
/// prefill is done).
struct TicketBody {
    inner: Incoming,
    ticket: Option<LoadTicket>,
}

impl Body for TicketBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) if frame.is_data() => {
                if let Some(ticket) = &self.ticket {
                    ticket.first_token();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.ticket = None,
            _ => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

async fn proxy(req: Request<Incoming>, state: Arc<State>) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let bytes = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body is unreadable or over 64 MiB",
            )
        }
    };
    if bytes.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "the request has no body: send a JSON object",
        );
    }
    let json: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("the body is not JSON: {e}"),
            )
        }
    };
    let path = parts.uri.path().to_string();
    let text = match routing_text(&path, &json) {
        Ok(t) => t,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    // One retry on another worker if the first refuses the connection or answers 5xx.
    for _attempt in 0..2 {
        let started = Instant::now();
        let model = state.model_for(&json);
        let routed = state.keys.route(&state.policy, model, &text);
        state
            .route_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        state.routes.fetch_add(1, Ordering::Relaxed);
        let ticket = match routed {
            Ok((ticket, keys)) => {
                if let (Some(sync), Some(keys)) = (&state.sync, keys) {
                    sync.publish(ReplicaEvent::Routed {
                        model: model.to_string(),
                        worker: ticket.url().to_string(),
                        keys,
                    });
                }
                ticket
            }
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        };
        let Ok(uri) = format!("{}{}", ticket.url(), path).parse::<hyper::Uri>() else {
            return error(StatusCode::BAD_GATEWAY, "a worker URL is not a valid URI");
        };
        let mut upstream = Request::builder().method(parts.method.clone()).uri(uri);
        for (name, value) in parts
            .headers
            .iter()
            .filter(|(n, _)| *n != hyper::header::HOST)
        {
            upstream = upstream.header(name, value);
        }
        let upstream = upstream
            .body(Full::new(bytes.clone()))
            .expect("a valid request");
        match state.client.request(upstream).await {
            Ok(resp) if !resp.status().is_server_error() => {
                let (head, inner) = resp.into_parts();
                let body = TicketBody {
                    inner,
                    ticket: Some(ticket),
                }
                .boxed();
                return Response::from_parts(head, body);
            }
            _ => ticket.worker().set_healthy(false),
        }
    }
    error(StatusCode::BAD_GATEWAY, "two workers failed this request")
}

/// A stand-in worker for measuring the proxy's overhead: answers every request with a small
/// fixed completion at once, and `GET /health` with 200.
pub(crate) async fn serve_mock(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(|req: Request<Incoming>| async move {
                let _ = req.into_body().collect().await;
                Ok::<_, hyper::Error>(full(
                    StatusCode::OK,
                    "application/json",
                    r#"{"choices":[{"text":"ok"}]}"#.into(),
                ))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
