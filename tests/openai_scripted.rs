//! The OpenAI-compatible endpoints and the seed's protocol through `Router::oneshot` on the
//! scripted engine (feature `testing`): history matching and what each answer says about it,
//! replays, tool calls, streaming, errors in OpenAI's shape, the seed's `dtype` and
//! `accumulated_deltas`, and the dashboard's figures. The real model and the real clients
//! (openai, LangChain, LangGraph) are in `openai_clients.rs`.

mod common;

use std::sync::Arc;

use axum::http::{header, Method, StatusCode};
use axum::Router;
use common::http::{expect_error, request, send, send_text, sse_data};
use serde_json::{json, Value};
use state_pack::engine::scripted::{Reply, ScriptedEngine, ScriptedOptions};
use state_pack::ledger::{Signer, VerifyOptions};
use state_pack::server::{parse_tokens, Auth, Server, ServerConfig};
use state_pack::StatePack;

const MODEL: &str = "scripted";

struct Fixture {
    router: Router,
    engine: Arc<ScriptedEngine>,
    pack: Arc<StatePack>,
    _dir: tempfile::TempDir,
}

fn fixture(reply: Reply, config: ServerConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(ScriptedEngine::new(reply, ScriptedOptions::default()));
    let store = common::db::open(&dir.path().join("o.db"), Signer::from_seed([8; 32]));
    let pack = Arc::new(StatePack::new(engine.clone(), store));
    let router = Server::new(pack.clone(), config).router();
    Fixture {
        router,
        engine,
        pack,
        _dir: dir,
    }
}

fn chat(messages: Value) -> Value {
    json!({"model": MODEL, "messages": messages, "max_tokens": 32})
}

async fn post(f: &Fixture, uri: &str, body: Value) -> (StatusCode, axum::http::HeaderMap, Value) {
    send(&f.router, request(Method::POST, uri, Some(body))).await
}

fn cached(b: &Value) -> u64 {
    b["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn a_client_that_resends_its_history_prefills_only_its_new_turns() {
    let f = fixture(
        Reply::queue(["Hello there.", "Clause 14.5.", "Twelve months."]),
        ServerConfig::default(),
    );
    let mut history = vec![
        json!({"role": "system", "content": "You are terse."}),
        json!({"role": "user", "content": "Hi"}),
    ];
    // Turn 1: nothing stored yet; the system turn becomes a base state.
    let (status, headers, b1) = post(&f, "/v1/chat/completions", chat(json!(history))).await;
    assert_eq!(status, StatusCode::OK, "{b1}");
    assert_eq!(b1["object"], "chat.completion");
    assert_eq!(b1["choices"][0]["message"]["content"], "Hello there.");
    assert_eq!(b1["choices"][0]["finish_reason"], "stop");
    assert_eq!(b1["state_pack"]["matched_tokens"], 0);
    assert!(b1["state_pack"]["matched_state"].is_null());
    assert_eq!(
        b1["state_pack"]["receipts"].as_array().unwrap().len(),
        2,
        "create + infer"
    );
    let receipt = &b1["state_pack"]["receipts"][1];
    assert_eq!(
        headers["x-state-pack-receipt"].to_str().unwrap(),
        format!("{}:{}", receipt["seq"], receipt["hash"].as_str().unwrap())
    );
    assert_eq!(
        headers["x-state-pack-state"].to_str().unwrap(),
        b1["state_pack"]["state"]
    );
    let state1_len = b1["state_pack"]["tokens"]["state"].as_u64().unwrap();

    // Turn 2: the client re-sends everything; the stored turn-1 state is found whole.
    history.push(json!({"role": "assistant", "content": "Hello there."}));
    history.push(json!({"role": "user", "content": "Which clause caps liability?"}));
    let (_, _, b2) = post(&f, "/v1/chat/completions", chat(json!(history))).await;
    assert_eq!(b2["choices"][0]["message"]["content"], "Clause 14.5.");
    assert_eq!(b2["state_pack"]["matched_state"], b1["state_pack"]["state"]);
    assert_eq!(
        b2["state_pack"]["matched_tokens"].as_u64().unwrap(),
        state1_len
    );
    assert_eq!(b2["state_pack"]["receipts"].as_array().unwrap().len(), 1);
    let prompt2 = b2["usage"]["prompt_tokens"].as_u64().unwrap();
    let prefilled2 = b2["state_pack"]["prefilled"].as_u64().unwrap();
    assert_eq!(cached(&b2), prompt2 - prefilled2);
    // Only the new turn (and the previous reply's last, never-run token) was prefilled.
    let new_turn =
        "\n<|im_start|>user\nWhich clause caps liability?<|im_end|>\n<|im_start|>assistant\n";
    let new_tokens = ScriptedEngine::encode(new_turn).len() as u64;
    assert_eq!(prompt2, state1_len + new_tokens);
    assert!(
        prefilled2 <= new_tokens + 1,
        "prefilled {prefilled2} of {new_tokens} new"
    );
    assert!(cached(&b2) >= b1["usage"]["prompt_tokens"].as_u64().unwrap());

    // The same request again is answered from the store: no engine, every token cached.
    let calls = f.engine.calls();
    let (_, _, again) = post(&f, "/v1/chat/completions", chat(json!(history))).await;
    assert_eq!(again["choices"][0]["message"]["content"], "Clause 14.5.");
    assert!(again["state_pack"]["replay_of"].is_u64(), "{again}");
    assert_eq!(again["state_pack"]["engine_called"], false);
    assert_eq!(cached(&again), prompt2);
    assert_eq!(f.engine.calls().generates, calls.generates);

    // An edited turn: the match stops at the state before it, and the answer says so.
    let mut edited = history.clone();
    edited[2] = json!({"role": "assistant", "content": "Hello!"});
    let (_, _, b3) = post(&f, "/v1/chat/completions", chat(json!(edited))).await;
    let matched3 = b3["state_pack"]["matched_tokens"].as_u64().unwrap();
    assert!(matched3 > 0 && matched3 < state1_len, "matched {matched3}");

    let db = f._dir.path().join("o.db");
    f.pack.close().unwrap();
    let report = common::db::verify(&db, &VerifyOptions::default());
    assert!(report.ok(), "{report:?}");
}

#[tokio::test]
async fn tool_calls_round_trip_and_the_result_turn_extends_the_stored_call() {
    let f = fixture(
        Reply::queue([
            "{\"calls\":[{\"tool\":\"lookup\",\"args\":{\"clause\":\"14.5\"}}]}",
            "{\"answer\":\"Fees of the last 12 months.\"}",
        ]),
        ServerConfig::default(),
    );
    let tools = json!([{"type": "function", "function": {
        "name": "lookup", "description": "Finds a clause.",
        "parameters": {"type": "object", "properties": {"clause": {"type": "string"}}, "required": ["clause"]}}}]);
    let mut messages = vec![json!({"role": "user", "content": "What caps liability?"})];
    let mut body = chat(json!(messages));
    body["max_tokens"] = json!(128);
    body["tools"] = tools.clone();
    let (status, _, b1) = post(&f, "/v1/chat/completions", body).await;
    assert_eq!(status, StatusCode::OK, "{b1}");
    let choice = &b1["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null());
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "lookup");
    assert_eq!(call["function"]["arguments"], "{\"clause\":\"14.5\"}");
    let id = call["id"].as_str().unwrap().to_string();

    // The client sends the call back with its arguments re-serialized (as Python does) and
    // the tool's result.
    let mut sent_back = choice["message"].clone();
    sent_back["tool_calls"][0]["function"]["arguments"] = json!("{\"clause\": \"14.5\"}");
    messages.push(sent_back);
    messages.push(
        json!({"role": "tool", "tool_call_id": id, "content": "capped at 12 months of fees"}),
    );
    let mut body = chat(json!(messages));
    body["max_tokens"] = json!(128);
    body["tools"] = tools;
    let (_, _, b2) = post(&f, "/v1/chat/completions", body).await;
    assert_eq!(
        b2["choices"][0]["message"]["content"],
        "Fees of the last 12 months."
    );
    assert_eq!(b2["choices"][0]["finish_reason"], "stop");
    assert_eq!(b2["state_pack"]["matched_state"], b1["state_pack"]["state"]);
}

#[tokio::test]
async fn a_streamed_answer_is_the_non_streamed_answer_in_chunks() {
    let f = fixture(
        Reply::Fixed("Twelve months of fees.".into()),
        ServerConfig::default(),
    );
    let messages = json!([{"role": "user", "content": "What caps liability?"}]);
    let (_, _, whole) = post(&f, "/v1/chat/completions", chat(messages.clone())).await;
    let mut body = chat(messages);
    body["max_tokens"] = json!(31); // another request: computed, not replayed
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (status, headers, text) = send_text(
        &f.router,
        request(Method::POST, "/v1/chat/completions", Some(body)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        content,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert!(
        chunks.len() > 4,
        "text arrives in several chunks: {}",
        chunks.len()
    );
    let last = &chunks[chunks.len() - 2];
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(last["state_pack"]["replay_of"].is_null());
    assert_eq!(last["state_pack"]["engine_called"], true);
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"]["completion_tokens"],
        whole["usage"]["completion_tokens"]
    );
}

#[tokio::test]
async fn completions_take_text_or_token_ids() {
    let f = fixture(Reply::Fixed("done".into()), ServerConfig::default());
    let (status, _, b) = post(
        &f,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "Once upon", "max_tokens": 8}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(b["object"], "text_completion");
    assert_eq!(b["choices"][0]["text"], "done");
    let ids = ScriptedEngine::encode("Once upon a time");
    let (_, _, b2) = post(
        &f,
        "/v1/completions",
        json!({"model": MODEL, "prompt": ids, "max_tokens": 8}),
    )
    .await;
    assert_eq!(b2["usage"]["prompt_tokens"], ids.len());
    // The first prompt's base state ("Once upo") begins the second.
    assert!(
        b2["state_pack"]["matched_tokens"].as_u64().unwrap() >= 8,
        "{b2}"
    );
    let (_, _, models) = send(&f.router, request(Method::GET, "/v1/models", None)).await;
    assert_eq!(models["data"][0]["id"], MODEL);
}

#[tokio::test]
async fn v1_errors_have_openai_s_shape_and_write_nothing() {
    let tokens = parse_tokens("alice:alice-secret-0123456789").unwrap();
    let f = fixture(
        Reply::Fixed("x".into()),
        ServerConfig {
            auth: Auth::Tokens(tokens),
            ..ServerConfig::default()
        },
    );
    let authed = |body: Value| {
        let mut r = request(Method::POST, "/v1/chat/completions", Some(body));
        r.headers_mut().insert(
            header::AUTHORIZATION,
            "Bearer alice-secret-0123456789".parse().unwrap(),
        );
        r
    };
    let user = json!([{"role": "user", "content": "hi"}]);
    let bad = [
        (
            json!({"model": "gpt-4o", "messages": user}),
            StatusCode::NOT_FOUND,
            "model_not_found",
            "not_found_error",
        ),
        (
            json!({"model": MODEL, "messages": user, "n": 2}),
            StatusCode::BAD_REQUEST,
            "invalid_parameters",
            "invalid_request_error",
        ),
        (
            json!({"model": MODEL, "messages": user, "stop": ["\n"]}),
            StatusCode::BAD_REQUEST,
            "invalid_parameters",
            "invalid_request_error",
        ),
        (
            json!({"model": MODEL, "messages": user, "max_tokens": 100000}),
            StatusCode::BAD_REQUEST,
            "invalid_parameters",
            "invalid_request_error",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}),
            StatusCode::BAD_REQUEST,
            "invalid_parameters",
            "invalid_request_error",
        ),
        (
            json!({"model": MODEL, "messages": user, "response_format": {"type": "json_object"}, "temperature": 0.7}),
            StatusCode::BAD_REQUEST,
            "invalid_parameters",
            "invalid_request_error",
        ),
        (
            json!({"model": MODEL, "messages": user, "tool_choice": "required"}),
            StatusCode::BAD_REQUEST,
            "invalid_parameters",
            "invalid_request_error",
        ),
        (
            json!({"model": MODEL}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "invalid_request_error",
        ),
    ];
    for (body, status, code, kind) in bad {
        let (got, _, b) = send(&f.router, authed(body.clone())).await;
        assert_eq!(got, status, "{body}: {b}");
        assert_eq!(b["error"]["code"], code, "{body}: {b}");
        assert_eq!(b["error"]["type"], kind, "{body}: {b}");
        assert!(b["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let (got, _, b) = send(
        &f.router,
        request(
            Method::POST,
            "/v1/chat/completions",
            Some(json!({"model": MODEL, "messages": user})),
        ),
    )
    .await;
    assert_eq!(got, StatusCode::UNAUTHORIZED);
    assert_eq!(b["error"]["type"], "authentication_error");
    assert_eq!(
        f.pack.with_store(|s| s.receipt_count().unwrap()),
        1,
        "only the log's opening receipt"
    );
    // The dashboard page is open; its figures need the token.
    let (page, headers, _) = send_text(&f.router, request(Method::GET, "/dashboard", None)).await;
    assert_eq!(page, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    expect_error(
        &f.router,
        request(Method::GET, "/dashboard.json", None),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn the_seed_protocol_as_its_clients_send_it() {
    let f = fixture(Reply::Fixed("noted".into()), ServerConfig::default());
    let (status, _, created) = post(
        &f,
        "/states",
        json!({"base_text": "You are a legal research agent.", "dtype": "float32"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    for field in ["state_hash", "tokens", "bytes", "cache_hit", "elapsed_s"] {
        assert!(
            !created[field].is_null(),
            "/states answers {field}: {created}"
        );
    }
    let h0 = created["state_hash"].as_str().unwrap().to_string();
    let (status, _, e) = post(&f, "/states", json!({"base_text": "x", "dtype": "float16"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"]["code"], "unsupported_dtype");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("float32"),
        "{e}"
    );

    let (_, _, inferred) = post(
        &f,
        "/infer",
        json!({"state_hash": h0, "delta_text": "Step 1: clause affects indemnity."}),
    )
    .await;
    for field in ["state_hash", "new_state_hash", "delta_hash", "output"] {
        assert!(
            !inferred[field].is_null(),
            "/infer answers {field}: {inferred}"
        );
    }
    let t = &inferred["tokens"];
    for field in ["base", "delta", "new_total", "saved", "savings_pct"] {
        assert!(t[field].is_number(), "/infer tokens.{field}: {inferred}");
    }
    assert_eq!(
        t["new_total"],
        t["base"].as_u64().unwrap() + t["delta"].as_u64().unwrap()
    );
    assert_eq!(
        t["saved"],
        t["new_total"].as_u64().unwrap() - t["prefilled"].as_u64().unwrap()
    );

    let deltas = [
        "Step 1: clause affects indemnity.",
        "Step 2: clause affects waiver.",
    ];
    let (status, _, compacted) = post(
        &f,
        "/compact",
        json!({"state_hash": h0, "accumulated_deltas": deltas}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{compacted}");
    assert_eq!(compacted["steps_folded"], 2);
    let base_len = created["tokens"]["state"].as_u64().unwrap() as usize;
    let expected = base_len
        + deltas
            .iter()
            .map(|d| ScriptedEngine::encode(d).len())
            .sum::<usize>();
    assert_eq!(compacted["tokens"]["state"], expected);
    let (_, _, info) = send(
        &f.router,
        request(
            Method::GET,
            &format!("/states/{}", compacted["new_state_hash"].as_str().unwrap()),
            None,
        ),
    )
    .await;
    for field in ["state_hash", "tokens", "bytes", "model", "hot"] {
        assert!(
            !info[field].is_null(),
            "GET /states answers {field}: {info}"
        );
    }
    let (_, _, both) = post(
        &f,
        "/compact",
        json!({"state_hash": h0, "accumulated_deltas": deltas, "policy": {}}),
    )
    .await;
    assert_eq!(both["error"]["code"], "invalid_parameters");
}

#[tokio::test]
async fn the_dashboard_figures_are_the_sum_of_the_answers() {
    let f = fixture(Reply::Fixed("ok".into()), ServerConfig::default());
    let mut prompt = 0;
    let mut prefilled = 0;
    let mut history = vec![json!({"role": "system", "content": "Be brief."})];
    for i in 0..3 {
        history.push(json!({"role": "user", "content": format!("question {i}")}));
        let (_, _, b) = post(&f, "/v1/chat/completions", chat(json!(history))).await;
        prompt += b["usage"]["prompt_tokens"].as_u64().unwrap();
        prefilled += b["state_pack"]["prefilled"].as_u64().unwrap();
        history.push(json!({"role": "assistant", "content": "ok"}));
    }
    let (_, _, d) = send(&f.router, request(Method::GET, "/dashboard.json", None)).await;
    assert_eq!(d["totals"]["requests"], 3, "{d}");
    assert_eq!(d["totals"]["prompt_tokens"], prompt);
    assert_eq!(d["totals"]["prefilled"], prefilled);
    assert_eq!(d["totals"]["cached"], prompt - prefilled);
    assert_eq!(d["clients"][0]["client"], "anonymous");
    assert_eq!(
        d["ledger"]["receipts"],
        f.pack.with_store(|s| s.receipt_count().unwrap())
    );
    assert!(d["engine"]["hot_tokens"].as_u64().unwrap() > 0);
    let seconds: u64 = d["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(seconds, 3);
}
