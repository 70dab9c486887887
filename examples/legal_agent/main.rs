//! The legal-research agent with real tools (clause lookup over a bundled corpus, a
//! calculator), constrained tool calls, auto-compaction, and per-step token accounting.
//!
//! ```text
//! cargo run --release --example legal_agent
//! ```

use std::sync::Arc;

use anyhow::Result;
use state_pack::agent::{AgentEvent, AgentLoop};
use state_pack::compaction::{CompactionPolicy, CompactionStrategy};
use state_pack::engine::{MistralRsEngine, MistralRsOptions};
use state_pack::ledger::Signer;
use state_pack::legal::LegalAgent;
use state_pack::{model, StatePack, Store};

#[tokio::main]
async fn main() -> Result<()> {
    let path = model::DEFAULT_MODEL.ensure(&model::cache_dir(None))?;
    let engine = MistralRsEngine::load(&path, MistralRsOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("legal_agent.db");
    let pack = Arc::new(StatePack::new(
        Arc::new(engine),
        Store::open(&db, Signer::generate()?)?,
    ));
    let agent = AgentLoop::new(pack.clone(), LegalAgent)
        .max_steps(6)
        // A 135M model answers from memory if it may: make step 1 look the clause up.
        .answer_from_step(2)
        .compaction(CompactionPolicy::default(), CompactionStrategy::default());
    let report = agent
        .run_with_events(
            "What is the liability cap in clause 14.5 of NSA-2021-044?",
            |e| match e {
                AgentEvent::ToolCall(c) => println!("  call   {} {}", c.tool, c.args),
                AgentEvent::ToolResult(r) => println!("  result {}", r.output),
                AgentEvent::StepStarted { number, context } => {
                    println!("step {number} ({context} tokens of context)")
                }
                AgentEvent::Compacted(c) => println!(
                    "  compacted {} -> {} tokens ({:?})",
                    c.tokens_before, c.tokens_after, c.trigger
                ),
                AgentEvent::Finished { stop } => println!("finished: {stop:?}"),
                _ => {}
            },
        )
        .await?;
    for s in &report.steps {
        let t = &s.report.tokens;
        println!(
            "step {}: {:?}  prefilled {} reused {} generated {}",
            s.number, s.output, t.prefilled, t.reused, t.generated
        );
    }
    println!("answer: {:?}", report.answer);
    println!(
        "total: prefilled {} reused {} generated {} in {:.1} s; receipts {}..={}",
        report.tokens.prefilled,
        report.tokens.reused,
        report.tokens.generated,
        report.wall.as_secs_f64(),
        report.receipts.0,
        report.receipts.1
    );
    pack.close()?;
    Ok(())
}
