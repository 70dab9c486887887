//! The agent loop's failure paths on the scripted engine (feature `testing`): tool calls that
//! go wrong, output that is not an action, an answer the agent refuses, the step limit and a
//! context window that fills up. Fast and offline; `agent_real_model.rs` runs the real model.

mod common;

use std::sync::Arc;

use common::tools::Clumsy;
use state_pack::agent::{AgentLoop, StopReason};
use state_pack::engine::scripted::{Fault, Reply, ScriptedEngine, ScriptedOptions};
use state_pack::ledger::Signer;
use state_pack::StatePack;

fn scripted_pack(
    replies: Reply,
    options: ScriptedOptions,
) -> (Arc<StatePack>, Arc<ScriptedEngine>) {
    let engine = Arc::new(ScriptedEngine::new(replies, options));
    let store = common::db::throwaway(Signer::from_seed([8; 32]));
    (Arc::new(StatePack::new(engine.clone(), store)), engine)
}

#[tokio::test]
async fn every_failure_becomes_an_observation_and_the_loop_reaches_its_answer() {
    let (pack, engine) = scripted_pack(
        Reply::queue([
            r#"{"calls":[{"tool":"ghost","args":{}},{"tool":"multiply","args":{"a":"x","b":2}},{"tool":"panics","args":{}}]}"#,
            "I think the answer is six.",
            r#"{"answer":"too soon"}"#,
            r#"{"calls":[{"tool":"multiply","args":{"a":2,"b":3}}]}"#,
            r#"{"answer":"6"}"#,
        ]),
        ScriptedOptions::default(),
    );
    let mut agent = AgentLoop::new(pack.clone(), Clumsy).max_steps(10);
    // One byte, one token: the first reply is ~130 tokens.
    agent.max_tokens_per_step = 256;
    let report = agent.run("Multiply two and three.").await.unwrap();
    assert_eq!(report.stop, StopReason::Answer);
    assert_eq!(report.answer.as_deref(), Some("6"));
    assert_eq!(report.steps.len(), 5);

    let outs: Vec<&str> = report.steps[0]
        .results
        .iter()
        .map(|r| r.output.as_str())
        .collect();
    assert!(outs[0].contains("unknown tool \"ghost\""), "{outs:?}");
    assert!(
        outs[1].contains("invalid arguments for multiply"),
        "{outs:?}"
    );
    assert!(outs[2].contains("panics crashed"), "{outs:?}");
    assert!(report.steps[0].results.iter().all(|r| !r.ok));
    assert!(report.steps[1].action.is_err(), "prose is not an action");
    assert_eq!(
        report.steps[2].answer_refused.as_deref(),
        Some("check the product first")
    );
    assert_eq!(report.steps[3].results[0].output, "6");
    assert!(report.steps[3].results[0].ok);
    // Each step after the first prefilled only its new observation: the state stayed hot.
    for s in &report.steps[1..] {
        let t = s.report.tokens;
        assert!(
            t.reused > 0 && t.prefilled < t.reused,
            "step {}: {t:?}",
            s.number
        );
    }
    assert_eq!(engine.calls().generates, 5);
}

#[tokio::test]
async fn the_step_limit_and_a_full_window_stop_the_loop() {
    let call = r#"{"calls":[{"tool":"multiply","args":{"a":2,"b":3}}]}"#;
    let (pack, _) = scripted_pack(Reply::Fixed(call.into()), ScriptedOptions::default());
    let report = AgentLoop::new(pack, Clumsy)
        .max_steps(3)
        .max_repeats(0)
        .run("Multiply forever.")
        .await
        .unwrap();
    assert_eq!(report.stop, StopReason::MaxSteps);
    assert_eq!(report.steps.len(), 3);

    let (pack, _) = scripted_pack(
        Reply::Fixed(call.into()),
        ScriptedOptions {
            context_window: 900,
            ..ScriptedOptions::default()
        },
    );
    let report = AgentLoop::new(pack, Clumsy)
        .max_steps(100)
        .max_repeats(0)
        .run("Multiply until the window is full.")
        .await
        .unwrap();
    assert!(
        matches!(report.stop, StopReason::ContextFull { window: 900, .. }),
        "{:?}",
        report.stop
    );
    assert!(report.steps.len() > 1 && report.steps.len() < 100);
}

#[tokio::test]
async fn an_engine_failure_ends_the_run_with_an_error_not_a_panic() {
    let (pack, engine) = scripted_pack(
        Reply::Fixed(r#"{"calls":[{"tool":"multiply","args":{"a":1,"b":1}}]}"#.into()),
        ScriptedOptions::default(),
    );
    let agent = AgentLoop::new(pack.clone(), Clumsy).max_steps(5);
    // The first engine call (the base prefill) fails.
    engine.fail_next(Fault::Failed("device lost".into()));
    let outcome = agent.run("Multiply.").await;
    match outcome {
        Ok(report) => assert!(
            matches!(&report.stop, StopReason::Error(m) if m.contains("device lost")),
            "{:?}",
            report.stop
        ),
        Err(e) => assert!(e.to_string().contains("device lost"), "{e}"),
    }
}

/// The loop guard: a call identical to an earlier one gets the earlier result back with a
/// note, without running the tool; the third identical call stops the run as `stuck`, and
/// the observation that says so is a receipted merge at the end of the run.
#[tokio::test]
async fn a_repeated_call_is_answered_from_its_first_result_then_the_run_stops_stuck() {
    let same = r#"{"calls":[{"tool":"multiply","args":{"a":2,"b":3}}]}"#;
    let other = r#"{"calls":[{"tool":"multiply","args":{"a":4,"b":5}}]}"#;
    let (pack, _) = scripted_pack(
        Reply::queue([same, other, same, same, r#"{"answer":"6"}"#]),
        ScriptedOptions::default(),
    );
    let report = AgentLoop::new(pack.clone(), Clumsy)
        .max_steps(10)
        .run("Multiply two and three.")
        .await
        .unwrap();
    let call = state_pack::agent::ToolCall {
        tool: "multiply".into(),
        args: serde_json::json!({"a": 2, "b": 3}),
    };
    assert_eq!(report.stop, StopReason::Stuck { call, times: 3 });
    assert_eq!(report.steps.len(), 4);
    let first = &report.steps[0].results[0];
    assert_eq!((first.output.as_str(), first.repeat_of), ("6", None));
    assert_eq!(report.steps[1].results[0].output, "20");
    for s in &report.steps[2..] {
        let r = &s.results[0];
        assert_eq!(r.repeat_of, Some(1), "step {}", s.number);
        assert!(
            r.output.starts_with("6 (the same call as step 1"),
            "{}",
            r.output
        );
        assert_eq!(r.elapsed, std::time::Duration::ZERO, "not run again");
    }
    // The run's last receipt is the merge of the observation that ends it.
    let last = pack
        .with_store(|s| s.receipts(report.receipts.1, report.receipts.1 + 1))
        .unwrap();
    let receipt = state_pack::ledger::Receipt::from_body(&last[0].body).unwrap();
    assert_eq!(receipt.op, state_pack::ledger::ReceiptOp::Merge);
    let text = String::from_utf8_lossy(
        &pack
            .tokens(&report.final_state)
            .unwrap()
            .iter()
            .filter_map(|&t| u8::try_from(t.checked_sub(3)?).ok())
            .collect::<Vec<u8>>(),
    )
    .into_owned();
    assert!(
        text.contains("Stopped: multiply was called 3 times with the same arguments."),
        "{text}"
    );

    // With the guard off, every call runs and the run goes on to its answer.
    let (pack, _) = scripted_pack(
        Reply::queue([same, other, same, same, r#"{"answer":"6"}"#]),
        ScriptedOptions::default(),
    );
    let report = AgentLoop::new(pack, Clumsy)
        .max_steps(10)
        .max_repeats(0)
        .run("Multiply two and three.")
        .await
        .unwrap();
    assert_eq!(report.stop, StopReason::Answer);
    assert!(report.steps[2..4]
        .iter()
        .all(|s| s.results[0].repeat_of.is_none() && s.results[0].output == "6"));
}
