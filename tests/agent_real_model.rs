//! `AgentLoop` on the real model: constrained steps always parse, each step prefills only
//! its delta, tool failures become observations, compaction is receipted, and every
//! operation verifies.

mod common;

use std::sync::Arc;

use common::tools::Clumsy;
use common::*;
use serde_json::json;
use state_pack::agent::{Action, AgentLoop, Decoding, StopReason};
use state_pack::compaction::{CompactionPolicy, CompactionStrategy};
use state_pack::engine::Grammar;
use state_pack::ledger::{Receipt, ReceiptOp};
use state_pack::legal::LegalAgent;
use state_pack::StatePack;

fn verify_ok(db: &std::path::Path, receipts: u64) {
    assert_eq!(verified(db), receipts + 1);
}

fn close(pack: Arc<StatePack>) {
    pack.close().unwrap();
    drop(pack);
}

#[tokio::test(flavor = "multi_thread")]
async fn constrained_steps_parse_and_prefill_only_their_delta() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let pack = Arc::new(pack_at(&db).await);
    let agent = AgentLoop::new(pack.clone(), LegalAgent)
        .max_steps(4)
        .answer_from_step(2);
    let report = agent
        .run("What is the liability cap in clause 14.5 of NSA-2021-044?")
        .await
        .unwrap();
    // The default model may repeat its first call until the loop guard stops it.
    assert!(
        matches!(
            report.stop,
            StopReason::Answer | StopReason::MaxSteps | StopReason::Stuck { .. }
        ),
        "{:?}",
        report.stop
    );
    // Step 1 may only call tools; the grammar makes it a valid call of a known tool.
    let first = &report.steps[0];
    let Ok(Action::Calls(calls)) = &first.action else {
        panic!("step 1 is not a tool call: {:?}", first.output);
    };
    assert!(calls
        .iter()
        .all(|c| c.tool == "clause_lookup" || c.tool == "multiply"));
    assert!(
        first
            .results
            .iter()
            .all(|r| !r.output.contains("invalid arguments")),
        "{:?}",
        first.results
    );
    for s in &report.steps {
        assert!(
            s.action.is_ok(),
            "step {} did not parse: {:?}",
            s.number,
            s.output
        );
        let t = &s.report.tokens;
        // Hot input: the engine prefills the delta and at most the one token before it.
        assert!(s.report.input_was_hot, "step {}", s.number);
        assert!(t.prefilled <= t.delta + 1, "step {}: {t:?}", s.number);
    }
    drop(agent);
    close(pack);
    verify_ok(&db, report.receipts.1);
}

/// 50 steps, all tool calls (answers are held back until the last step), compacted every 10
/// steps: every output parses, every call names a known tool with arguments its type
/// accepts, every compaction is a verified `compact` receipt that shrank the context.
#[tokio::test(flavor = "multi_thread")]
async fn fifty_constrained_steps_all_parse_and_compaction_is_receipted() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent50.db");
    let pack = Arc::new(pack_at(&db).await);
    let agent = AgentLoop::new(pack.clone(), LegalAgent)
        .max_steps(50)
        .answer_from_step(50)
        // A soak test of compaction: repeated calls run again instead of stopping the run.
        .max_repeats(0)
        .compaction(
            // Periodic only: the cost model's timing-dependent decisions are measured by
            // `state-pack agent`, not asserted here.
            CompactionPolicy {
                every_steps: Some(10),
                cost: None,
                ..CompactionPolicy::default()
            },
            CompactionStrategy::Both {
                keep_last: 2,
                keep_turns: 4,
                max_tokens: 32,
            },
        );
    let mut compacted_events = 0;
    let report = agent
        .run_with_events(
            "Read clause 9.2 of NSA-2021-044, then clause 4.1 of SC-2019-112.",
            |e| {
                if let state_pack::agent::AgentEvent::Compacted(_) = e {
                    compacted_events += 1
                }
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(report.stop, StopReason::Answer | StopReason::MaxSteps),
        "{:?}",
        report.stop
    );
    assert_eq!(report.steps.len(), 50);
    for s in &report.steps {
        match &s.action {
            Ok(Action::Calls(_)) => {
                for r in &s.results {
                    assert!(
                        !r.output.contains("invalid arguments")
                            && !r.output.contains("unknown tool"),
                        "step {}: {:?}",
                        s.number,
                        r
                    );
                }
            }
            Ok(Action::Answer(_)) => assert_eq!(s.number, 50, "answer before step 50"),
            Err(e) => panic!("step {} did not parse: {e}: {:?}", s.number, s.output),
        }
    }
    assert!(
        report.compactions.len() >= 4,
        "{}",
        report.compactions.len()
    );
    assert_eq!(compacted_events, report.compactions.len());
    for c in &report.compactions {
        assert!(
            c.tokens_after < c.tokens_before,
            "{} -> {}",
            c.tokens_before,
            c.tokens_after
        );
        assert_eq!(c.report.input, Some(c.replaced));
    }
    // The receipts say what each compaction did; the summary's hash matches its text.
    let stored = pack
        .with_store(|s| s.receipts(report.receipts.0, report.receipts.1 + 1))
        .unwrap();
    let compacts: Vec<Receipt> = stored
        .iter()
        .map(|r| Receipt::from_body(&r.body).unwrap())
        .filter(|r| r.op == ReceiptOp::Compact)
        .collect();
    assert_eq!(compacts.len(), report.compactions.len());
    for (r, c) in compacts.iter().zip(&report.compactions) {
        let policy = r
            .policy
            .as_ref()
            .expect("compact receipts carry their policy");
        assert_eq!(policy["strategy"]["kind"], "both");
        assert_eq!(policy["trigger"]["trigger"], "every_steps");
        if let Some(summary) = &c.summary {
            use sha2::Digest;
            let h = hex::encode(sha2::Sha256::digest(summary.as_bytes()));
            assert_eq!(policy["summary_sha256"], json!(h));
        }
    }
    // Compaction keeps the context short.
    assert!(report.peak_context < 2000, "peak {}", report.peak_context);
    drop(agent);
    close(pack);
    verify_ok(&db, report.receipts.1);
}

/// An unknown tool, invalid arguments and a panicking tool, generated by the real model
/// under a grammar that allows exactly those mistakes: each becomes an error observation
/// and the loop goes on to its step limit.
#[tokio::test(flavor = "multi_thread")]
async fn tool_failures_become_observations_and_the_loop_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("clumsy.db");
    let pack = Arc::new(pack_at(&db).await);
    let call = |tool: &str, args: serde_json::Value| {
        json!({"type": "object", "properties": {"tool": {"const": tool}, "args": args},
               "required": ["tool", "args"], "additionalProperties": false})
    };
    let empty = json!({"type": "object", "properties": {}, "additionalProperties": false});
    let bad_multiply = json!({"type": "object",
        "properties": {"a": {"type": "string", "maxLength": 8}, "b": {"type": "integer"}},
        "required": ["a", "b"], "additionalProperties": false});
    let schema = json!({"x-guidance": {"whitespace_flexible": false},
        "type": "object", "required": ["calls"], "additionalProperties": false,
        "properties": {"calls": {"type": "array", "minItems": 3, "maxItems": 3,
            "prefixItems": [call("ghost", empty.clone()), call("multiply", bad_multiply), call("panics", empty)],
            "items": false}}});
    // The grammar forces the same three calls every step: the loop guard is off so that each
    // one really runs (and fails) every time.
    let agent = AgentLoop::new(pack.clone(), Clumsy)
        .max_steps(3)
        .max_repeats(0)
        .decoding(Decoding::Grammar(Grammar::Lark(format!(
            "start: action <|im_end|>\naction: %json {schema}\n"
        ))));
    let report = agent.run("Multiply two numbers.").await.unwrap();
    assert_eq!(report.stop, StopReason::MaxSteps);
    assert_eq!(report.steps.len(), 3);
    for s in &report.steps {
        let outs: Vec<&str> = s.results.iter().map(|r| r.output.as_str()).collect();
        assert_eq!(outs.len(), 3, "step {}: {:?}", s.number, s.output);
        assert!(outs[0].contains("unknown tool \"ghost\""), "{outs:?}");
        assert!(
            outs[1].contains("invalid arguments for multiply"),
            "{outs:?}"
        );
        assert!(outs[2].contains("panics crashed"), "{outs:?}");
        assert!(s.results.iter().all(|r| !r.ok));
    }
    // The next step saw the errors: its delta is the observation.
    assert!(report.steps[1].report.tokens.delta > 20);
    drop(agent);
    close(pack);
    verify_ok(&db, report.receipts.1);
}
