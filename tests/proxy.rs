//! The proxy example end to end on loopback: 3 mock workers (tiny hyper servers that record
//! what they receive, and can be told to fail or to stream slowly) and the proxy, in-process.
//! Every wait is bounded.

#[path = "../examples/proxy/events.rs"]
#[allow(unreachable_pub)]
mod events;
#[path = "../examples/proxy/keys.rs"]
#[allow(unreachable_pub)]
mod keys;
#[path = "../examples/proxy/server.rs"]
#[allow(unreachable_pub)]
mod server;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Default)]
struct Mock {
    received: Mutex<Vec<String>>,
    fail: AtomicBool,
    /// Server-sent events to stream, 50 ms apart (0: a plain JSON answer).
    stream_events: AtomicUsize,
}

/// `left` server-sent events, one every 50 ms.
struct Events {
    left: usize,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(50))));
        match sleep.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.sleep = None;
                self.left -= 1;
                let event = format!("data: {}\n\n", self.left);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
            }
        }
    }
}

async fn answer(
    m: Arc<Mock>,
    req: Request<Incoming>,
) -> Result<Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>, Infallible> {
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let failing = m.fail.load(Ordering::SeqCst);
    let reply = |status: u16, text: &'static str| {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(text)).boxed())
            .unwrap()
    };
    if path == "/health" {
        return Ok(reply(if failing { 500 } else { 200 }, ""));
    }
    m.received
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&body).into_owned());
    if failing {
        return Ok(reply(500, "boom"));
    }
    match m.stream_events.load(Ordering::SeqCst) {
        0 => Ok(reply(200, "{\"text\":\"ok\"}")),
        n => Ok(Response::builder()
            .header("content-type", "text/event-stream")
            .body(
                Events {
                    left: n,
                    sleep: None,
                }
                .boxed(),
            )
            .unwrap()),
    }
}

async fn start_mock() -> (String, Arc<Mock>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mock = Arc::new(Mock::default());
    let m = mock.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let m = m.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(m.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, mock)
}

struct Setup {
    proxy: String,
    mocks: Vec<Arc<Mock>>,
    state: Arc<server::State>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

async fn setup() -> Setup {
    setup_with(3, |_| server::Routing::default()).await
}

/// `n` mock workers and a proxy routing as `routing(urls)` says.
async fn setup_with(n: usize, routing: impl FnOnce(&[String]) -> server::Routing) -> Setup {
    let mut urls = Vec::new();
    let mut mocks = Vec::new();
    for _ in 0..n {
        let (url, mock) = start_mock().await;
        urls.push(url);
        mocks.push(mock);
    }
    let state = server::State::with_routing(&urls, "", routing(&urls)).unwrap();
    for stream in &state.streams {
        tokio::spawn(events::run(state.clone(), stream.clone()));
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::serve(listener, state.clone()));
    tokio::spawn(server::probe(state.clone(), Duration::from_millis(100)));
    Setup {
        proxy,
        mocks,
        state,
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

impl Setup {
    async fn post(&self, path: &str, body: &str) -> (u16, String) {
        let req = Request::post(format!("{}{path}", self.proxy))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .expect("bounded")
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn get(&self, path: &str) -> String {
        let req = Request::get(format!("{}{path}", self.proxy))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self.client.request(req).await.unwrap();
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
    }

    fn total_in_flight(&self) -> usize {
        self.state
            .workers
            .iter()
            .map(|w| cache_aware_router::Worker::load(&**w))
            .sum()
    }

    async fn wait_idle(&self) {
        for _ in 0..200 {
            if self.total_in_flight() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("in-flight load stayed at {}", self.total_in_flight());
    }
}

fn completion(prompt: &str) -> String {
    serde_json::json!({ "model": "m", "prompt": prompt, "max_tokens": 8 }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_prefixes_stick_and_distinct_ones_spread() {
    let s = setup().await;
    let system = "You are a meticulous assistant. Answer in one paragraph. ".repeat(20);
    for q in 0..6 {
        let (status, _) = s
            .post("/v1/completions", &completion(&format!("{system}Q{q}?")))
            .await;
        assert_eq!(status, 200);
    }
    let holders: Vec<usize> = s
        .mocks
        .iter()
        .map(|m| m.received.lock().unwrap().len())
        .collect();
    assert_eq!(
        holders.iter().filter(|&&n| n > 0).count(),
        1,
        "one worker got the shared prefix: {holders:?}"
    );
    // Each starts with its own letter, so none matches another and every one is a miss, sent
    // at random among the idle workers: a worker is missed with probability 3 (2/3)^30.
    for c in ('A'..='Z').chain('a'..='d') {
        s.post(
            "/v1/completions",
            &completion(&format!("{c} is where this unrelated prompt starts")),
        )
        .await;
    }
    let spread = s
        .mocks
        .iter()
        .filter(|m| !m.received.lock().unwrap().is_empty())
        .count();
    assert_eq!(spread, 3, "distinct prompts reached every worker");
    // Chat: every message is part of the routing text, in order.
    let chat = serde_json::json!({ "model": "m", "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": "hi"}]});
    assert_eq!(
        s.post("/v1/chat/completions", &chat.to_string()).await.0,
        200
    );
    let gen = serde_json::json!({ "text": "generate this" });
    assert_eq!(s.post("/generate", &gen.to_string()).await.0, 200);
    s.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_returns_to_zero_after_streamed_and_aborted_responses() {
    let s = setup().await;
    for m in &s.mocks {
        m.stream_events.store(4, Ordering::SeqCst);
    }
    let (status, body) = s.post("/v1/completions", &completion("stream me")).await;
    assert_eq!(status, 200);
    assert_eq!(
        body.matches("data:").count(),
        4,
        "events passed through: {body:?}"
    );
    s.wait_idle().await;
    // Abort: read the head of a slow stream, then drop the response mid-stream.
    for m in &s.mocks {
        m.stream_events.store(40, Ordering::SeqCst);
    }
    let req = Request::post(format!("{}/v1/completions", s.proxy))
        .body(Full::new(Bytes::from(completion("abort me"))))
        .unwrap();
    let resp = s.client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        s.total_in_flight(),
        1,
        "the ticket is held while the body streams"
    );
    drop(resp);
    s.wait_idle().await;
}

/// A streamed completion: until its first event reaches the client, the worker holds the
/// prompt as queued prefill; from then on, one request decoding; after the last event, nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_streamed_event_moves_the_request_from_prefill_to_decoding() {
    let s = setup().await;
    for m in &s.mocks {
        m.stream_events.store(6, Ordering::SeqCst);
    }
    let work = || {
        let (mut prefill, mut decoding) = (0, 0);
        for w in &s.state.workers {
            let k = cache_aware_router::Worker::work(&**w).unwrap();
            (prefill, decoding) = (prefill + k.queued_prefill(), decoding + k.decoding());
        }
        (prefill, decoding)
    };
    let prompt = "stream this, please";
    let req = Request::post(format!("{}/v1/completions", s.proxy))
        .body(Full::new(Bytes::from(completion(prompt))))
        .unwrap();
    let resp = s.client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("bounded")
        .expect("a first frame")
        .unwrap();
    assert!(first.is_data());
    assert_eq!(work(), (0, 1), "prefill done, one request decoding");
    let rest = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("bounded")
        .unwrap();
    assert!(!rest.to_bytes().is_empty());
    s.wait_idle().await;
    assert_eq!(work(), (0, 0));
    let workers = s.get("/workers").await;
    assert!(workers.contains("\"decoding\":0"), "{workers}");
    let metrics = s.get("/metrics").await;
    assert!(
        metrics.contains("router_worker_queued_prefill_chars{"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_worker_is_skipped_and_comes_back_after_its_probe() {
    let s = setup().await;
    let prompt = "a prompt that lands somewhere, then its worker fails";
    assert_eq!(s.post("/v1/completions", &completion(prompt)).await.0, 200);
    let first = s
        .mocks
        .iter()
        .position(|m| m.received.lock().unwrap().len() == 1)
        .unwrap();
    s.mocks[first].fail.store(true, Ordering::SeqCst);
    let (status, body) = s.post("/v1/completions", &completion(prompt)).await;
    assert_eq!(status, 200, "retried on another worker: {body}");
    let workers: serde_json::Value = serde_json::from_str(&s.get("/workers").await).unwrap();
    assert_eq!(workers[first]["healthy"], false);
    s.mocks[first].fail.store(false, Ordering::SeqCst);
    let mut healthy = false;
    for _ in 0..100 {
        let w: serde_json::Value = serde_json::from_str(&s.get("/workers").await).unwrap();
        if w[first]["healthy"] == true {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(healthy, "the probe marked the worker healthy again");
    s.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_skipped_and_requests_still_succeed() {
    // A worker whose port refuses connections (its listener is gone).
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (live, mock) = start_mock().await;
    let state = server::State::new(&[dead.clone(), live], "").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::serve(listener, state.clone()));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    // Prompts that share no prefix are misses, spread at random over idle workers: over 64 of
    // them the dead worker is picked (and refused) with probability 1 - 2^-64.
    for i in 0..64 {
        let prompt = format!("{}{i} unrelated", char::from(b'a' + (i % 26) as u8));
        let req = Request::post(format!("{proxy}/v1/completions"))
            .body(Full::new(Bytes::from(completion(&prompt))))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
    }
    assert_eq!(
        mock.received.lock().unwrap().len(),
        64,
        "every request reached the live one"
    );
    assert!(
        !cache_aware_router::Worker::is_healthy(&*state.workers[0]),
        "the dead one is marked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_route_by_their_model_field() {
    let (a, mock_a) = start_mock().await;
    let (b, mock_b) = start_mock().await;
    let state = server::State::new(&[format!("{a}=llama"), format!("{b}=qwen")], "llama").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::serve(listener, state));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for (model, n) in [("qwen", 3), ("llama", 2), ("unknown-model", 1)] {
        for i in 0..n {
            let body = serde_json::json!({ "model": model, "prompt": format!("{model} {i}") });
            let req = Request::post(format!("{proxy}/v1/completions"))
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            assert_eq!(client.request(req).await.unwrap().status(), 200);
        }
    }
    // qwen's 3 went to b; llama's 2 and the unknown model's 1 (the default, llama) to a.
    assert_eq!(mock_b.received.lock().unwrap().len(), 3);
    assert_eq!(mock_a.received.lock().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_400_with_a_reason_and_metrics_count() {
    let s = setup().await;
    for (path, body, reason) in [
        ("/v1/completions", "", "no body"),
        ("/v1/completions", "{not json", "not JSON"),
        ("/v1/completions", "{\"model\": \"m\"}", "no prompt"),
        ("/v1/chat/completions", "{\"messages\": 3}", "messages"),
        ("/generate", "[]", "no text"),
    ] {
        let (status, text) = s.post(path, body).await;
        assert_eq!(status, 400, "{path} {body:?}");
        let err: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(err["error"].as_str().unwrap().contains(reason), "{text}");
    }
    for i in 0..5 {
        s.post("/v1/completions", &completion(&format!("counted {i}")))
            .await;
    }
    s.post("/v1/completions", &completion("counted 0")).await;
    let metrics = s.get("/metrics").await;
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    assert_eq!(
        value("router_cache_hits_total") + value("router_cache_misses_total"),
        6
    );
    assert!(value("router_cache_hits_total") >= 1);
    let routed: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("router_worker_routed_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(routed, 6, "{metrics}");
    assert_eq!(
        value("router_routes_total"),
        6,
        "bad requests are refused before routing"
    );
}

/// One vLLM KV event message: topic, sequence number, `[ts, [["BlockStored", keys, nil, [],
/// 4, nil, "GPU"]]]` with the block hashes as integers (vLLM with
/// VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1).
fn stored_message(seq: u64, keys: &[u64]) -> zeromq::ZmqMessage {
    let mut p = vec![0x92, 0xcb];
    p.extend(1.0f64.to_be_bytes());
    p.extend([0x91, 0x97, 0xab]);
    p.extend(b"BlockStored");
    p.push(0x90 | keys.len() as u8);
    for k in keys {
        p.push(0xcf);
        p.extend(k.to_be_bytes());
    }
    p.extend([0xc0, 0x90, 0x04, 0xc0, 0xa3]);
    p.extend(b"GPU");
    message(seq, p)
}

fn message(seq: u64, payload: Vec<u8>) -> zeromq::ZmqMessage {
    let frames = vec![
        Bytes::new(),
        Bytes::from(seq.to_be_bytes().to_vec()),
        Bytes::from(payload),
    ];
    zeromq::ZmqMessage::try_from(frames).unwrap()
}

/// The proxy subscribes to stand-in vLLM publishers on loopback, one per worker; each says its
/// worker holds the blocks of a different prompt. Every prompt then goes to the worker whose
/// events hold it (by luck: 1 in 64), bad frames are counted and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_follow_the_workers_kv_events() {
    use cache_aware_router::{BlockHasher, VllmSha256Cbor};
    use zeromq::{Socket, SocketSend};
    const WORKERS: usize = 4;
    let mut publishers = Vec::new();
    let mut endpoints = Vec::new();
    for _ in 0..WORKERS {
        let mut p = zeromq::PubSocket::new();
        let endpoint = p.bind("tcp://127.0.0.1:0").await.unwrap();
        endpoints.push(endpoint.to_string());
        publishers.push(p);
    }
    let tokenizer =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer.json");
    let s = setup_with(WORKERS, |urls| server::Routing {
        tokenizer: Some(tokenizer),
        block_size: 4,
        hash_seed: "0".into(),
        kv_events: urls
            .iter()
            .zip(&endpoints)
            .map(|(u, e)| format!("{u}={e}"))
            .collect(),
        ..Default::default()
    })
    .await;
    // Prompt k: 16 words, 4 blocks of 4 tokens ("t{i}" is token i + 1), held by worker k + 1.
    let hasher = VllmSha256Cbor::new(4, "0");
    let prompts: Vec<(String, Vec<u64>)> = (0..3)
        .map(|k| {
            let words: Vec<usize> = (0..16).map(|i| (k * 16 + i) % 97).collect();
            let text = words
                .iter()
                .map(|w| format!("t{w}"))
                .collect::<Vec<_>>()
                .join(" ");
            let ids: Vec<u32> = words.iter().map(|w| *w as u32 + 1).collect();
            (text, hasher.block_keys(&ids))
        })
        .collect();
    // Publish until each stream has applied an event (a SUB socket joins a little late).
    let mut seq = [0u64; WORKERS];
    for _round in 0..100 {
        for (k, (_, keys)) in prompts.iter().enumerate() {
            let w = k + 1;
            publishers[w]
                .send(stored_message(seq[w], keys))
                .await
                .unwrap();
            seq[w] += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let applied = |w: usize| s.state.streams[w].stats.events.load(Ordering::Relaxed);
        if (1..=3).all(|w| applied(w) > 0) {
            break;
        }
    }
    for w in 1..=3 {
        assert!(
            s.state.streams[w].stats.events.load(Ordering::Relaxed) > 0,
            "stream {w} applied nothing"
        );
    }
    for (k, (text, _)) in prompts.iter().enumerate() {
        let (status, _) = s
            .post("/v1/completions", &completion(&format!("{text} t98 t99")))
            .await;
        assert_eq!(status, 200);
        let got: Vec<usize> = s
            .mocks
            .iter()
            .map(|m| m.received.lock().unwrap().len())
            .collect();
        assert_eq!(
            got[k + 1],
            1,
            "prompt {k} went by its events to worker {}: {got:?}",
            k + 1
        );
    }
    // A frame that does not decode is counted, the worker reset, and the stream goes on.
    let errors_before = s.state.streams[1].stats.errors.load(Ordering::Relaxed);
    publishers[1]
        .send(message(seq[1], vec![0x92, 0xcb, 1]))
        .await
        .unwrap();
    seq[1] += 1;
    for _ in 0..100 {
        if s.state.streams[1].stats.errors.load(Ordering::Relaxed) > errors_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(s.state.streams[1].stats.errors.load(Ordering::Relaxed) > errors_before);
    let metrics = s.get("/metrics").await;
    for name in [
        "router_kv_events_total",
        "router_kv_event_errors_total",
        "router_kv_event_resets_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let applied = s.state.streams[1].stats.events.load(Ordering::Relaxed);
    publishers[1]
        .send(stored_message(seq[1], &prompts[0].1))
        .await
        .unwrap();
    for _ in 0..100 {
        if s.state.streams[1].stats.events.load(Ordering::Relaxed) > applied {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        s.state.streams[1].stats.events.load(Ordering::Relaxed) > applied,
        "the stream went on after a bad frame"
    );
}

#[test]
fn kv_events_without_a_tokenizer_or_for_an_unknown_worker_are_refused() {
    let urls = vec!["http://127.0.0.1:1".to_string()];
    let events = |spec: &str| server::Routing {
        kv_events: vec![spec.to_string()],
        ..Default::default()
    };
    let err =
        server::State::with_routing(&urls, "", events("http://127.0.0.1:1=tcp://127.0.0.1:2"))
            .err()
            .unwrap();
    assert!(err.contains("--tokenizer"), "{err}");
    let tokenizer =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer.json");
    let with_tokenizer = |spec: &str| server::Routing {
        tokenizer: Some(tokenizer.clone()),
        block_size: 4,
        ..events(spec)
    };
    for (spec, why) in [
        (
            "http://other:1=tcp://127.0.0.1:2",
            "not one of the --worker",
        ),
        ("http://127.0.0.1:1", "WORKER_URL=tcp://"),
        ("http://127.0.0.1:1=udp://x:1", "tcp://HOST:PORT"),
    ] {
        let err = server::State::with_routing(&urls, "", with_tokenizer(spec))
            .err()
            .unwrap();
        assert!(err.contains(why), "{spec}: {err}");
    }
    let bad = server::Routing {
        tokenizer: Some("/nonexistent/tokenizer.json".into()),
        ..Default::default()
    };
    let err = server::State::with_routing(&urls, "", bad).err().unwrap();
    assert!(err.contains("--tokenizer"), "{err}");
}

/// The example proxy's binary, built beside this test (`cargo test` builds the examples).
fn proxy_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin = profile.join("examples").join("proxy");
    assert!(
        bin.exists(),
        "{} is missing: `cargo build --example proxy` (`cargo test` builds it)",
        bin.display()
    );
    bin
}

/// One proxy replica, a process of its own, killed on drop.
struct Replica {
    child: std::process::Child,
    url: String,
}

impl Replica {
    fn start(name: &str, port: u16, nats: &str, workers: &[String]) -> Self {
        Self::start_with(name, port, nats, workers, &[])
    }

    /// With `extra` arguments.
    fn start_with(name: &str, port: u16, nats: &str, workers: &[String], extra: &[&str]) -> Self {
        let mut cmd = std::process::Command::new(proxy_binary());
        cmd.args(extra);
        cmd.args(["--listen", &format!("127.0.0.1:{port}")]).args([
            "--replica-sync",
            nats,
            "--replica-name",
            name,
        ]);
        for w in workers {
            cmd.args(["--worker", w]);
        }
        // Its stderr goes to a file, which a pipe nobody reads could not fill.
        let log = std::env::temp_dir().join(format!("router-replica-{port}.log"));
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                let err = std::fs::read_to_string(&log).unwrap_or_default();
                panic!(
                    "replica {name} exited ({status}): {err}\n(a filtered `cargo test` does not \
                     rebuild the example: `cargo build --release --example proxy`)"
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "replica {name} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Replica {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn post_to(client: &HttpClient, proxy: &str, prompt: &str) -> u16 {
    let req = Request::post(format!("{proxy}/v1/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(completion(prompt))))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("bounded")
        .unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

/// A counter or gauge from a replica's `/metrics` (None if absent).
async fn metric(client: &HttpClient, proxy: &str, name: &str) -> Option<u64> {
    let req = Request::get(format!("{proxy}/metrics"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

/// Waits (bounded) until `metric` of `proxy` reaches `at_least`; how long it took.
async fn wait_metric(
    client: &HttpClient,
    proxy: &str,
    name: &str,
    at_least: u64,
    limit: Duration,
) -> Duration {
    let start = std::time::Instant::now();
    while metric(client, proxy, name)
        .await
        .is_none_or(|v| v < at_least)
    {
        assert!(
            start.elapsed() < limit,
            "{proxy} {name} < {at_least} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

/// Three proxy replicas, each a process of its own (the example binary), in front of the same
/// mock workers, syncing through a real NATS JetStream server started for the test: a prefix
/// sent through replica A goes to the same worker through B and C; a replica restarted under
/// its name warms from the stream and routes the old prefix home; with NATS stopped every
/// request still succeeds and the dropped-event count rises; after NATS returns the replicas
/// converge again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_processes_share_what_they_route_through_nats() {
    let mut nats = replica_sync::NatsServer::start();
    let mut urls = Vec::new();
    let mut mocks = Vec::new();
    for _ in 0..3 {
        let (url, mock) = start_mock().await;
        urls.push(url);
        mocks.push(mock);
    }
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let received = || -> Vec<usize> {
        mocks
            .iter()
            .map(|m| m.received.lock().unwrap().len())
            .collect()
    };
    let ports = [free_port(), free_port(), free_port()];
    let a = Replica::start("a", ports[0], &nats.url(), &urls);
    let b = Replica::start("b", ports[1], &nats.url(), &urls);
    let mut c = Replica::start("c", ports[2], &nats.url(), &urls);
    for r in [&a, &b, &c] {
        wait_metric(
            &client,
            &r.url,
            "router_sync_warm_milliseconds",
            0,
            Duration::from_secs(10),
        )
        .await;
    }

    // A prefix through A; B and C learn where it went and send its next turns there.
    let system = "You are a careful assistant who answers in one short paragraph. ".repeat(8);
    assert_eq!(post_to(&client, &a.url, &format!("{system}Q0")).await, 200);
    let home = received().iter().position(|&n| n == 1).unwrap();
    for r in [&b, &c] {
        let took = wait_metric(
            &client,
            &r.url,
            "router_sync_applied_routed_total",
            1,
            Duration::from_secs(5),
        )
        .await;
        println!("{} applied A's decision {took:?} after its response", r.url);
        assert!(took < Duration::from_millis(100), "converged in {took:?}");
    }
    assert_eq!(post_to(&client, &b.url, &format!("{system}Q1")).await, 200);
    assert_eq!(post_to(&client, &c.url, &format!("{system}Q2")).await, 200);
    assert_eq!(received()[home], 3, "{:?}", received());

    // C restarts under its name: it replays the stream (its own past events included) before
    // it is warm, and routes the old prefix home.
    drop(c);
    c = Replica::start("c", ports[2], &nats.url(), &urls);
    wait_metric(
        &client,
        &c.url,
        "router_sync_warm_milliseconds",
        0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(post_to(&client, &c.url, &format!("{system}Q3")).await, 200);
    assert_eq!(
        received()[home],
        4,
        "the restarted replica routes the old prefix home"
    );

    // NATS goes away: every request still succeeds; A counts what it could not publish.
    nats.stop();
    for i in 0..20 {
        let prompt = format!("while NATS is down {i} {}", "x".repeat(80));
        assert_eq!(post_to(&client, &a.url, &prompt).await, 200);
    }
    wait_metric(
        &client,
        &a.url,
        "router_sync_dropped_total",
        1,
        Duration::from_secs(15),
    )
    .await;

    // NATS returns: the replicas reconnect, and a new prefix through A reaches B again.
    nats.restart();
    // What A and C queued while NATS was down may still be published now. Once each has
    // published three newer work snapshots (queues are FIFO), all of it is in the stream, and
    // B applies it within milliseconds: from then on B's routed count rises only for R*.
    for r in [&a, &c] {
        let published = metric(&client, &r.url, "router_sync_published_total")
            .await
            .unwrap_or(0);
        wait_metric(
            &client,
            &r.url,
            "router_sync_published_total",
            published + 3,
            Duration::from_secs(15),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = metric(&client, &b.url, "router_sync_applied_routed_total")
        .await
        .unwrap_or(0);
    let other = "A different system prompt about another topic entirely. ".repeat(8);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    while metric(&client, &b.url, "router_sync_applied_routed_total")
        .await
        .unwrap_or(0)
        <= before
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no convergence after NATS returned"
        );
        assert_eq!(
            post_to(&client, &a.url, &format!("{other}R{sent}")).await,
            200
        );
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counts = received();
    assert_eq!(
        post_to(&client, &b.url, &format!("{other}R-final")).await,
        200
    );
    let after = received();
    let went: Vec<usize> = (0..3).filter(|&i| after[i] > counts[i]).collect();
    let homes: Vec<usize> = mocks
        .iter()
        .enumerate()
        .filter(|(_, m)| m.received.lock().unwrap().iter().any(|r| r.contains("R0")))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(went, homes, "B sends the new prefix where A did");
}

/// A replica that cannot reach NATS at start waits `--warm-secs` for the replay, then serves
/// from its own decisions: requests sent meanwhile wait and succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_nats_serves_after_its_warm_wait() {
    let (url, mock) = start_mock().await;
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let port = free_port();
    let started = std::time::Instant::now();
    let r = Replica::start_with("lone", port, &nowhere, &[url], &["--warm-secs", "1"]);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    assert_eq!(post_to(&client, &r.url, "hello without NATS").await, 200);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "served before the warm wait ended: {:?}",
        started.elapsed()
    );
    assert_eq!(mock.received.lock().unwrap().len(), 1);
    assert_eq!(
        metric(&client, &r.url, "router_sync_warm_milliseconds").await,
        None
    );
}
