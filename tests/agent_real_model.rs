//! `AgentLoop` on the real model: constrained steps always parse, each step prefills only
//! its delta, and every operation is receipted.

mod common;

use std::sync::Arc;

use common::*;
use state_pack::agent::legal::LegalAgent;
use state_pack::agent::{AgentLoop, StopReason};
use state_pack::ledger::{verify_file, VerifyOptions};

#[tokio::test(flavor = "multi_thread")]
async fn constrained_steps_parse_and_prefill_only_their_delta() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    let pack = Arc::new(pack_at(&db).await);
    let agent = AgentLoop::new(pack.clone(), LegalAgent).max_steps(4);
    let report = agent
        .run("What is the liability cap in clause 14.5 of NSA-2021-044?")
        .await
        .unwrap();
    assert!(!report.steps.is_empty());
    assert!(
        matches!(report.stop, StopReason::Answer | StopReason::MaxSteps),
        "{:?}",
        report.stop
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
    pack.close().unwrap();
    drop(pack);
    let v = verify_file(
        &db,
        &VerifyOptions {
            trusted_keys: vec![key().public_key()],
            trusted_checkpoint: None,
        },
    )
    .unwrap();
    assert!(v.ok(), "{:#?}", v.failures);
    assert_eq!(v.receipts, report.receipts.1 + 1);
}
