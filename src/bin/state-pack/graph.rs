//! `state-pack graph`: the research graph (researcher -> reviewer -> loop back), with
//! checkpoints, interrupts, resume and history.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use state_pack::engine::Engine;
use state_pack::graph::{Checkpointer, GraphEvent, GraphRun, RunStatus};
use state_pack::ledger::Signer;
use state_pack::research::{self, BaseLog, Research, ResearchUpdate};
use state_pack::Store;

#[derive(Subcommand)]
pub enum GraphCommand {
    /// Start a thread: run the graph from the question to the end or an interrupt.
    Run(RunArgs),
    /// Go on with a thread from its newest checkpoint (after a crash or an interrupt).
    Resume(ResumeArgs),
    /// List a thread's checkpoints, newest first.
    History(Where),
    /// Print the graph as Mermaid text.
    Mermaid {
        /// The database (opened, never written).
        #[arg(long, default_value = "state-pack-graph.db")]
        db: PathBuf,
    },
}

#[derive(Args)]
pub struct Where {
    /// The thread.
    #[arg(long, default_value = "research")]
    thread: String,
    /// The database (receipts and checkpoints): an SQLite file or a `postgres://` URL.
    #[arg(long, default_value = "state-pack-graph.db")]
    db: PathBuf,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct Options {
    /// Steps each agent may take (step 1 must call a tool).
    #[arg(long, default_value_t = 2)]
    agent_steps: usize,
    /// Pause before these nodes (researcher, reviewer).
    #[arg(long, value_delimiter = ',')]
    interrupt_before: Vec<String>,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    at: Where,
    #[command(flatten)]
    options: Options,
    /// The question.
    #[arg(
        long,
        default_value = "What is the liability cap in clause 14.5 of NSA-2021-044?"
    )]
    question: String,
    /// Researcher/reviewer rounds at most.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
}

#[derive(Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    at: Where,
    #[command(flatten)]
    options: Options,
    /// A human's update to merge first, as JSON (e.g. '{"reviews":["check 14.5 again"]}').
    #[arg(long)]
    human: Option<String>,
}

pub fn history(w: &Where) -> Result<()> {
    let history = Checkpointer::open_location(&w.db.to_string_lossy())?.history(&w.thread)?;
    if history.is_empty() {
        anyhow::bail!(
            "thread {:?} has no checkpoints in {}",
            w.thread,
            crate::shown(&w.db)
        );
    }
    if w.json {
        println!("{}", serde_json::to_string_pretty(&history)?);
        return Ok(());
    }
    for c in history {
        println!(
            "{:>6}  step {:>3}  {:<6}  parent {:>6}  wrote {:<24}  next {:<24}  receipts {}..{}  {} B",
            c.id.to_string(),
            c.step,
            format!("{:?}", c.source).to_lowercase(),
            c.parent.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            c.wrote.join(","),
            c.next.join(","),
            c.receipts.0,
            c.receipts.1,
            c.bytes
        );
    }
    Ok(())
}

pub async fn run(engine: Arc<dyn Engine>, key: &Path, command: GraphCommand) -> Result<()> {
    let (at, options) = match &command {
        GraphCommand::Run(a) => (&a.at, &a.options),
        GraphCommand::Resume(a) => (&a.at, &a.options),
        GraphCommand::History(w) => return history(w),
        GraphCommand::Mermaid { .. } => {
            let pack = Arc::new(crate::new_pack(
                engine.clone(),
                Store::open_in_memory(Signer::generate()?)?,
            ));
            let graph = research::graph(pack.clone(), 2, BaseLog::default())
                .compile(Checkpointer::in_memory()?)?;
            println!("{}", graph.mermaid());
            return Ok(());
        }
    };
    let (signer, _) = Signer::load_or_create(key)?;
    let pack = Arc::new(crate::new_pack(
        engine.clone(),
        crate::open_store(&at.db, signer)?,
    ));
    let bases = BaseLog::default();
    let interrupts: Vec<&str> = options
        .interrupt_before
        .iter()
        .map(String::as_str)
        .collect();
    let graph = research::graph(pack.clone(), options.agent_steps, bases.clone())
        .interrupt_before(&interrupts)
        .compile(Checkpointer::for_pack(&pack)?)?;
    let quiet = at.json;
    let on_event = |e: GraphEvent| {
        if quiet {
            return;
        }
        match e {
            GraphEvent::NodeStarted { step, node } => println!("step {step}: {node} ..."),
            GraphEvent::NodeFinished {
                node,
                elapsed,
                update,
                ..
            } => println!(
                "  {node} done in {:.1} s: {}",
                elapsed.as_secs_f64(),
                update
            ),
            GraphEvent::NodeRetrying { node, error, .. } => {
                println!("  {node} failed ({error}); retrying")
            }
            GraphEvent::StateUpdated(c) => println!(
                "  checkpoint {} (receipts {}..{}), next: {}",
                c.id,
                c.receipts.0,
                c.receipts.1,
                if c.next.is_empty() {
                    "END".to_string()
                } else {
                    c.next.join(", ")
                }
            ),
            GraphEvent::Stopped(_) => {}
        }
    };
    let run: GraphRun<Research> = match &command {
        GraphCommand::Run(a) => {
            graph
                .stream(&at.thread, Research::new(&a.question, a.rounds), on_event)
                .await?
        }
        GraphCommand::Resume(a) => {
            let human: Option<ResearchUpdate> = a
                .human
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .context("--human is not a research update (fields: findings, reviews, rounds, approved)")?;
            graph.resume_stream(&at.thread, human, on_event).await?
        }
        GraphCommand::History(_) | GraphCommand::Mermaid { .. } => return Ok(()),
    };
    pack.close()?;
    let bases = bases.lock().map(|b| b.clone()).unwrap_or_default();
    if at.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "thread": run.thread,
                "status": run.status,
                "checkpoint": run.checkpoint,
                "steps": run.steps,
                "state": run.state,
                "bases": bases,
            }))?
        );
        return Ok(());
    }
    println!();
    match &run.status {
        RunStatus::Finished => println!("finished after {} super-steps", run.steps),
        RunStatus::InterruptedBefore(n) => println!(
            "paused before {}; go on with: state-pack graph resume --thread {} --db {}",
            n.join(", "),
            run.thread,
            crate::shown(&at.db)
        ),
        RunStatus::InterruptedAfter(n) => println!("paused after {}", n.join(", ")),
    }
    println!("{}", serde_json::to_string_pretty(&run.state)?);
    if let Some((_, first)) = bases.first() {
        let later: Vec<_> = bases.iter().skip(1).collect();
        println!(
            "shared base ({} tokens): prefilled {} by the first agent run; the {} later runs prefilled {} and reused {}",
            first.tokens,
            first.prefilled,
            later.len(),
            later.iter().map(|(_, b)| b.prefilled).sum::<usize>(),
            later.iter().map(|(_, b)| b.reused).sum::<usize>()
        );
    }
    println!(
        "history: state-pack graph history --thread {} --db {}",
        run.thread,
        crate::shown(&at.db)
    );
    Ok(())
}
