//! `state-pack serve` on the real default model: the real server on a loopback port, driven
//! over HTTP by a real client through the whole protocol and every error class; a full queue;
//! the ledger verified after a graceful shutdown. (The 3,000-request fuzz, which is not about
//! the model, runs on the scripted engine in `server_scripted.rs`.)

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
