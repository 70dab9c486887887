//! `state-pack serve` on the real default model: the real server on a loopback port, driven
//! over HTTP by a real client through the whole protocol and every error class; a full queue;
//! thousands of mutated requests; the ledger verified after a graceful shutdown.

mod common;

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use state_pack::ledger::{verify_file, PublicKey, ReceiptHash, ReceiptProof, VerifyOptions};
use state_pack::server::{parse_tokens, Auth, Server, ServerConfig, Shutdown};
use state_pack::{StatePack, Store};

const TOKEN: &str = "test-token-0123456789abcdef";

struct Running {
    url: String,
    http: Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<Shutdown, state_pack::server::ServerError>>,
    db: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start(config: ServerConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("serve.db");
        let pack = Arc::new(StatePack::new(
            common::engine().await,
            Store::open(&db, common::key()).unwrap(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(Server::new(pack, config).serve(listener, async {
            let _ = rx.await;
        }));
        Self {
            url,
            http: Client::new(),
            stop: Some(tx),
            task,
            db,
            _dir: dir,
        }
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .req(Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.req(Method::GET, path).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap())
    }

    /// Graceful shutdown; then the ledger must verify.
    async fn stop_and_verify(mut self) -> Shutdown {
        let _ = self.stop.take().unwrap().send(());
        let done = self.task.await.unwrap().unwrap();
        let report = verify_file(&self.db, &VerifyOptions::default()).unwrap();
        assert!(report.ok(), "verify failed: {:?}", report.failures);
        assert_eq!(
            report.receipts, done.receipts,
            "final checkpoint covers the log"
        );
        done
    }
}

fn config() -> ServerConfig {
    ServerConfig {
        auth: Auth::Tokens(parse_tokens(&format!("tester:{TOKEN}")).unwrap()),
        max_body_bytes: 64 * 1024,
        max_delta_tokens: 512,
        max_new_tokens: 16,
        ..ServerConfig::default()
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no code>")
}

fn base() -> String {
    format!(
        "{}{}",
        common::BASE,
        "<|im_start|>user\nWho signs the notice?<|im_end|>\n<|im_start|>assistant\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_protocol_over_http() {
    let s = Running::start(config()).await;

    // 100 clients create the same base at once: one prefill, one state.
    let creates: Vec<_> = (0..100)
        .map(|_| {
            let (http, url) = (s.http.clone(), s.url.clone());
            tokio::spawn(async move {
                http.post(format!("{url}/states"))
                    .bearer_auth(TOKEN)
                    .json(&json!({"base_text": base()}))
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for c in creates {
        answers.push(c.await.unwrap());
    }
    let hash = answers[0]["state_hash"].as_str().unwrap().to_string();
    assert!(
        answers.iter().all(|a| a["state_hash"] == hash.as_str()),
        "one state"
    );
    let prefills: Vec<u64> = answers
        .iter()
        .map(|a| a["tokens"]["prefilled"].as_u64().unwrap())
        .filter(|&p| p > 0)
        .collect();
    assert_eq!(prefills.len(), 1, "the base is prefilled exactly once");
    assert_eq!(prefills[0], answers[0]["tokens"]["state"].as_u64().unwrap());

    // Infer, then the same request again: answered from the store.
    let request =
        json!({"state_hash": hash, "delta_text": "Answer:", "sampling": {"max_tokens": 6}});
    let (st, first) = s.post("/infer", request.clone()).await;
    assert_eq!(st, StatusCode::OK, "{first}");
    assert!(first["engine_called"].as_bool().unwrap());
    assert!(first["tokens"]["generated"].as_u64().unwrap() >= 1);
    assert_eq!(first["replay_of"], Value::Null);
    let (st, again) = s.post("/infer", request).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(again["new_state_hash"], first["new_state_hash"]);
    assert_eq!(again["output"], first["output"]);
    assert_eq!(again["engine_called"], false);
    assert_eq!(again["replay_of"], first["receipt"]["seq"]);
    for k in ["prefilled", "reused", "generated"] {
        assert_eq!(again["tokens"][k], 0, "a replay claims no engine work");
    }
    assert!(again["receipt"]["body"]
        .as_str()
        .unwrap()
        .contains(&format!("\"replay_of\":{}", first["receipt"]["seq"])));

    // Merge several turns, then compact them away.
    let mut state = first["new_state_hash"].as_str().unwrap().to_string();
    for i in 0..4 {
        let (st, m) = s
            .post(
                "/merge",
                json!({"state_hash": state, "delta_text": format!("<|im_end|>\n<|im_start|>user\nNote {i}.<|im_end|>\n<|im_start|>assistant\nNoted {i}.")}),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{m}");
        assert_eq!(m["tokens"]["generated"], 0);
        assert!(
            m["tokens"]["reused"].as_u64().unwrap() > 0,
            "the parent was hot: {m}"
        );
        state = m["new_state_hash"].as_str().unwrap().to_string();
    }
    let (st, info) = s.get(&format!("/states/{state}")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(info["hot"], true);
    let long = info["tokens"].as_u64().unwrap();
    assert!(info["kv_bytes"].as_u64().unwrap() > long);
    let (st, c) = s
        .post(
            "/compact",
            json!({"state_hash": state, "policy": {"keep_first": 2, "keep_last": 2}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{c}");
    assert_eq!(c["tokens_before"].as_u64().unwrap(), long);
    assert!(c["tokens"]["state"].as_u64().unwrap() < long, "{c}");
    assert!(c["steps_folded"].as_u64().unwrap() >= 4, "{c}");
    assert!(c["receipt"]["body"]
        .as_str()
        .unwrap()
        .contains("fold_turns"));
    let (st, nothing) = s
        .post(
            "/compact",
            json!({"state_hash": hash, "policy": {"keep_first": 2, "keep_last": 2}}),
        )
        .await;
    assert_eq!(
        (st, code(&nothing)),
        (StatusCode::UNPROCESSABLE_ENTITY, "nothing_to_compact")
    );

    // Auditors: a receipt checks against its hash and the log's key; a proof checks offline.
    let seq = first["receipt"]["seq"].as_u64().unwrap();
    let (st, r) = s.get(&format!("/receipts/{seq}")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(r, first["receipt"]);
    let hash_of_body = ReceiptHash::of(r["body"].as_str().unwrap().as_bytes());
    assert_eq!(hash_of_body.to_hex(), r["hash"].as_str().unwrap());
    let key = PublicKey::from_hex(&common::key().public_key().to_hex()).unwrap();
    let sig = hex::decode(r["signature"].as_str().unwrap()).unwrap();
    assert!(
        key.verify(hash_of_body.as_bytes(), &sig),
        "signature verifies"
    );
    let (st, proof) = s.get(&format!("/receipts/{seq}/proof")).await;
    assert_eq!(st, StatusCode::OK);
    let proof: ReceiptProof = serde_json::from_value(proof).unwrap();
    let checked = proof.check(&[key]).unwrap();
    assert_eq!(checked.seq, seq);
    let (st, cp) = s.get("/checkpoint").await;
    assert_eq!(st, StatusCode::OK);
    assert!(cp["body"].as_str().unwrap().contains("\"size\""));

    // Health, metrics, OpenAPI.
    let (st, h) = s.get("/health").await;
    assert_eq!(st, StatusCode::OK);
    assert!(h["states_hot"].as_u64().unwrap() >= 1);
    assert_eq!(h["queue"]["running"], 0);
    let metrics = s
        .req(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("state_pack_replays_total 1"), "{metrics}");
    assert!(metrics.contains("state_pack_http_requests_total{route=\"/infer\",status=\"200\"} 2"));
    assert!(metrics.contains(
        "state_pack_http_request_duration_seconds_bucket{route=\"/states\",le=\"+Inf\"} 100"
    ));
    let (st, doc) = s.get("/openapi.json").await;
    assert_eq!(st, StatusCode::OK);
    for p in [
        "/states",
        "/infer",
        "/merge",
        "/compact",
        "/receipts/{seq}/proof",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} documented");
    }
    assert!(doc["components"]["schemas"]["InferRequest"].is_object());

    // Every error class: JSON with a stable code.
    let unknown = "0".repeat(64);
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            s.req(Method::POST, "/infer")
                .header("content-type", "application/json")
                .body("{\"state_hash\": "),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            s.req(Method::POST, "/infer")
                .json(&json!({"state_hash": 7, "delta_text": "x"})),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            s.req(Method::POST, "/infer")
                .json(&json!({"state_hash": hash, "delta_text": "x", "extra": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            s.req(Method::POST, "/infer")
                .json(&json!({"state_hash": "abc", "delta_text": "x"})),
            StatusCode::BAD_REQUEST,
            "invalid_hash",
        ),
        (
            s.req(Method::POST, "/infer")
                .json(&json!({"state_hash": hash.to_uppercase(), "delta_text": "x"})),
            StatusCode::BAD_REQUEST,
            "invalid_hash",
        ),
        (
            s.req(Method::POST, "/infer")
                .json(&json!({"state_hash": unknown, "delta_text": "x"})),
            StatusCode::NOT_FOUND,
            "unknown_state",
        ),
        (
            s.req(Method::GET, &format!("/states/{unknown}")),
            StatusCode::NOT_FOUND,
            "unknown_state",
        ),
        (
            s.req(Method::GET, "/states/zz"),
            StatusCode::BAD_REQUEST,
            "invalid_hash",
        ),
        (
            s.req(Method::POST, "/infer")
                .json(&json!({"state_hash": hash, "delta_text": ""})),
            StatusCode::BAD_REQUEST,
            "empty_text",
        ),
        (
            s.req(Method::POST, "/infer").json(
                &json!({"state_hash": hash, "delta_text": "x", "sampling": {"max_tokens": 17}}),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_parameters",
        ),
        (
            s.req(Method::POST, "/infer").json(
                &json!({"state_hash": hash, "delta_text": "x", "sampling": {"temperature": -1.0}}),
            ),
            StatusCode::BAD_REQUEST,
            "invalid_parameters",
        ),
        (
            s.req(Method::POST, "/states")
                .json(&json!({"base_text": "a".repeat(70 * 1024)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            s.req(Method::POST, "/merge")
                .json(&json!({"state_hash": hash, "delta_text": "word ".repeat(600)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            s.req(Method::POST, "/states")
                .body("{\"base_text\": \"x\"}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            s.req(Method::GET, "/infer"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            s.req(Method::GET, "/nowhere"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            s.req(Method::GET, "/receipts/999999"),
            StatusCode::NOT_FOUND,
            "unknown_receipt",
        ),
        (
            s.req(Method::GET, "/receipts/1x"),
            StatusCode::BAD_REQUEST,
            "invalid_parameters",
        ),
        (
            s.http
                .post(format!("{}/states", s.url))
                .json(&json!({"base_text": "x"})),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            s.http
                .get(format!("{}/receipts/0", s.url))
                .bearer_auth("wrong-token-0123456789abcdef"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
    ];
    for (i, (req, status, want)) in cases.into_iter().enumerate() {
        let r = req.send().await.unwrap();
        let got = r.status();
        let is_json = r
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("application/json"));
        if got == StatusCode::UNAUTHORIZED {
            assert!(r.headers().contains_key("www-authenticate"));
        }
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(is_json, "case {i}: not JSON");
        assert_eq!((got, code(&body)), (status, want), "case {i}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    // /health is open.
    let open = s
        .http
        .get(format!("{}/health", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::OK);

    let done = s.stop_and_verify().await;
    assert!(done.receipts > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after_and_slow_work_times_out() {
    let s = Running::start(ServerConfig {
        queue_depth: 0,
        max_new_tokens: 64,
        ..config()
    })
    .await;
    let (_, b) = s.post("/states", json!({"base_text": base()})).await;
    let hash = b["state_hash"].as_str().unwrap().to_string();
    let busy = {
        let req = s.req(Method::POST, "/infer").json(
            &json!({"state_hash": hash, "delta_text": "Write a long answer:", "sampling": {"max_tokens": 64}}),
        );
        tokio::spawn(async move { req.send().await.unwrap().status() })
    };
    // Wait until the engine is busy.
    for _ in 0..500 {
        let (_, h) = s.get("/health").await;
        if h["queue"]["running"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = s
        .req(Method::POST, "/infer")
        .json(&json!({"state_hash": hash, "delta_text": "Other:", "sampling": {"max_tokens": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(code(&body), "overloaded");
    assert_eq!(
        busy.await.unwrap(),
        StatusCode::OK,
        "the running request finishes"
    );
    s.stop_and_verify().await;

    let slow = Running::start(ServerConfig {
        engine_timeout: Duration::from_millis(1),
        ..config()
    })
    .await;
    let (st, b) = slow.post("/states", json!({"base_text": base()})).await;
    assert_eq!((st, code(&b)), (StatusCode::GATEWAY_TIMEOUT, "timeout"));
    slow.stop_and_verify().await;
}

/// A tiny deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

fn weird_value(rng: &mut Rng, hash: &str) -> Value {
    match rng.below(14) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-1),
        3 => json!(u64::MAX),
        4 => json!(1e308),
        5 => json!([]),
        6 => json!({}),
        7 => json!(""),
        8 => json!("\u{0}\u{ffff}<|im_start|>"),
        9 => json!(hash.to_uppercase()),
        10 => json!(format!("{}g", &hash[..63])),
        11 => json!(&hash[..32]),
        12 => json!("x".repeat(rng.below(3000))),
        _ => json!(hash),
    }
}

/// Mutates a valid request: drops, adds or retypes fields, nests sampling oddly.
fn mutate(rng: &mut Rng, mut body: Value, hash: &str) -> Value {
    let Value::Object(map) = &mut body else {
        return body;
    };
    for _ in 0..=rng.below(3) {
        let keys: Vec<String> = map.keys().cloned().collect();
        match rng.below(6) {
            0 if !keys.is_empty() => {
                map.remove(rng.pick(&keys).as_str());
            }
            1 if !keys.is_empty() => {
                let k = rng.pick(&keys).clone();
                map.insert(k, weird_value(rng, hash));
            }
            2 => {
                map.insert(
                    "sampling".into(),
                    json!({
                        "max_tokens": *rng.pick(&[json!(0), json!(1), json!(4), json!(100000), json!(-3), json!("8"), json!(null)]),
                        "temperature": *rng.pick(&[json!(0.0), json!(0.7), json!(5.0), json!(-0.1), json!(null), json!("hot")]),
                        "top_p": *rng.pick(&[json!(null), json!(0.0), json!(0.9), json!(1.5)]),
                        "seed": *rng.pick(&[json!(null), json!(7), json!(-7)]),
                    }),
                );
            }
            3 => {
                map.insert("policy".into(), json!({"keep_first": rng.below(4), "keep_last": rng.below(4), "summary_tokens": *rng.pick(&[0, 1, 9999])}));
            }
            4 => {
                map.insert("unexpected".into(), weird_value(rng, hash));
            }
            _ => {
                map.insert(
                    "delta_text".into(),
                    json!(format!("<|im_start|>user\nq{}<|im_end|>\n", rng.below(5))),
                );
            }
        }
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_mutated_requests_never_crash_the_server_or_get_5xx() {
    let s = Running::start(ServerConfig {
        max_new_tokens: 2,
        max_delta_tokens: 64,
        ..config()
    })
    .await;
    let (_, b) = s.post("/states", json!({"base_text": base()})).await;
    let hash = b["state_hash"].as_str().unwrap().to_string();
    let mut rng = Rng(0x5eed_0f5a_7e9a_c6d1);
    let paths = [
        "/states",
        "/merge",
        "/infer",
        "/compact",
        "/health",
        "/checkpoint",
        "/metrics",
        "/receipts/0",
        "/receipts/0/proof",
        "/receipts/18446744073709551615",
        "/receipts/-",
        "/states/",
        "/states/..%2f..%2fetc%2fpasswd",
        "/../../etc/passwd",
        "/openapi.json",
    ];
    let (mut statuses, mut engine_runs) = (std::collections::BTreeMap::new(), 0);
    let n = 3000;
    for i in 0..n {
        let path = if rng.below(3) == 0 {
            let upper = hash.to_uppercase();
            let odd = format!("{}g", &hash[..63]);
            let zeros = "0".repeat(64);
            let segment = rng
                .pick(&[hash.as_str(), &upper, &odd, &hash[..32], "%00", "0", &zeros])
                .to_string();
            format!("/states/{segment}")
        } else {
            rng.pick(&paths).to_string()
        };
        let valid = match path.as_str() {
            "/states" => json!({"base_text": format!("{}{}", common::BASE, rng.below(4))}),
            "/compact" => json!({"state_hash": hash}),
            _ => json!({"state_hash": hash, "delta_text": "Hm."}),
        };
        let body = mutate(&mut rng, valid, &hash);
        // Mostly the endpoint's own method, so that most requests reach the handlers.
        let own = if ["/states", "/merge", "/infer", "/compact"].contains(&path.as_str()) {
            Method::POST
        } else {
            Method::GET
        };
        let method = match rng.below(10) {
            0 => rng
                .pick(&[Method::GET, Method::POST, Method::PUT, Method::DELETE])
                .clone(),
            _ => own,
        };
        let mut req = s.http.request(method, format!("{}{path}", s.url));
        req = match rng.below(30) {
            0 => req,
            1 => req.bearer_auth("nope"),
            2 => req.header("authorization", "Basic Zm9vOmJhcg=="),
            _ => req.bearer_auth(TOKEN),
        };
        req = match rng.below(10) {
            0 => req
                .header("content-type", "text/plain")
                .body(body.to_string()),
            1 => {
                // Cut the JSON short, or send bytes that are not UTF-8.
                let text = body.to_string();
                let cut = rng.below(text.len().max(1));
                req.header("content-type", "application/json")
                    .body(text.as_bytes()[..cut].to_vec())
            }
            2 => req
                .header("content-type", "application/json")
                .body(vec![0xff, 0xfe, b'{', 0x80]),
            _ => req.json(&body),
        };
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i}: the server dropped the connection: {e}"));
        let status = r.status();
        let text = r.text().await.unwrap();
        *statuses.entry(status.as_u16()).or_insert(0usize) += 1;
        assert!(
            !status.is_server_error(),
            "request {i} to {path} got {status}: {text}"
        );
        if status.is_client_error() {
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("request {i}: error is not JSON: {text}"));
            assert!(v["error"]["code"].is_string(), "request {i}: {text}");
        }
        if status.is_success() && text.contains("\"engine_called\":true") {
            engine_runs += 1;
        }
    }
    eprintln!("{n} mutated requests: statuses {statuses:?}; {engine_runs} ran the engine");
    let (st, _) = s.get("/health").await;
    assert_eq!(st, StatusCode::OK, "the server is still up");
    assert!(
        statuses.keys().any(|&k| k == 200),
        "some mutations stay valid"
    );
    assert!(
        statuses.keys().filter(|&&k| k >= 400).count() >= 5,
        "many error classes hit"
    );
    s.stop_and_verify().await;
}
