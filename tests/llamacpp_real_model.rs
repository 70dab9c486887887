//! `LlamaCppEngine` on the real default model: reuse, KV blobs across a process restart,
//! constrained and seeded sampling, bad input.
//!
//! Each test's body runs in a child process (`common::isolated`): if llama.cpp dies of a
//! signal on this CPU, the test fails naming the signal instead of killing the binary.
#![cfg(feature = "llamacpp")]

mod common;

use std::sync::Arc;

use common::{isolated, key, model_path, turn, BASE};
use serde::{Deserialize, Serialize};
use state_pack::engine::{Engine, Grammar, LlamaCppEngine, LlamaCppOptions, Sampling};
use state_pack::ledger::verify::{verify_file, VerifyOptions};
use state_pack::{StateHash, StatePack, Store};

async fn engine() -> Arc<LlamaCppEngine> {
    Arc::new(
        LlamaCppEngine::load(&model_path(), LlamaCppOptions::default())
            .await
            .expect("load the default model on llama.cpp"),
    )
}

const D1: &str = "Which clause caps liability?";
const D2: &str = "And the notice period?";

/// What the child process reports.
#[derive(Debug, Serialize, Deserialize)]
struct ChildAnswer {
    text: String,
    restored: u64,
    prefilled: u64,
    reused: u64,
}

/// Runs in a separate process (see `same_output_after_restart_from_kv_blob`): a fresh engine
/// continues a state it has never seen, from its KV blob.
#[tokio::test]
#[ignore = "run by same_output_after_restart_from_kv_blob in a child process"]
async fn child_continues_a_state() {
    if !isolated::is_child("child_continues_a_state") {
        return;
    }
    let db = std::env::var("STATE_PACK_TEST_DB").expect("db");
    let state: StateHash = std::env::var("STATE_PACK_TEST_STATE")
        .expect("state")
        .parse()
        .expect("state hash");
    let delta = std::env::var("STATE_PACK_TEST_DELTA").expect("delta");
    let pack = StatePack::new(
        engine().await,
        Store::open(db.as_ref(), key()).expect("store"),
    );
    let out = pack
        .infer(&state, &turn(&delta), &Sampling::greedy(8))
        .await
        .expect("infer");
    pack.close().expect("close");
    let answer = ChildAnswer {
        text: out.text,
        restored: out.report.tokens.restored,
        prefilled: out.report.tokens.prefilled,
        reused: out.report.tokens.reused,
    };
    println!(
        "CHILD-ANSWER {}",
        serde_json::to_string(&answer).expect("json")
    );
}

fn continue_in_child(db: &std::path::Path, state: &StateHash, delta: &str) -> ChildAnswer {
    let db = db.to_string_lossy();
    let out = isolated::run(
        "child_continues_a_state",
        &[
            ("STATE_PACK_TEST_DB", db.as_ref()),
            ("STATE_PACK_TEST_STATE", state.to_hex().as_str()),
            ("STATE_PACK_TEST_DELTA", delta),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("CHILD-ANSWER ").map(|(_, json)| json))
        .unwrap_or_else(|| panic!("no answer from the child: {stdout}"));
    serde_json::from_str(line).expect("child answer")
}

#[test]
fn same_output_after_restart_from_kv_blob() {
    isolated::run("same_output_after_restart_from_kv_blob_in_child", &[]);
}

#[tokio::test]
#[ignore = "run by same_output_after_restart_from_kv_blob in a child process"]
async fn same_output_after_restart_from_kv_blob_in_child() {
    if !isolated::is_child("same_output_after_restart_from_kv_blob_in_child") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let (s1, a, b) = {
        let engine = engine().await;
        let pack = StatePack::new(engine.clone(), Store::open(&db, key()).unwrap());
        assert!(pack.kv_blobs().is_some(), "llama.cpp packs keep KV blobs");
        let base = pack.create(BASE).await.unwrap();
        assert_eq!(base.tokens.prefilled, base.tokens.state);
        let a = pack
            .infer(&base.output, &turn(D1), &Sampling::greedy(8))
            .await
            .unwrap();
        // Hot reuse: only the delta was prefilled.
        assert_eq!(a.report.tokens.reused, base.tokens.state);
        assert_eq!(a.report.tokens.restored, 0);
        let b = pack
            .infer(&a.report.output, &turn(D2), &Sampling::greedy(8))
            .await
            .unwrap();
        // The infer's last sampled token was never run: it is prefilled with the delta.
        assert_eq!(b.report.tokens.reused, a.report.tokens.state - 1);
        // The export between prefill and decode is in `save`, in neither of those.
        let t = b.report.timings;
        assert!(t.save > std::time::Duration::ZERO, "{t:?}");
        assert!(
            t.prefill + t.decode + t.restore + t.save + t.overhead <= t.total,
            "the parts exceed the total: {t:?}"
        );
        let blobs = pack.kv_blobs().unwrap();
        assert!(blobs.contains(&base.output));
        // An infer's blob was exported with its prompt, before the decode: it ends where
        // the prompt does, and the next infer's starts there (holding the generated tail).
        let prompt = |r: &state_pack::OpReport| (r.tokens.state - r.tokens.generated) as usize;
        assert_eq!(blobs.end_of(&a.report.output), Some(prompt(&a.report)));
        assert_eq!(blobs.end_of(&b.report.output), Some(prompt(&b.report)));
        pack.close().unwrap();
        (base, a, b)
    };

    // A fresh process continues the infer-made state from its blob: its prompt restored,
    // the generated tail prefilled with the delta, the same answer as the warm engine gave.
    let child = continue_in_child(&db, &a.report.output, D2);
    let a_prompt = a.report.tokens.state - a.report.tokens.generated;
    assert_eq!(child.text, b.text);
    assert_eq!(child.restored, a_prompt);
    assert_eq!(child.reused, child.restored);
    // Warm, only the last sampled token was run with the delta; here all generated ones are.
    assert_eq!(
        child.prefilled,
        b.report.tokens.prefilled + a.report.tokens.generated - 1
    );

    // And the base state, whose blob holds all of it.
    let child = continue_in_child(&db, &s1.output, D1);
    assert_eq!(child.text, a.text);
    assert_eq!(child.restored, s1.tokens.state);
    assert_eq!(child.prefilled, a.report.tokens.prefilled);

    // The receipts say so, and verify.
    let report = verify_file(&db, &VerifyOptions::default()).unwrap();
    assert!(report.ok(), "{:?}", report.failures);
    let restored: Vec<u64> = Store::open_for_reading(&db)
        .unwrap()
        .receipts(0, 100)
        .unwrap()
        .iter()
        .filter_map(|r| r.receipt().unwrap().tokens.map(|t| t.restored))
        .filter(|&n| n > 0)
        .collect();
    assert_eq!(restored, vec![a_prompt, s1.tokens.state]);
}

#[test]
fn corrupt_blob_is_deleted_and_the_state_prefilled() {
    isolated::run(
        "corrupt_blob_is_deleted_and_the_state_prefilled_in_child",
        &[],
    );
}

#[tokio::test]
#[ignore = "run by corrupt_blob_is_deleted_and_the_state_prefilled in a child process"]
async fn corrupt_blob_is_deleted_and_the_state_prefilled_in_child() {
    if !isolated::is_child("corrupt_blob_is_deleted_and_the_state_prefilled_in_child") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let base = {
        let pack = StatePack::new(engine().await, Store::open(&db, key()).unwrap());
        let base = pack.create(BASE).await.unwrap();
        pack.close().unwrap();
        base
    };
    let path = state_pack::kv_blob::KvBlobStore::dir_for_database(&db)
        .join(format!("{}.kv", base.output.to_hex()));
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let pack = StatePack::new(engine().await, Store::open(&db, key()).unwrap());
    let out = pack
        .infer(&base.output, &turn(D1), &Sampling::greedy(4))
        .await
        .unwrap();
    assert_eq!(out.report.tokens.restored, 0);
    assert_eq!(out.report.tokens.reused, 0);
    assert_eq!(
        out.report.tokens.prefilled,
        out.report.tokens.state - out.generated.len() as u64
    );
    // The corrupt blob was removed rather than tried again.
    assert!(!pack.kv_blobs().unwrap().contains(&base.output));
    pack.close().unwrap();
}

#[test]
fn constrained_seeded_and_bad_input() {
    isolated::run("constrained_seeded_and_bad_input_in_child", &[]);
}

#[tokio::test]
#[ignore = "run by constrained_seeded_and_bad_input in a child process"]
async fn constrained_seeded_and_bad_input_in_child() {
    if !isolated::is_child("constrained_seeded_and_bad_input_in_child") {
        return;
    }
    let engine = engine().await;
    let prompt = engine
        .tokenize(&format!(
            "{BASE}{}",
            turn("Call the lookup tool for clause 14.5.")
        ))
        .await
        .unwrap();
    // A JSON-schema-constrained tool call parses and matches the schema's shape.
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "tool": {"type": "string", "enum": ["clause_lookup", "search"]},
            "clause": {"type": "string"}
        },
        "required": ["tool", "clause"],
        "additionalProperties": false
    });
    let g = engine
        .generate(
            &prompt,
            &Sampling::greedy(48).constrained(Grammar::JsonSchema(schema)),
        )
        .await
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&g.text).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", g.text));
    assert!(["clause_lookup", "search"].contains(&v["tool"].as_str().unwrap()));
    assert!(v["clause"].is_string());

    // A Lark grammar.
    let g = engine
        .generate(
            &prompt,
            &Sampling::greedy(8).constrained(Grammar::Lark(r#"start: "yes" | "no""#.into())),
        )
        .await
        .unwrap();
    assert!(g.text == "yes" || g.text == "no", "{:?}", g.text);

    // Seeded sampling: the same seed gives the same tokens, hot (prefix reused) or cold.
    let s = Sampling::seeded(7, 0.9, 0.95, 12);
    let hot = engine.generate(&prompt, &s).await.unwrap();
    assert!(hot.usage.reused > 0);
    // The cold engine also runs on one persistent thread pool (paused between the two
    // generations): the same tokens as the default's per-decode threads.
    let cold_engine = LlamaCppEngine::load(
        &model_path(),
        LlamaCppOptions {
            slots: 0,
            thread_pool: true,
            ..LlamaCppOptions::default()
        },
    )
    .await
    .unwrap();
    let cold = cold_engine.generate(&prompt, &s).await.unwrap();
    assert_eq!(cold.usage.reused, 0);
    assert_eq!(hot.tokens, cold.tokens);
    let again = cold_engine.generate(&prompt, &s).await.unwrap();
    assert_eq!(hot.tokens, again.tokens);

    // Bad input is an error, never an abort inside llama.cpp.
    assert!(engine.generate(&[], &Sampling::greedy(4)).await.is_err());
    assert!(engine
        .generate(&[1, 2, u32::MAX], &Sampling::greedy(4))
        .await
        .is_err());
    assert!(engine
        .generate(&prompt, &Sampling::greedy(1_000_000))
        .await
        .is_err());
    assert!(engine
        .generate(
            &prompt,
            &Sampling::greedy(4).constrained(Grammar::Lark("start: (".into()))
        )
        .await
        .is_err());
    // Bytes that are not a KV state are refused, not loaded.
    assert!(!engine
        .import_kv(&prompt, vec![b"not a kv state".to_vec()])
        .await
        .unwrap_or(false));
    // The engine still works afterwards.
    assert!(engine.generate(&prompt, &Sampling::greedy(2)).await.is_ok());
}

#[test]
fn concurrent_generations_match_sequential_ones() {
    isolated::run("concurrent_generations_match_sequential_ones_in_child", &[]);
}

/// Generations batched together (continuous batching) give each request the tokens it gets
/// alone, with its own prefill and reuse counts.
#[tokio::test]
#[ignore = "run by concurrent_generations_match_sequential_ones in a child process"]
async fn concurrent_generations_match_sequential_ones_in_child() {
    if !isolated::is_child("concurrent_generations_match_sequential_ones_in_child") {
        return;
    }
    let questions = [D1, D2, "Who pays the early-termination fee?"];
    let alone = engine().await;
    let mut prompts = Vec::new();
    for q in questions {
        prompts.push(alone.tokenize(&format!("{BASE}{}", turn(q))).await.unwrap());
    }
    // A greedy generation and a grammar-constrained one, each request alone...
    let sampling = |i: usize| {
        if i == 1 {
            Sampling::greedy(12).constrained(Grammar::Lark(r#"start: "yes" | "no""#.into()))
        } else {
            Sampling::greedy(12)
        }
    };
    // ...and all at once on another engine.
    let together = engine().await;
    let batched = common::concurrency::batched_match_sequential(
        &*alone,
        Arc::clone(&together),
        &prompts,
        sampling,
    )
    .await;
    assert_eq!(alone.peak_concurrency(), 1);
    assert!(
        together.peak_concurrency() >= 2,
        "the generations ran one at a time"
    );
    assert!(batched[1].text == "yes" || batched[1].text == "no");
}

#[test]
fn a_kv_budget_bounds_the_states_held_at_once() {
    isolated::run("a_kv_budget_bounds_the_states_held_at_once_in_child", &[]);
}

#[tokio::test]
#[ignore = "run by a_kv_budget_bounds_the_states_held_at_once in a child process"]
async fn a_kv_budget_bounds_the_states_held_at_once_in_child() {
    if !isolated::is_child("a_kv_budget_bounds_the_states_held_at_once_in_child") {
        return;
    }
    let per_token = engine().await.info().kv_bytes_per_token as u64;
    let with_budget = |tokens: u64| async move {
        LlamaCppEngine::load(
            &model_path(),
            LlamaCppOptions {
                slots: 4,
                batch: 64,
                kv_budget_bytes: tokens * per_token,
                ..LlamaCppOptions::default()
            },
        )
        .await
    };
    // Two unrelated states of ~300 tokens each (the same words, different first token).
    let e = with_budget(700).await.expect("a 700-token budget");
    let a = e.tokenize(&format!("A{}", BASE.repeat(12))).await.unwrap();
    let b = e.tokenize(&format!("B{}", BASE.repeat(12))).await.unwrap();
    assert!(
        a.len() > 250 && b.len() > 250 && a.len() + b.len() < 700,
        "{} {}",
        a.len(),
        b.len()
    );
    e.prefill(&a).await.unwrap();
    e.prefill(&b).await.unwrap();
    // Both fit 700 tokens of KV: both stay hot.
    assert_eq!(e.hot_prefix_len(&a), a.len());
    assert_eq!(e.hot_prefix_len(&b), b.len());
    drop(e);

    let e = with_budget(a.len() as u64 + 80)
        .await
        .expect("a smaller budget");
    e.prefill(&a).await.unwrap();
    e.prefill(&b).await.unwrap();
    // Only one fits: the least recently used went to make room.
    assert_eq!(e.hot_prefix_len(&b), b.len());
    assert_eq!(e.hot_prefix_len(&a), 0);
    drop(e);

    // A budget below one prefill batch is refused in words, not by llama.cpp.
    let err = with_budget(10)
        .await
        .err()
        .expect("a 10-token budget is refused");
    assert!(err.to_string().contains("KV budget"), "{err}");
}

#[test]
fn more_decoding_generations_than_one_cpu_call_takes() {
    isolated::run(
        "more_decoding_generations_than_one_cpu_call_takes_in_child",
        &[],
    );
}

/// From 64 decoding sequences on, the CPU engine runs their tokens in calls of at most 63,
/// taking turns (ggml's tiled attention would otherwise attend over every sequence's cells):
/// with 70 generations at once, each request still gets the tokens it gets alone.
#[tokio::test]
#[ignore = "run by more_decoding_generations_than_one_cpu_call_takes in a child process"]
async fn more_decoding_generations_than_one_cpu_call_takes_in_child() {
    if !isolated::is_child("more_decoding_generations_than_one_cpu_call_takes_in_child") {
        return;
    }
    const N: usize = 70;
    let load = || async {
        Arc::new(
            LlamaCppEngine::load(
                &model_path(),
                LlamaCppOptions {
                    slots: N,
                    // Cells for all of them at once (~185 tokens each).
                    context: 16_384,
                    ..LlamaCppOptions::default()
                },
            )
            .await
            .unwrap(),
        )
    };
    // A number repeated, which the model goes on repeating with a wide margin: llama.cpp's
    // logits differ in their last bits between batch sizes (a counting prompt's greedy
    // continuation drifted apart after ~25 tokens), but a sequence that attended to another
    // one's cells would write the other number.
    let together = load().await;
    let mut prompts = Vec::new();
    for i in 0..N {
        let text = vec![format!("{}", i + 100); 6].join(" ");
        prompts.push(together.tokenize(&text).await.unwrap());
    }
    // Long enough that the first is still decoding when the last prompt has been prefilled
    // (one prompt a call, two once they take turns with the decodes).
    let sampling = Sampling::greedy(160);
    let runs: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (e, p, s) = (Arc::clone(&together), p.clone(), sampling.clone());
            tokio::spawn(async move { e.generate(&p, &s).await })
        })
        .collect();
    let mut batched = Vec::new();
    for r in runs {
        batched.push(r.await.unwrap().unwrap());
    }
    assert!(
        together.peak_decoding() >= 64,
        "only {} decoding at once",
        together.peak_decoding()
    );
    assert_eq!(together.peak_decode_batch(), 63);
    for (p, g) in prompts.iter().zip(&batched) {
        assert_eq!(g.usage.prefilled + g.usage.reused, p.len());
        assert_eq!(g.usage.generated, g.tokens.len());
    }
    // Every seventh alone, on an engine of its own.
    let alone = load().await;
    for i in (0..N).step_by(7) {
        let g = alone.generate(&prompts[i], &sampling).await.unwrap();
        assert_eq!(
            g.tokens, batched[i].tokens,
            "request {i}: {:?} vs {:?}",
            g.text, batched[i].text
        );
    }
}
