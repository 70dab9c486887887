//! A LangGraph-style workflow on the real model: a researcher agent looks a clause up, a
//! reviewer agent checks the finding, and a conditional edge loops back until the reviewer
//! approves (or two rounds are done). Shows streaming events, the checkpoint history, an
//! interrupt resumed with a human's input, a fork from an earlier checkpoint, the shared
//! base prefilled once, and the graph as Mermaid.
//!
//! ```text
//! cargo run --release --example research_graph
//! ```

use std::sync::Arc;

use anyhow::Result;
use state_pack::engine::{MistralRsEngine, MistralRsOptions};
use state_pack::graph::{Checkpointer, GraphEvent, RunStatus, Source};
use state_pack::ledger::Signer;
use state_pack::research::{self, BaseLog, Research, ResearchUpdate};
use state_pack::{model, StatePack, Store};

const QUESTION: &str = "What is the liability cap in clause 14.5 of NSA-2021-044?";

#[tokio::main]
async fn main() -> Result<()> {
    let path = model::DEFAULT_MODEL.ensure(&model::cache_dir(None))?;
    let engine = MistralRsEngine::load(&path, MistralRsOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("research_graph.db");
    let pack = Arc::new(StatePack::new(
        Arc::new(engine),
        Store::open(&db, Signer::generate()?)?,
    ));
    let bases = BaseLog::default();
    // The graph (see research.rs next to this file for how it is built), paused before the reviewer.
    let graph = research::graph(pack.clone(), 2, bases.clone())
        .interrupt_before(&["reviewer"])
        .compile(Checkpointer::for_pack(&pack)?)?;
    println!("{}", graph.mermaid());

    let print = |e: GraphEvent| match e {
        GraphEvent::NodeStarted { step, node } => println!("step {step}: {node}"),
        GraphEvent::NodeFinished { update, .. } => println!("  update {update}"),
        GraphEvent::StateUpdated(c) => println!("  checkpoint {} next {:?}", c.id, c.next),
        GraphEvent::Stopped(status) => println!("stopped: {status:?}"),
        GraphEvent::NodeRetrying { node, error, .. } => println!("  retrying {node}: {error}"),
    };
    let run = graph
        .stream("case-1", Research::new(QUESTION, 2), print)
        .await?;
    println!("paused with findings {:?}", run.state.findings);

    // A human reads the finding and adds a note before the reviewer runs.
    let note = ResearchUpdate {
        reviews: Some(vec!["human: the cap is in 14.5, check the months".into()]),
        ..ResearchUpdate::default()
    };
    let mut run = graph.resume_stream("case-1", Some(note), print).await?;
    // Every later visit to the reviewer pauses too; go on without input.
    while run.status != RunStatus::Finished {
        run = graph.resume_stream("case-1", None, print).await?;
    }
    println!("final state: {}", serde_json::to_string_pretty(&run.state)?);

    println!("history (newest first):");
    let history = graph.history("case-1")?;
    for c in &history {
        println!(
            "  {} step {:>2} {:?} wrote {:?} next {:?} receipts {}..{} ({} B)",
            c.id, c.step, c.source, c.wrote, c.next, c.receipts.0, c.receipts.1, c.bytes
        );
    }

    // Time travel: back to the researcher's first checkpoint, before the human's note, and
    // on from there without it. The original history stays as it was.
    let first = history
        .iter()
        .find(|c| c.step == 0 && c.source == Source::Loop)
        .map(|c| c.id);
    if let Some(first) = first {
        let fork = graph.fork(first, None)?;
        println!("forked {fork} from {first}");
        let mut forked = graph.resume("case-1", None).await?;
        while forked.status != RunStatus::Finished {
            forked = graph.resume("case-1", None).await?;
        }
        println!("the fork's reviews: {:?}", forked.state.reviews);
        println!(
            "the original's reviews, still: {:?}",
            graph.state_at(run.checkpoint)?.reviews
        );
    }

    let bases = bases.lock().map(|b| b.clone()).unwrap_or_default();
    let prefilled: Vec<usize> = bases.iter().map(|(_, b)| b.prefilled).collect();
    println!(
        "shared system prompt: {} agent runs, base prefilled per run {:?} (once, then reused)",
        bases.len(),
        prefilled
    );
    pack.close()?;
    Ok(())
}
