//! `state-pack agent`: the legal-research agent with compaction, step by step.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use clap::{Args, ValueEnum};
use state_pack::agent::{AgentEvent, AgentLoop, StopReason};
use state_pack::compaction::{CompactionPolicy, CompactionStrategy, CostModel};
use state_pack::engine::Engine;
use state_pack::ledger::Signer;
use state_pack::legal::LegalAgent;

#[derive(Args)]
pub struct AgentArgs {
    /// The task.
    #[arg(
        long,
        default_value = "What is the liability cap in clause 14.5 of NSA-2021-044?"
    )]
    task: String,
    /// Steps at most.
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// The first step that may answer; earlier steps must call tools.
    #[arg(long, default_value_t = 2)]
    answer_from: usize,
    /// Only the last step may answer, so the run takes all `--steps` (soak runs).
    #[arg(long)]
    keep_going: bool,
    /// How to compact: off, or a strategy.
    #[arg(long, value_enum, default_value_t = Strategy::Both)]
    compaction: Strategy,
    /// Compact when the next step would fill this fraction of the context window.
    #[arg(long, default_value_t = 0.75)]
    window_fraction: f64,
    /// Also compact every N steps.
    #[arg(long)]
    every: Option<usize>,
    /// Horizon (steps) of the measured cost model; 0 turns it off.
    #[arg(long, default_value_t = 20)]
    horizon: usize,
    /// Observations kept verbatim.
    #[arg(long, default_value_t = 3)]
    keep_last: usize,
    /// Steps kept when summarizing.
    #[arg(long, default_value_t = 8)]
    keep_turns: usize,
    /// Print memory every N steps.
    #[arg(long, default_value_t = 50)]
    memory_every: usize,
    /// The SQLite database.
    #[arg(long, default_value = "state-pack-agent.db")]
    db: PathBuf,
    /// Print the full report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Strategy {
    /// Never compact: the run stops when the window is full.
    Off,
    /// Mask old observations.
    Mask,
    /// Summarize old steps with the model.
    Summarize,
    /// Summarize old steps and mask older observations.
    Both,
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

pub async fn run(engine: Arc<dyn Engine>, key: &Path, a: AgentArgs) -> Result<()> {
    let (signer, _) = Signer::load_or_create(key)?;
    let public_key = signer.public_key().to_hex();
    let pack = Arc::new(crate::new_pack(
        engine.clone(),
        crate::open_store(&a.db, signer)?,
    ));
    let policy = CompactionPolicy {
        window_fraction: Some(a.window_fraction),
        every_steps: a.every,
        cost: (a.horizon > 0).then_some(CostModel {
            horizon_steps: a.horizon,
            min_samples: 6,
        }),
    };
    let (policy, strategy) = match a.compaction {
        Strategy::Off => (CompactionPolicy::never(), CompactionStrategy::default()),
        Strategy::Mask => (
            policy,
            CompactionStrategy::Mask {
                keep_last: a.keep_last,
            },
        ),
        Strategy::Summarize => (
            policy,
            CompactionStrategy::Summarize {
                keep_last: a.keep_turns,
                max_tokens: 64,
            },
        ),
        Strategy::Both => (
            policy,
            CompactionStrategy::Both {
                keep_last: a.keep_last,
                keep_turns: a.keep_turns,
                max_tokens: 64,
            },
        ),
    };
    let agent_loop = AgentLoop::new(pack.clone(), LegalAgent)
        .max_steps(a.steps)
        .answer_from_step(if a.keep_going { a.steps } else { a.answer_from })
        .compaction(policy, strategy);
    let quiet = a.json;
    let every = a.memory_every.max(1);
    let mut memory = Vec::new();
    let report = agent_loop
        .run_with_events(&a.task, |e| match e {
            AgentEvent::StepFinished(s) => {
                let t = &s.report.tokens;
                if !quiet {
                    println!(
                        "{:>4}  context {:>5}  prefilled {:>4}  reused {:>5}  generated {:>3}  {:>6.0} ms  {}",
                        s.number,
                        t.state,
                        t.prefilled,
                        t.reused,
                        t.generated,
                        s.report.timings.total.as_secs_f64() * 1e3,
                        s.output
                    );
                }
                if s.number % every == 0 {
                    if let Some((rss, peak)) = crate::measure::memory_usage() {
                        memory.push((s.number, rss, peak));
                        if !quiet {
                            println!(
                                "      memory at step {}: resident {:.2} GiB, peak {:.2} GiB",
                                s.number,
                                gib(rss),
                                gib(peak)
                            );
                        }
                    }
                }
            }
            AgentEvent::Compacted(c) if !quiet => println!(
                "      compacted before step {}: {} -> {} tokens (masked {}, summarized {}), prefilled {} in {:.1} s; trigger {}",
                c.before_step,
                c.tokens_before,
                c.tokens_after,
                c.masked,
                c.summarized,
                c.report.tokens.prefilled,
                c.report.timings.total.as_secs_f64()
                    + c.summary_report.as_ref().map_or(0.0, |r| r.timings.total.as_secs_f64()),
                serde_json::to_string(&c.trigger).unwrap_or_default()
            ),
            _ => {}
        })
        .await?;
    pack.close()?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"report": report, "memory": memory}))?
        );
        return Ok(());
    }
    let parsed = report.steps.iter().filter(|s| s.action.is_ok()).count();
    let t = &report.tokens;
    println!();
    println!(
        "stop: {}; {} steps ({} parsed as tool calls or answers), {} compactions, peak context {} of {} tokens",
        match &report.stop {
            StopReason::ContextFull { needed, window } =>
                format!("context full ({needed} tokens needed, window {window})"),
            other => serde_json::to_string(other)?,
        },
        report.steps.len(),
        parsed,
        report.compactions.len(),
        report.peak_context,
        pack.engine().info().context_window
    );
    if let Some(answer) = &report.answer {
        println!("answer: {answer}");
    }
    println!(
        "tokens: prefilled {}, reused {}, generated {}; {:.1} s",
        t.prefilled,
        t.reused,
        t.generated,
        report.wall.as_secs_f64()
    );
    if let Some((rss, peak)) = crate::measure::memory_usage() {
        println!(
            "memory: resident {:.2} GiB, peak {:.2} GiB",
            gib(rss),
            gib(peak)
        );
    }
    println!(
        "receipts {}..={} in {}; verify with: state-pack verify --db {} --pubkey {public_key}",
        report.receipts.0,
        report.receipts.1,
        crate::shown(&a.db),
        crate::shown(&a.db)
    );
    Ok(())
}
