//! The OpenAPI 3.0 document, with every schema generated (schemars) from the wire types the
//! handlers use.

use schemars::gen::{SchemaGenerator, SchemaSettings};
use schemars::JsonSchema;
use serde_json::{json, Value};

use super::api::*;
use super::error::{ErrorBody, ErrorCode};
use super::openai::wire::{
    ChatCompletion, ChatRequest, CompletionRequest, ModelList, TextCompletion,
};
use state_pack_ledger::{ReceiptProof, SignedCheckpoint};

fn body<T: JsonSchema>(g: &mut SchemaGenerator) -> Value {
    json!({
        "required": true,
        "content": {"application/json": {"schema": g.subschema_for::<T>()}}
    })
}

fn ok<T: JsonSchema>(g: &mut SchemaGenerator, what: &str) -> Value {
    json!({"description": what, "content": {"application/json": {"schema": g.subschema_for::<T>()}}})
}

/// The document served at `/openapi.json`.
pub fn document() -> Value {
    let mut g = SchemaSettings::openapi3().into_generator();
    let err = g.subschema_for::<ErrorBody>();
    let error = |what: &str| json!({"description": what, "content": {"application/json": {"schema": err.clone()}}});
    // One response per status, naming every code that status carries for this operation.
    let errors = |codes: &[ErrorCode]| {
        let always = [
            ErrorCode::Unauthorized,
            ErrorCode::Internal,
            ErrorCode::EngineFailed,
        ];
        let mut by_status: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
        for c in codes.iter().chain(&always) {
            by_status
                .entry(c.status().as_u16())
                .or_default()
                .push(format!("`{}`: {}", c.as_str(), c.description()));
        }
        let mut m = serde_json::Map::new();
        for (status, lines) in by_status {
            m.insert(status.to_string(), error(&lines.join(" ")));
        }
        m
    };
    let hash_param = json!([{
        "name": "hash", "in": "path", "required": true,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}
    }]);
    let seq_param = json!([{
        "name": "seq", "in": "path", "required": true,
        "schema": {"type": "integer", "format": "int64", "minimum": 0}
    }]);
    let mutating = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidHash,
        ErrorCode::InvalidParameters,
        ErrorCode::EmptyText,
        ErrorCode::UnknownState,
        ErrorCode::WrongModel,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::ContextOverflow,
        ErrorCode::NothingToCompact,
        ErrorCode::UnsupportedDtype,
        ErrorCode::UnknownModel,
        ErrorCode::Overloaded,
        ErrorCode::ShuttingDown,
        ErrorCode::Timeout,
    ];
    let op = |g: &mut SchemaGenerator, summary: &str, req: Value, resp: Value| {
        let _ = g;
        let mut responses = errors(&mutating);
        responses.insert("200".into(), resp);
        json!({"post": {"summary": summary, "requestBody": req, "responses": responses,
                        "security": [{"bearer": []}]}})
    };
    let create = {
        let (req, resp) = (
            body::<CreateRequest>(&mut g),
            ok::<StateResponse>(&mut g, "the state"),
        );
        op(
            &mut g,
            "Create a base state (idempotent: the same text is the same state)",
            req,
            resp,
        )
    };
    let merge = {
        let (req, resp) = (
            body::<MergeRequest>(&mut g),
            ok::<StateResponse>(&mut g, "the new state"),
        );
        op(&mut g, "Append a delta without generating", req, resp)
    };
    let infer = {
        let (req, resp) = (
            body::<InferRequest>(&mut g),
            ok::<InferResponse>(&mut g, "the generation"),
        );
        op(
            &mut g,
            "Append a delta and generate (repeated requests answered from the store)",
            req,
            resp,
        )
    };
    let compact = {
        let (req, resp) = (
            body::<CompactRequest>(&mut g),
            ok::<CompactResponse>(&mut g, "the compacted state"),
        );
        op(
            &mut g,
            "Fold the middle turns of a chat-template state",
            req,
            resp,
        )
    };
    let get = |g: &mut SchemaGenerator,
               summary: &str,
               resp: Value,
               params: Option<&Value>,
               open: bool| {
        let _ = g;
        let mut responses = errors(&[
            ErrorCode::InvalidHash,
            ErrorCode::InvalidParameters,
            ErrorCode::UnknownState,
            ErrorCode::UnknownReceipt,
        ]);
        responses.insert("200".into(), resp);
        let mut o = json!({"summary": summary, "responses": responses});
        if let Some(p) = params {
            o["parameters"] = p.clone();
        }
        o["security"] = if open {
            json!([])
        } else {
            json!([{"bearer": []}])
        };
        json!({"get": o})
    };
    let state = {
        let r = ok::<StateInfo>(&mut g, "the state");
        get(
            &mut g,
            "A stored state: length, KV bytes, whether the engine holds it",
            r,
            Some(&hash_param),
            false,
        )
    };
    let receipt = {
        let r = ok::<WireReceipt>(&mut g, "the receipt as stored");
        get(&mut g, "A signed receipt", r, Some(&seq_param), false)
    };
    let proof = {
        let r = ok::<ReceiptProof>(&mut g, "the proof");
        get(
            &mut g,
            "An inclusion proof of a receipt in a signed checkpoint",
            r,
            Some(&seq_param),
            false,
        )
    };
    let checkpoint = {
        let mut r = ok::<SignedCheckpoint>(
            &mut g,
            "the checkpoint (with Accept: text/plain, its C2SP signed note)",
        );
        r["content"]["text/plain"] = json!({"schema": {"type": "string"}});
        get(
            &mut g,
            "The newest signed checkpoint (written now if the log grew)",
            r,
            None,
            false,
        )
    };
    let health = {
        let r = ok::<Health>(&mut g, "health");
        get(&mut g, "Liveness, hot states, queue", r, None, true)
    };
    let metrics = get(
        &mut g,
        "Prometheus metrics",
        json!({"description": "text exposition format 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}}),
        None,
        false,
    );
    let openapi = get(
        &mut g,
        "This document",
        json!({"description": "OpenAPI 3.0", "content": {"application/json": {"schema": {"type": "object"}}}}),
        None,
        true,
    );
    let chat = {
        let (req, resp) = (
            body::<ChatRequest>(&mut g),
            ok::<ChatCompletion>(
                &mut g,
                "the answer (or, with stream: true, text/event-stream chunks)",
            ),
        );
        op(
            &mut g,
            "OpenAI-compatible chat: the re-sent history continues from the longest stored state it begins with",
            req,
            resp,
        )
    };
    let completion = {
        let (req, resp) = (
            body::<CompletionRequest>(&mut g),
            ok::<TextCompletion>(
                &mut g,
                "the answer (or, with stream: true, text/event-stream chunks)",
            ),
        );
        op(&mut g, "OpenAI-compatible text completion", req, resp)
    };
    let models = {
        let r = ok::<ModelList>(&mut g, "the model served");
        get(&mut g, "OpenAI-compatible model list", r, None, false)
    };
    let dashboard = get(
        &mut g,
        "The live dashboard page (it reads /dashboard.json)",
        json!({"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}),
        None,
        true,
    );
    let figures = {
        let r = ok::<crate::dashboard::DashboardFigures>(&mut g, "the figures");
        get(&mut g, "The dashboard's measured figures", r, None, false)
    };
    let tile = get(
        &mut g,
        "The log as C2SP tlog-tiles as of its newest checkpoint: tile/<L>/<N>[.p/<W>] hash tiles, tile/entries/<N> bundles of receipt hashes, tile/bodies/<N> bundles of receipt bodies",
        json!({"description": "tile bytes", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}),
        Some(&json!([{"name": "path", "in": "path", "required": true, "schema": {"type": "string"}}])),
        false,
    );
    // The path-style forms: the same operation, the state in the path (state_hash may be
    // left out of the body).
    let at_hash = |op: &Value| {
        let mut op = op.clone();
        op["post"]["parameters"] = hash_param.clone();
        if let Some(summary) = op["post"]["summary"].as_str() {
            op["post"]["summary"] = format!(
                "{summary}; the state in the path (state_hash may be left out of the body)"
            )
            .into();
        }
        op
    };
    let schemas = g.take_definitions();
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "state-pack",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Token-exact KV-state reuse with signed receipts. Every error is {\"error\": {\"code\", \"message\", \"type\"}} with a stable code (OpenAI's error shape)."
        },
        "paths": {
            "/states": create,
            "/states/{hash}": state,
            "/merge": merge,
            "/infer": infer,
            "/compact": compact,
            "/states/{hash}/merge": at_hash(&merge),
            "/states/{hash}/infer": at_hash(&infer),
            "/states/{hash}/compact": at_hash(&compact),
            "/receipts/{seq}": receipt,
            "/receipts/{seq}/proof": proof,
            "/checkpoint": checkpoint,
            "/tile/{path}": tile,
            "/health": health,
            "/metrics": metrics,
            "/openapi.json": openapi,
            "/v1/chat/completions": chat,
            "/v1/completions": completion,
            "/v1/models": models,
            "/dashboard": dashboard,
            "/dashboard.json": figures,
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    })
}
