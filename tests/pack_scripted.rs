//! The pack's accounting and its failure paths on the scripted engine (feature `testing`):
//! what was prefilled, reused and restored, replays, and that an operation that fails writes
//! nothing. Fast and offline; what a real model computes is tested in `pack_real_model.rs`.

mod common;

use std::sync::Arc;

use state_pack::engine::scripted::{Fault, Reply, ScriptedEngine, ScriptedOptions};
use state_pack::engine::{Engine, Sampling};
use state_pack::ledger::{Signer, VerifyOptions};
use state_pack::pack::PackError;
use state_pack::{StatePack, Store};

fn key() -> Signer {
    Signer::from_seed([21; 32])
}

fn pack_with(engine: Arc<ScriptedEngine>, store: Store) -> StatePack {
    StatePack::new(engine, store)
}

fn in_memory(engine: Arc<ScriptedEngine>) -> StatePack {
    pack_with(engine, common::db::throwaway(key()))
}

/// An engine whose KV can be exported, so an on-disk pack keeps blobs.
fn kv_engine() -> Arc<ScriptedEngine> {
    Arc::new(ScriptedEngine::new(
        Reply::Fixed("fine".into()),
        ScriptedOptions {
            kv_export: true,
            ..ScriptedOptions::default()
        },
    ))
}

const BASE: &str = "<|im_start|>system\nYou are terse.<|im_end|>\n";
const TURN: &str = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";

#[tokio::test]
async fn create_merge_infer_account_what_the_engine_did() {
    let engine = Arc::new(ScriptedEngine::replying("hello"));
    let pack = in_memory(engine.clone());
    let base_len = ScriptedEngine::encode(BASE).len() as u64;
    let turn_len = ScriptedEngine::encode(TURN).len() as u64;

    let base = pack.create(BASE).await.unwrap();
    assert!(base.engine_called);
    assert_eq!((base.tokens.prefilled, base.tokens.reused), (base_len, 0));
    // The same base again is the same state, already hot: nothing runs.
    let again = pack.create(BASE).await.unwrap();
    assert_eq!(again.output, base.output);
    assert!(!again.engine_called);
    assert_eq!(again.tokens.prefilled, 0);
    assert_eq!(engine.calls().prefills, 1);

    let merged = pack.merge(&base.output, TURN).await.unwrap();
    assert_eq!(merged.tokens.delta, turn_len);
    assert_eq!(merged.tokens.state, base_len + turn_len);
    assert_eq!(
        (merged.tokens.prefilled, merged.tokens.reused),
        (turn_len, base_len),
        "only the delta runs"
    );

    let out = pack
        .infer(&merged.output, "x", &Sampling::greedy(16))
        .await
        .unwrap();
    assert_eq!(out.text, "hello");
    let t = out.report.tokens;
    assert_eq!((t.prefilled, t.reused), (1, base_len + turn_len));
    assert_eq!(
        t.generated,
        "hello".len() as u64 + 1,
        "the reply and its end-of-turn token"
    );
    assert_eq!(t.state, base_len + turn_len + 1 + t.generated);

    // Every figure above is in the signed log, and the log verifies.
    let totals = pack.totals().unwrap();
    assert_eq!(totals.operations, 4);
    assert_eq!(
        totals.prefilled,
        base_len + turn_len + 1,
        "the repeated create prefilled nothing"
    );
}

#[tokio::test]
async fn a_cold_state_is_prefilled_again_in_full() {
    let engine = Arc::new(ScriptedEngine::replying("ok"));
    let pack = in_memory(engine.clone());
    let base = pack.create(BASE).await.unwrap();
    engine.evict_all();
    let merged = pack.merge(&base.output, TURN).await.unwrap();
    assert!(!merged.input_was_hot);
    assert_eq!(merged.tokens.reused, 0);
    assert_eq!(merged.tokens.prefilled, merged.tokens.state);
}

#[tokio::test]
async fn a_failed_engine_call_writes_nothing() {
    let engine = Arc::new(ScriptedEngine::replying("ok"));
    let pack = in_memory(engine.clone());
    let base = pack.create(BASE).await.unwrap();
    let receipts = pack.with_store(|s| s.receipt_count().unwrap());
    let states = pack.with_store(|s| s.state_count().unwrap());

    engine.fail_next(Fault::Failed("the device fell over".into()));
    let err = pack
        .infer(&base.output, TURN, &Sampling::greedy(4))
        .await
        .expect_err("the engine failed");
    assert!(err.to_string().contains("the device fell over"), "{err}");
    engine.fail_next(Fault::Rejected("no".into()));
    assert!(pack.merge(&base.output, TURN).await.is_err());

    assert_eq!(pack.with_store(|s| s.receipt_count().unwrap()), receipts);
    assert_eq!(pack.with_store(|s| s.state_count().unwrap()), states);
    // And the pack still works.
    pack.merge(&base.output, TURN).await.unwrap();
}

#[tokio::test]
async fn bad_input_is_refused_before_the_engine_runs() {
    let engine = Arc::new(ScriptedEngine::new(
        Reply::Fixed("ok".into()),
        ScriptedOptions {
            context_window: 64,
            ..ScriptedOptions::default()
        },
    ));
    let pack = in_memory(engine.clone());
    let base = pack.create("short base").await.unwrap();
    let before = engine.calls();
    let receipts = pack.with_store(|s| s.receipt_count().unwrap());

    let long = "y".repeat(100);
    assert!(matches!(
        pack.merge(&base.output, &long).await,
        Err(PackError::ContextOverflow { .. })
    ));
    assert!(matches!(
        pack.merge(&base.output, "").await,
        Err(PackError::EmptyDelta)
    ));
    let unknown = state_pack::StateHash::from_bytes([7; 32]);
    assert!(matches!(
        pack.merge(&unknown, "z").await,
        Err(PackError::UnknownState(_))
    ));
    assert_eq!(engine.calls(), before, "the engine was never called");
    assert_eq!(pack.with_store(|s| s.receipt_count().unwrap()), receipts);
}

#[tokio::test]
async fn a_deterministic_infer_is_replayed_from_the_store() {
    let engine = Arc::new(ScriptedEngine::new(
        Reply::queue(["first answer", "a different answer"]),
        ScriptedOptions::default(),
    ));
    let pack = in_memory(engine.clone());
    let base = pack.create(BASE).await.unwrap();
    let sampling = Sampling::greedy(32);
    let first = pack
        .infer_or_replay(&base.output, TURN, &sampling)
        .await
        .unwrap();
    let again = pack
        .infer_or_replay(&base.output, TURN, &sampling)
        .await
        .unwrap();
    assert_eq!(
        engine.calls().generates,
        1,
        "the second was answered from the store"
    );
    assert_eq!(again.text, "first answer");
    assert_eq!(again.report.output, first.report.output);
    assert_eq!(again.report.replay_of, Some(first.report.seq));
    assert!(!again.report.engine_called);
    assert_eq!(
        (again.report.tokens.prefilled, again.report.tokens.generated),
        (0, 0)
    );
}

/// An operation's reported time is what its caller waited, each part counted once: the KV
/// export (40 ms here, like every engine call) is in `save` and once in `total`, so `total`
/// never exceeds the wall clock around the call and the split adds up within it.
#[tokio::test]
async fn an_operation_counts_its_kv_export_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let call = std::time::Duration::from_millis(40);
    let engine = Arc::new(ScriptedEngine::new(
        Reply::Fixed("fine".into()),
        ScriptedOptions {
            kv_export: true,
            latency: call,
            ..ScriptedOptions::default()
        },
    ));
    let pack = common::db::pack(engine, &db, key());
    let base = pack.create(BASE).await.unwrap();
    let started = std::time::Instant::now();
    let out = pack
        .infer(&base.output, TURN, &Sampling::greedy(8))
        .await
        .unwrap();
    let waited = started.elapsed();
    let t = out.report.timings;
    assert!(t.save >= call, "the export is in save: {t:?}");
    assert!(
        t.total <= waited,
        "total {:?} is more than the {waited:?} the caller waited: {t:?}",
        t.total
    );
    assert!(
        t.prefill + t.decode + t.restore + t.save + t.overhead <= t.total,
        "the parts exceed the total: {t:?}"
    );
}

#[tokio::test]
async fn a_state_comes_back_from_its_kv_blob_and_the_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let engine = kv_engine();
    let (state, state_len) = {
        let pack = common::db::pack(engine.clone(), &db, key());
        assert!(pack.kv_blobs().is_some(), "an on-disk store keeps blobs");
        let base = pack.create(BASE).await.unwrap();
        let out = pack
            .infer(&base.output, TURN, &Sampling::greedy(8))
            .await
            .unwrap();
        (out.report.output, out.report.tokens.state)
    };
    // A restarted engine holds nothing; the pack loads the state from its blobs.
    engine.evict_all();
    let pack = common::db::pack(engine.clone(), &db, key());
    let next = pack.merge(&state, "more").await.unwrap();
    let t = next.tokens;
    assert!(t.restored > 0, "restored from blobs: {t:?}");
    assert!(t.restored <= t.reused);
    assert_eq!(t.prefilled + t.reused, t.state);
    assert!(
        t.prefilled < state_len,
        "less than the whole state ran again: {t:?}"
    );
    assert_eq!(engine.calls().imports, 1);
    drop(pack);

    let report = common::db::verify(
        &db,
        &VerifyOptions {
            trusted_keys: vec![key().public_key()],
            trusted_checkpoint: None,
            witnesses: Vec::new(),
        },
    );
    assert!(report.ok(), "{:#?}", report.failures);
}

/// Anyone who can write `<db>.kv/` can write a well-formed blob with a matching header hash;
/// the engine must still never see bytes the signed log does not vouch for.
#[tokio::test]
async fn a_blob_the_log_does_not_vouch_for_is_deleted_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let engine = kv_engine();
    let base = {
        let pack = common::db::pack(engine.clone(), &db, key());
        pack.create(BASE).await.unwrap().output
    };
    engine.evict_all();
    let pack = common::db::pack(engine.clone(), &db, key());
    let blobs = pack.kv_blobs().unwrap().clone();
    assert!(blobs.contains(&base));
    // Replace the blob: a valid file for the same state and range, other bytes.
    let tokens = pack.tokens(&base).unwrap();
    let model = engine.info().fingerprint;
    let mut forged = b"SCRIPTKV".to_vec();
    forged.extend_from_slice(&0u64.to_le_bytes());
    forged.extend(tokens.iter().map(|t| t ^ 1).flat_map(|t| t.to_le_bytes()));
    let end = blobs.end_of(&base).unwrap();
    blobs.put(&base, &model, None, 0..end, &forged).unwrap();

    let merged = pack.merge(&base, "next").await.unwrap();
    assert_eq!(
        merged.tokens.restored, 0,
        "nothing restored from the forged blob"
    );
    assert_eq!(merged.tokens.reused, 0, "the state was prefilled again");
    assert!(!blobs.contains(&base), "the forged blob is deleted");
    assert_eq!(engine.calls().imports, 0);
}

/// A whole prompt continues from the longest stored state it begins with; a repeated one is
/// answered from the store; a reply re-sent as text gives back the ids that were sampled.
#[tokio::test]
async fn whole_prompts_continue_from_their_longest_stored_prefix() {
    let engine = Arc::new(ScriptedEngine::replying("hello"));
    let pack = in_memory(engine.clone());
    let first: Vec<u32> = ScriptedEngine::encode(&format!("{BASE}{TURN}"));
    let base_len = ScriptedEngine::encode(BASE).len();
    let greedy = Sampling::greedy(16);

    let done = pack
        .continue_prompt(&first, base_len, &greedy, None)
        .await
        .unwrap();
    assert_eq!(done.matched, None);
    let base = done
        .base
        .as_ref()
        .expect("a base state for a new beginning");
    assert_eq!(base.tokens.state as usize, base_len);
    assert_eq!(done.inference.report.input, Some(base.output));
    assert_eq!(done.inference.text, "hello");
    assert_eq!(done.prefilled() as usize, first.len());

    // The ids sampled for "hello" come back for the same prompt and text, not for others.
    let sampled = pack.sampled_reply(&first, " hello ").unwrap().unwrap();
    assert_eq!(sampled, done.inference.generated);
    assert!(pack.sampled_reply(&first, "hullo").unwrap().is_none());
    assert!(pack
        .sampled_reply(&first[..first.len() - 1], "hello")
        .unwrap()
        .is_none());

    // The next turn: the stored answer is found whole and only the new turn runs.
    let mut second = first.clone();
    second.extend(&done.inference.generated);
    let next = ScriptedEngine::encode(&format!("\n{TURN}"));
    second.extend(&next);
    let more = pack
        .continue_prompt(&second, base_len, &greedy, None)
        .await
        .unwrap();
    let stored = first.len() + done.inference.generated.len();
    assert_eq!(more.matched, Some((done.inference.report.output, stored)));
    assert!(more.base.is_none());
    assert!(more.prefilled() as usize <= next.len() + 1);

    // The same prompt again: from the store, no engine.
    let generates = engine.calls().generates;
    let again = pack
        .replay_prompt(&second, &greedy)
        .unwrap()
        .expect("a replay");
    assert_eq!(again.inference.report.output, more.inference.report.output);
    assert!(again.inference.report.replay_of.is_some());
    assert_eq!(engine.calls().generates, generates);
    // One token is no prompt.
    assert!(matches!(
        pack.continue_prompt(&first[..1], 1, &greedy, None).await,
        Err(PackError::InvalidParameters(_))
    ));
}

/// Identical operations that arrive together run once (single flight): concurrent creates
/// of one base prefill it once, concurrent identical deterministic infers generate once and
/// the others are replays of it. The engine takes 50 ms a call, so without single flight
/// every request would find nothing hot or stored and call it.
#[tokio::test]
async fn identical_concurrent_operations_run_once() {
    let engine = Arc::new(ScriptedEngine::new(
        Reply::queue(["the answer", "another", "another", "another"]),
        ScriptedOptions {
            latency: std::time::Duration::from_millis(50),
            ..ScriptedOptions::default()
        },
    ));
    let pack = Arc::new(in_memory(engine.clone()));
    let creates: Vec<_> = (0..4)
        .map(|_| {
            let pack = pack.clone();
            tokio::spawn(async move { pack.create(BASE).await })
        })
        .collect();
    let mut bases = Vec::new();
    for c in creates {
        bases.push(c.await.unwrap().unwrap());
    }
    assert_eq!(engine.calls().prefills, 1, "the base was prefilled once");
    assert_eq!(bases.iter().filter(|b| b.engine_called).count(), 1);
    assert!(bases.iter().all(|b| b.output == bases[0].output));

    let state = bases[0].output;
    let infers: Vec<_> = (0..4)
        .map(|_| {
            let pack = pack.clone();
            tokio::spawn(async move {
                pack.infer_or_replay(&state, TURN, &Sampling::greedy(8))
                    .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for i in infers {
        answers.push(i.await.unwrap().unwrap());
    }
    assert_eq!(engine.calls().generates, 1, "generated once");
    let texts: Vec<&str> = answers.iter().map(|a| a.text.as_str()).collect();
    assert!(texts.iter().all(|t| *t == texts[0]), "{texts:?}");
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.report.replay_of.is_some())
            .count(),
        3
    );
    // Different requests still run side by side.
    let other = pack
        .infer_or_replay(&state, "something else", &Sampling::greedy(8))
        .await
        .unwrap();
    assert!(other.report.engine_called);
}
