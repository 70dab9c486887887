//! Every HTTP error class of the server, through `Router::oneshot` on the scripted engine
//! (feature `testing`): status, stable `code`, `Retry-After`, and that a refused or failed
//! request writes nothing. Fast and offline; `server_real_model.rs` runs the real model over
//! real sockets.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use common::fuzz::{mutate, Rng};
use common::http::{expect_error, request, send};
use serde_json::{json, Value};
use state_pack::engine::scripted::{Fault, Reply, ScriptedEngine, ScriptedOptions};
use state_pack::ledger::{Signer, VerifyOptions};
use state_pack::server::error::ErrorCode;
use state_pack::server::{parse_tokens, Auth, Server, ServerConfig};
use state_pack::StatePack;
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789abcdef";
const BASE: &str = "<|im_start|>system\nYou are terse.<|im_end|>\n";

struct Fixture {
    router: Router,
    engine: Arc<ScriptedEngine>,
    pack: Arc<StatePack>,
}

fn signer() -> Signer {
    Signer::from_seed([4; 32])
}

fn fixture(options: ScriptedOptions, config: ServerConfig) -> Fixture {
    fixture_at(None, options, config)
}

/// A server over a pack on the scripted engine, its store at `db` or in memory.
fn fixture_at(db: Option<&Path>, options: ScriptedOptions, config: ServerConfig) -> Fixture {
    let engine = Arc::new(ScriptedEngine::new(Reply::Fixed("ok".into()), options));
    let store = match db {
        Some(db) => common::db::open(db, signer()),
        None => common::db::throwaway(signer()),
    };
    let pack = Arc::new(StatePack::new(engine.clone(), store));
    let router = Server::new(pack.clone(), config).router();
    Fixture {
        router,
        engine,
        pack,
    }
}

fn default_fixture() -> Fixture {
    fixture(ScriptedOptions::default(), ServerConfig::default())
}

async fn create(f: &Fixture) -> String {
    let (status, _, body) = send(
        &f.router,
        request(
            Method::POST,
            "/states",
            Some(json!({"base_text": "a base"})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["state_hash"].as_str().unwrap().to_string()
}

fn receipts(f: &Fixture) -> u64 {
    f.pack.with_store(|s| s.receipt_count().unwrap())
}

#[tokio::test]
async fn bad_requests_get_their_code_and_write_nothing() {
    let f = default_fixture();
    let state = create(&f).await;
    let before = receipts(&f);
    let calls = f.engine.calls();
    let r = &f.router;
    let post = |uri: &str, v: Value| request(Method::POST, uri, Some(v));

    expect_error(
        r,
        post("/merge", json!({"state_hash": "xyz", "delta_text": "d"})),
        StatusCode::BAD_REQUEST,
        "invalid_hash",
    )
    .await;
    let unknown = "ab".repeat(32);
    expect_error(
        r,
        post("/merge", json!({"state_hash": unknown, "delta_text": "d"})),
        StatusCode::NOT_FOUND,
        "unknown_state",
    )
    .await;
    expect_error(
        r,
        post("/merge", json!({"state_hash": state, "delta_text": ""})),
        StatusCode::BAD_REQUEST,
        "empty_text",
    )
    .await;
    expect_error(
        r,
        post("/states", json!({"base_text": ""})),
        StatusCode::BAD_REQUEST,
        "empty_text",
    )
    .await;
    expect_error(
        r,
        post(
            "/infer",
            json!({"state_hash": state, "delta_text": "d", "sampling": {"max_tokens": 0}}),
        ),
        StatusCode::BAD_REQUEST,
        "invalid_parameters",
    )
    .await;
    expect_error(
        r,
        post("/infer", json!({"state_hash": state, "delta_text": "d", "sampling": {"max_tokens": 4, "seed": 3}})),
        StatusCode::BAD_REQUEST,
        "invalid_parameters",
    )
    .await;
    // Over the server's delta limit (4,096 tokens by default), then within it but over the
    // context window.
    let huge = "z".repeat(5000);
    expect_error(
        r,
        post("/merge", json!({"state_hash": state, "delta_text": huge})),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    let long = "z".repeat(4095);
    expect_error(
        r,
        post("/merge", json!({"state_hash": state, "delta_text": long})),
        StatusCode::UNPROCESSABLE_ENTITY,
        "context_overflow",
    )
    .await;
    // Not JSON, the wrong JSON, no content type.
    let raw = |body: &str, ct: Option<&str>| {
        let mut b = Request::builder().method(Method::POST).uri("/merge");
        if let Some(ct) = ct {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        b.body(Body::from(body.to_string())).unwrap()
    };
    expect_error(
        r,
        raw("{not json", Some("application/json")),
        StatusCode::BAD_REQUEST,
        "invalid_json",
    )
    .await;
    expect_error(
        r,
        raw(r#"{"state": 1}"#, Some("application/json")),
        StatusCode::BAD_REQUEST,
        "invalid_json",
    )
    .await;
    expect_error(
        r,
        raw(r#"{"state_hash": "x", "delta_text": "d"}"#, None),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    // Routes and methods that do not exist; receipts that do not exist.
    expect_error(
        r,
        request(Method::GET, "/nope", None),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(
        r,
        request(Method::GET, "/merge", None),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    expect_error(
        r,
        request(Method::GET, "/receipts/999", None),
        StatusCode::NOT_FOUND,
        "unknown_receipt",
    )
    .await;
    expect_error(
        r,
        request(Method::GET, &format!("/states/{unknown}"), None),
        StatusCode::NOT_FOUND,
        "unknown_state",
    )
    .await;

    assert_eq!(receipts(&f), before, "no refused request wrote a receipt");
    assert_eq!(
        f.engine.calls(),
        calls,
        "no refused request reached the engine"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused() {
    let f = fixture(
        ScriptedOptions::default(),
        ServerConfig {
            max_body_bytes: 1024,
            ..ServerConfig::default()
        },
    );
    let body = json!({"base_text": "b".repeat(2000)});
    expect_error(
        &f.router,
        request(Method::POST, "/states", Some(body)),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
}

#[tokio::test]
async fn bearer_tokens_are_required_except_for_health_and_the_openapi_document() {
    let f = fixture(
        ScriptedOptions::default(),
        ServerConfig {
            auth: Auth::Tokens(parse_tokens(TOKEN).unwrap()),
            ..ServerConfig::default()
        },
    );
    let r = &f.router;
    let body = || Some(json!({"base_text": "a base"}));
    expect_error(
        r,
        request(Method::POST, "/states", body()),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let mut wrong = request(Method::POST, "/states", body());
    wrong.headers_mut().insert(
        header::AUTHORIZATION,
        "Bearer not-the-token".parse().unwrap(),
    );
    expect_error(r, wrong, StatusCode::UNAUTHORIZED, "unauthorized").await;

    let mut right = request(Method::POST, "/states", body());
    right.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    let (status, _, b) = send(r, right).await;
    assert_eq!(status, StatusCode::OK, "{b}");
    for open in ["/health", "/openapi.json"] {
        let (status, _, b) = send(r, request(Method::GET, open, None)).await;
        assert_eq!(status, StatusCode::OK, "{open}: {b}");
    }
}

#[tokio::test]
async fn an_engine_failure_is_a_500_and_writes_nothing() {
    let f = default_fixture();
    let state = create(&f).await;
    let before = receipts(&f);
    f.engine.fail_next(Fault::Failed("device lost".into()));
    let req = request(
        Method::POST,
        "/infer",
        Some(json!({"state_hash": state, "delta_text": "d"})),
    );
    expect_error(
        &f.router,
        req,
        StatusCode::INTERNAL_SERVER_ERROR,
        "engine_failed",
    )
    .await;
    assert_eq!(receipts(&f), before);
    // The next request is served.
    let req = request(
        Method::POST,
        "/infer",
        Some(json!({"state_hash": state, "delta_text": "d"})),
    );
    let (status, _, body) = send(&f.router, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["output"], "ok");
    assert_eq!(body["tokens"]["prefilled"], 1, "{body}");
    // The wire carries the counts the receipt signs, in the receipt's own shape (`restored`
    // is left out when zero, as in the signed body), and the seed protocol's four figures
    // derived from them.
    let signed: Value = serde_json::from_str(body["receipt"]["body"].as_str().unwrap()).unwrap();
    let mut wire = body["tokens"].as_object().unwrap().clone();
    for seed in ["base", "new_total", "saved", "savings_pct"] {
        assert!(wire.remove(seed).is_some(), "{seed}: {body}");
    }
    assert_eq!(Value::Object(wire), signed["tokens"], "{body}");
    assert!(body["tokens"].get("restored").is_none(), "{body}");
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_a_slow_engine_504() {
    let slow = ScriptedOptions {
        latency: Duration::from_millis(400),
        ..ScriptedOptions::default()
    };
    let f = fixture(
        slow.clone(),
        ServerConfig {
            queue_capacity: 1,
            queue_depth: 0,
            ..ServerConfig::default()
        },
    );
    let busy = {
        let router = f.router.clone();
        tokio::spawn(async move {
            send(
                &router,
                request(Method::POST, "/states", Some(json!({"base_text": "first"}))),
            )
            .await
        })
    };
    // Wait until the first request holds the engine.
    while f.engine.calls().prefills == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let req = request(
        Method::POST,
        "/states",
        Some(json!({"base_text": "second"})),
    );
    let (status, headers, body) = send(&f.router, req).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "overloaded");
    let retry: u64 = headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds");
    assert!(retry >= 1, "{retry}");
    assert_eq!(busy.await.unwrap().0, StatusCode::OK);

    let f = fixture(
        slow,
        ServerConfig {
            engine_timeout: Duration::from_millis(50),
            ..ServerConfig::default()
        },
    );
    let req = request(
        Method::POST,
        "/states",
        Some(json!({"base_text": "too slow"})),
    );
    expect_error(&f.router, req, StatusCode::GATEWAY_TIMEOUT, "timeout").await;
    assert_eq!(receipts(&f), 1, "only the log's open_log receipt");
}

/// Thousands of mutated requests (methods, paths, bodies, auth headers, content types): never
/// a 5xx, every error JSON with a code from `ErrorCode::ALL`, and the log verifies after.
#[tokio::test]
async fn thousands_of_mutated_requests_never_get_5xx_and_the_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fuzz.db");
    let f = fixture_at(
        Some(&db),
        ScriptedOptions::default(),
        ServerConfig {
            auth: Auth::Tokens(parse_tokens(&format!("tester:{TOKEN}")).unwrap()),
            max_body_bytes: 64 * 1024,
            max_delta_tokens: 64,
            max_new_tokens: 2,
            ..ServerConfig::default()
        },
    );
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    let mut create = request(Method::POST, "/states", Some(json!({"base_text": BASE})));
    create.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    let (_, _, b) = send(&f.router, create).await;
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
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/dashboard",
        "/dashboard.json",
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
            "/states" => json!({"base_text": format!("{BASE}{}", rng.below(4))}),
            "/compact" => json!({"state_hash": hash}),
            "/v1/chat/completions" => json!({
                "model": "scripted",
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": format!("Hm {}", rng.below(4))}
                ],
                "max_tokens": 8,
                "stream": rng.below(4) == 0,
                "tools": if rng.below(3) == 0 {
                    json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
                } else {
                    json!(null)
                },
            }),
            "/v1/completions" => json!({"model": "scripted", "prompt": "Hm", "max_tokens": 8}),
            _ => json!({"state_hash": hash, "delta_text": "Hm."}),
        };
        let body = mutate(&mut rng, valid, &hash);
        // Mostly the endpoint's own method, so that most requests reach the handlers.
        let own = if [
            "/states",
            "/merge",
            "/infer",
            "/compact",
            "/v1/chat/completions",
            "/v1/completions",
        ]
        .contains(&path.as_str())
        {
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
        let mut req = Request::builder().method(method).uri(path.as_str());
        req = match rng.below(30) {
            0 => req,
            1 => req.header(header::AUTHORIZATION, "Bearer nope"),
            2 => req.header(header::AUTHORIZATION, "Basic Zm9vOmJhcg=="),
            _ => req.header(header::AUTHORIZATION, format!("Bearer {TOKEN}")),
        };
        let bytes: Vec<u8> = match rng.below(10) {
            0 => {
                req = req.header(header::CONTENT_TYPE, "text/plain");
                body.to_string().into_bytes()
            }
            1 => {
                // Cut the JSON short.
                let text = body.to_string();
                let cut = rng.below(text.len().max(1));
                req = req.header(header::CONTENT_TYPE, "application/json");
                text.as_bytes()[..cut].to_vec()
            }
            2 => {
                // Bytes that are not UTF-8.
                req = req.header(header::CONTENT_TYPE, "application/json");
                vec![0xff, 0xfe, b'{', 0x80]
            }
            _ => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                body.to_string().into_bytes()
            }
        };
        let (status, _, v) = send(&f.router, req.body(Body::from(bytes)).unwrap()).await;
        let text = v.to_string();
        *statuses.entry(status.as_u16()).or_insert(0usize) += 1;
        assert!(
            !status.is_server_error(),
            "request {i} to {path} got {status}: {text}"
        );
        if status.is_client_error() {
            let code = v["error"]["code"].as_str();
            assert!(
                code.is_some_and(|c| codes.contains(&c)),
                "request {i}: not an ErrorCode: {text}"
            );
        }
        if status.is_success() && text.contains("\"engine_called\":true") {
            engine_runs += 1;
        }
    }
    eprintln!("{n} mutated requests: statuses {statuses:?}; {engine_runs} ran the engine");
    let (st, _, _) = send(&f.router, request(Method::GET, "/health", None)).await;
    assert_eq!(st, StatusCode::OK, "the server is still up");
    assert!(
        statuses.keys().any(|&k| k == 200),
        "some mutations stay valid"
    );
    assert!(
        statuses.keys().filter(|&&k| k >= 400).count() >= 5,
        "many error classes hit"
    );
    drop(f);
    let report = common::db::verify(
        &db,
        &VerifyOptions {
            trusted_keys: vec![signer().public_key()],
            trusted_checkpoint: None,
            witnesses: Vec::new(),
        },
    );
    assert!(report.ok(), "{:#?}", report.failures);
    assert!(report.receipts > 1);
}

/// Reads (receipts, proofs, health) go through the server's own read-only connection, and
/// see every write the moment it commits.
#[tokio::test]
async fn reads_see_each_commit_through_their_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reads.db");
    let f = fixture_at(
        Some(&db),
        ScriptedOptions::default(),
        ServerConfig::default(),
    );
    let health = |f: &Fixture| {
        let router = f.router.clone();
        async move {
            let req = request(Method::GET, "/health", None);
            send(&router, req).await.2["receipts"].as_u64().unwrap()
        }
    };
    let before = health(&f).await;
    let req = request(Method::POST, "/states", Some(json!({"base_text": BASE})));
    let (status, _, body) = send(&f.router, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seq = body["receipt"]["seq"].as_u64().unwrap();
    assert_eq!(health(&f).await, before + 1, "the new receipt is counted");
    let req = request(Method::GET, &format!("/receipts/{seq}"), None);
    let (status, _, got) = send(&f.router, req).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(
        got, body["receipt"],
        "the receipt read back is the one written"
    );
    let req = request(Method::GET, &format!("/receipts/{seq}/proof"), None);
    let (status, _, proof) = send(&f.router, req).await;
    assert_eq!(status, StatusCode::OK, "{proof}");
}

/// The log in the transparency ecosystem's formats over HTTP: `GET /checkpoint` as a C2SP
/// signed note (verified with the log's vkey), and its tiles and entry bundles.
#[tokio::test]
async fn the_checkpoint_note_and_the_tiles_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tiles.db");
    let f = fixture_at(
        Some(&db),
        ScriptedOptions::default(),
        ServerConfig::default(),
    );
    for i in 0..5 {
        let (status, _, _) = send(
            &f.router,
            request(
                Method::POST,
                "/states",
                Some(json!({"base_text": format!("base {i}")})),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let mut req = request(Method::GET, "/checkpoint", None);
    req.headers_mut()
        .insert(header::ACCEPT, "text/plain".parse().unwrap());
    let resp = f.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let note = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    let parsed = state_pack::ledger::note::Note::parse(&note).unwrap();
    let text = state_pack::ledger::note::CheckpointText::parse(&parsed.text).unwrap();
    assert_eq!(text.size, 6, "open_log and five creates");
    let v = state_pack::ledger::note::NoteVerifier::new(
        &text.origin,
        state_pack::ledger::note::ED25519,
        signer().public_key(),
    )
    .unwrap();
    parsed.verify(&v).unwrap();
    // JSON stays the default.
    let (status, _, json) = send(&f.router, request(Method::GET, "/checkpoint", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(json["body"].is_string());

    let get = |path: &str| {
        let req = request(Method::GET, path, None);
        let router = f.router.clone();
        async move {
            let resp = router.oneshot(req).await.unwrap();
            let status = resp.status();
            (
                status,
                axum::body::to_bytes(resp.into_body(), 1 << 20)
                    .await
                    .unwrap(),
            )
        }
    };
    let (status, tile) = get("/tile/0/000.p/6").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tile.len(), 6 * 32);
    let (status, entries) = get("/tile/entries/000.p/6").await;
    assert_eq!(status, StatusCode::OK);
    let entries = state_pack::ledger::tiles::unbundle(&entries).unwrap();
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(
            state_pack::ledger::tlog::leaf_hash(e).as_slice(),
            &tile[i * 32..i * 32 + 32]
        );
        let receipt = f.pack.with_store(|s| s.receipt(i as u64).unwrap());
        assert_eq!(receipt.hash().as_bytes().as_slice(), *e);
    }
    let (status, bodies) = get("/tile/bodies/000.p/6").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        state_pack::ledger::tiles::unbundle(&bodies).unwrap().len(),
        6
    );
    // A tile of another width, another level, or no tile at all: 404.
    for bad in [
        "/tile/0/000.p/5",
        "/tile/0/000",
        "/tile/1/000.p/1",
        "/tile/0/x000/000",
        "/tile/nope",
    ] {
        assert_eq!(get(bad).await.0, StatusCode::NOT_FOUND, "{bad}");
    }
}

#[tokio::test]
async fn path_style_endpoints_are_the_same_operations_with_the_state_in_the_url() {
    let f = default_fixture();
    let state = create(&f).await;
    let sampling = json!({"max_tokens": 4});
    let at = |op: &str, s: &str| format!("/states/{s}/{op}");

    // /states/{hash}/infer and /infer are one operation: the second is answered from the store.
    let (status, _, a) = send(
        &f.router,
        request(
            Method::POST,
            &at("infer", &state),
            Some(json!({"delta_text": "d", "sampling": sampling})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["state_hash"], state.as_str());
    assert_eq!(a["engine_called"], true, "{a}");
    let (status, _, b) = send(
        &f.router,
        request(
            Method::POST,
            "/infer",
            Some(json!({"state_hash": state, "delta_text": "d", "sampling": sampling})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(a["new_state_hash"], b["new_state_hash"]);
    assert_eq!(b["engine_called"], false, "{b}");
    let next = a["new_state_hash"].as_str().unwrap().to_string();

    // merge and compact (the seed's accumulated_deltas) by path; a state_hash in the body
    // that names the same state is accepted.
    let (status, _, m) = send(
        &f.router,
        request(
            Method::POST,
            &at("merge", &next),
            Some(json!({"state_hash": next, "delta_text": "more"})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{m}");
    let (status, _, c) = send(
        &f.router,
        request(
            Method::POST,
            &at("compact", &next),
            Some(json!({"accumulated_deltas": ["x", "y"]})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert!(c["new_state_hash"].is_string(), "{c}");

    // Refusals write nothing.
    let before = receipts(&f);
    let other = "ab".repeat(32);
    let cases = [
        (
            at("infer", &state),
            json!({"state_hash": other, "delta_text": "d"}),
            StatusCode::BAD_REQUEST,
            "invalid_parameters",
        ),
        (
            at("infer", "not-a-hash"),
            json!({"delta_text": "d"}),
            StatusCode::BAD_REQUEST,
            "invalid_hash",
        ),
        (
            at("merge", &other),
            json!({"delta_text": "d"}),
            StatusCode::NOT_FOUND,
            "unknown_state",
        ),
        (
            at("infer", &state),
            json!(["d"]),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            at("compact", &state),
            json!({"delta_text": "d"}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
    ];
    for (uri, body, status, code) in cases {
        expect_error(
            &f.router,
            request(Method::POST, &uri, Some(body)),
            status,
            code,
        )
        .await;
    }
    assert_eq!(receipts(&f), before);
}
