//! Naive re-prefill vs state-pack, side by side in one process, on the demo loop or on the
//! agent loop (the legal-research agent with real tool calls, see [`Workload`]).
//!
//! Both arms run the same loop (same base, same observations, greedy) through a [`StatePack`]
//! on an on-disk SQLite store; they differ only in the engine: the naive arm's engine has its
//! prefix cache turned off, so it prefills the whole context at every step, as an agent that
//! re-sends its history does. Every figure is measured; nothing is derived from a model of
//! cost. Runs alternate which arm goes first, and each run uses its own base text so that no
//! run starts with a cache warmed by the one before.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::agent::{Agent, AgentLoop, StopReason};
use crate::demo::{self, Start, StepTotals};
use crate::engine::Engine;
use crate::legal::LegalAgent;
use crate::pack::{OpReport, PackError, StatePack};
use crate::store::{Store, StoreError};
use crate::template::{Role, TemplateError};

mod peer;
pub use peer::Peer;

/// Which arm a figure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    /// Whole context prefilled at every step.
    Naive,
    /// state-pack: only the delta prefilled.
    StatePack,
    /// llama.cpp's `llama-server` with its prompt cache, over HTTP (see [`Peer`]).
    Peer,
}

impl Arm {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Arm::Naive => "naive",
            Arm::StatePack => "state-pack",
            Arm::Peer => "llama-server",
        }
    }
}

/// What both arms run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// The demo loop: scripted observations, 8 generated tokens a step.
    Demo,
    /// [`AgentLoop`] with the legal-research agent: constrained tool calls, real tools,
    /// their results as observations (every step but the last must call a tool).
    Agent,
}

/// The legal-research agent with a per-run session line first in its prompt, so that no
/// run starts with a cache warmed by the one before.
struct BenchAgent {
    session: String,
}

#[async_trait::async_trait]
impl Agent for BenchAgent {
    fn system_prompt(&self) -> String {
        format!("Session {}. {}", self.session, LegalAgent.system_prompt())
    }
    fn tools(&self) -> crate::agent::ToolBox {
        LegalAgent.tools()
    }
}

/// The agent arm's task.
pub const AGENT_TASK: &str = "What is the liability cap in clause 14.5 of NSA-2021-044?";

/// One arm's run.
#[derive(Debug, Clone, Serialize)]
pub struct ArmRun {
    /// The arm.
    pub arm: Arm,
    /// Sums over create + steps.
    pub totals: StepTotals,
    /// Wall time of each step (create excluded), milliseconds.
    pub step_ms: Vec<f64>,
    /// Where a step's time went, milliseconds, mean over the run's steps (create excluded).
    pub split_ms: StepSplit,
    /// Generated texts, per step.
    pub outputs: Vec<String>,
    /// How far the agent got with its task (the agent workload only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<AgentProgress>,
}

/// Task progress of one agent run: what it called and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentProgress {
    /// Tool calls the model made.
    pub calls: usize,
    /// Distinct calls among them (tool and arguments).
    pub distinct_calls: usize,
    /// Calls the loop guard answered from an earlier result instead of running the tool.
    pub repeats: usize,
    /// Whether the model gave an answer the agent accepted.
    pub answered: bool,
    /// Why the run ended (`answer`, `max_steps`, `stuck`, ...).
    pub stop: String,
}

impl AgentProgress {
    /// The progress of `report`.
    pub fn of(report: &crate::agent::AgentReport) -> Self {
        let mut distinct: Vec<&crate::agent::ToolCall> = Vec::new();
        let (mut calls, mut repeats) = (0, 0);
        for s in &report.steps {
            for r in &s.results {
                calls += 1;
                repeats += usize::from(r.repeat_of.is_some());
                if !distinct.contains(&&r.call) {
                    distinct.push(&r.call);
                }
            }
        }
        let stop = match &report.stop {
            StopReason::Answer => "answer",
            StopReason::MaxSteps => "max_steps",
            StopReason::ContextFull { .. } => "context_full",
            StopReason::Stuck { .. } => "stuck",
            StopReason::Error(_) => "error",
        };
        Self {
            calls,
            distinct_calls: distinct.len(),
            repeats,
            answered: report.answer.is_some(),
            stop: stop.to_string(),
        }
    }
}

/// Where a step's wall time went, milliseconds per step. On a small model on a GPU a step is
/// mostly launches and bookkeeping, not arithmetic: the total alone would hide that.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StepSplit {
    /// Prefilling the step's new tokens (as the engine measured it).
    pub prefill: f64,
    /// Generating the reply (as the engine measured it).
    pub decode: f64,
    /// Loading a cold input state's KV blob.
    pub restore: f64,
    /// Exporting the output state's KV and writing its blob.
    pub save: f64,
    /// The pack's own work: hashing, SQLite, signing the receipt.
    pub overhead: f64,
    /// The rest of the wall time: tokenizing, the engine's queue and sequence switches,
    /// the client's side of HTTP (for the peer).
    pub other: f64,
}

impl StepSplit {
    /// The mean split of `reports` (0 for none).
    pub fn of<'a>(reports: impl IntoIterator<Item = &'a OpReport>) -> Self {
        let (mut sum, mut n) = (Self::default(), 0usize);
        for r in reports {
            let t = &r.timings;
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let known = t.prefill + t.decode + t.restore + t.save + t.overhead;
            sum.prefill += ms(t.prefill);
            sum.decode += ms(t.decode);
            sum.restore += ms(t.restore);
            sum.save += ms(t.save);
            sum.overhead += ms(t.overhead);
            sum.other += ms(t.total.saturating_sub(known));
            n += 1;
        }
        sum.scaled(1.0 / n.max(1) as f64)
    }

    pub(crate) fn scaled(self, k: f64) -> Self {
        Self {
            prefill: self.prefill * k,
            decode: self.decode * k,
            restore: self.restore * k,
            save: self.save * k,
            overhead: self.overhead * k,
            other: self.other * k,
        }
    }

    /// The median of each part over `splits` (each part on its own).
    pub fn median_of(splits: &[Self]) -> Self {
        let part = |f: fn(&Self) -> f64| median(splits.iter().map(f).collect());
        Self {
            prefill: part(|s| s.prefill),
            decode: part(|s| s.decode),
            restore: part(|s| s.restore),
            save: part(|s| s.save),
            overhead: part(|s| s.overhead),
            other: part(|s| s.other),
        }
    }
}

impl ArmRun {
    /// Mean wall time of a step, milliseconds (0 for none).
    pub fn mean_step_ms(&self) -> f64 {
        self.step_ms.iter().sum::<f64>() / self.step_ms.len().max(1) as f64
    }
}

/// The side-by-side result.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The engine both arms ran on.
    pub engine: String,
    /// What ran.
    pub workload: Workload,
    /// Steps per run.
    pub steps: usize,
    /// Runs per arm.
    pub runs: usize,
    /// Every run of both arms, in the order they ran.
    pub arm_runs: Vec<ArmRun>,
    /// Median over runs of naive wall / state-pack wall.
    pub speedup: f64,
    /// 1 - (tokens state-pack prefilled / tokens naive prefilled), over all runs.
    pub token_savings: f64,
    /// Median state-pack wall time per step, milliseconds.
    pub statepack_step_ms: f64,
    /// Median naive wall time per step, milliseconds.
    pub naive_step_ms: f64,
    /// state-pack's own overhead (hashing, SQLite) as a fraction of its wall time.
    pub overhead_fraction: f64,
    /// Where a state-pack step's time went (each part's median over runs), milliseconds.
    pub statepack_split_ms: StepSplit,
    /// Where a naive step's time went (each part's median over runs), milliseconds.
    pub naive_split_ms: StepSplit,
    /// Whether both arms generated the same text at every step of every run (they must:
    /// greedy decoding from the same tokens, reused KV or not).
    pub outputs_identical: bool,
    /// The peer arm, when one ran.
    pub peer: Option<PeerSummary>,
}

/// The peer arm's figures, measured in the same runs as the other two.
#[derive(Debug, Clone, Serialize)]
pub struct PeerSummary {
    /// The server's address.
    pub url: String,
    /// Median over runs of the peer's mean wall time per step, milliseconds.
    pub step_ms: f64,
    /// Where the peer's step went: prefill and decode as the server timed them, the rest
    /// (HTTP, JSON, tokenizing the delta) in `other`.
    pub split_ms: StepSplit,
    /// Median over runs of state-pack's mean step time / the peer's, both from the same run.
    pub statepack_over_peer: f64,
    /// Whether the peer generated state-pack's text at every step of every run.
    pub outputs_match_statepack: bool,
}

/// Errors from the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A pack operation failed.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// The scratch store could not be made.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No throwaway signing key could be made.
    #[error(transparent)]
    Key(#[from] crate::ledger::KeyError),
    /// The scratch directory could not be made.
    #[error("cannot create a scratch directory: {0}")]
    Io(#[from] std::io::Error),
    /// Nothing to run.
    #[error("steps and runs must be at least 1")]
    Empty,
    /// The restore benchmark needs an engine that exports KV.
    #[error("this engine cannot save KV states (mistral.rs has no such API): run the restore benchmark with --engine llamacpp")]
    NoKvExport,
    /// The restore arm prefilled the state instead of loading its blob.
    #[error("the state was not restored from its KV blob (see the warnings above)")]
    NotRestored,
    /// Every decode-rate run ended after its first token.
    #[error("every run ended after one token: there was no decode step to time")]
    NoDecode,
    /// The peer server failed or is not there.
    #[error("peer: {0}")]
    Peer(String),
    /// The peer arm runs the demo loop only.
    #[error("the llama-server peer runs the demo workload only")]
    PeerWorkload,
    /// The agent loop stopped early.
    #[error("the {arm} arm's agent loop stopped after {steps} steps: {reason}")]
    AgentStopped {
        /// The arm.
        arm: &'static str,
        /// Steps done.
        steps: usize,
        /// Why.
        reason: String,
    },
}

impl From<TemplateError> for BenchError {
    fn from(e: TemplateError) -> Self {
        Self::Pack(PackError::from(e))
    }
}

/// The median (the mean of the middle two for an even count; 0 for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

async fn run_arm(
    arm: Arm,
    engine: Arc<dyn Engine>,
    plan: &BenchPlan,
    session: &str,
    case_file: &str,
    scratch: &std::path::Path,
    on_step: &mut (impl FnMut(Arm, usize) + Send),
) -> Result<ArmRun, BenchError> {
    let (workload, steps) = (plan.workload, plan.steps);
    let db = scratch.join(format!("{}-{session}.db", arm.name()));
    // Both arms sign receipts, as every real run does, with a throwaway key.
    let signer = crate::ledger::Signer::generate()?;
    let mut pack = StatePack::new(engine, Store::open(&db, signer)?);
    if !plan.kv_blobs {
        pack = pack.with_kv_blobs(None);
    }
    if workload == Workload::Agent {
        return run_agent_arm(arm, pack, session, steps, on_step).await;
    }
    let template = pack.engine().info().template;
    let base = pack
        .create(&demo::base_text_with(&template, session, case_file)?)
        .await?;
    let start = Start {
        state: base.output,
        next_step: 1,
        turn_closed: false,
    };
    let done = demo::run_steps(&pack, start, steps, |s| on_step(arm, s.number)).await?;
    let mut reports = vec![&base];
    reports.extend(done.iter().map(|s| &s.report));
    Ok(ArmRun {
        arm,
        totals: StepTotals::of(reports),
        step_ms: done
            .iter()
            .map(|s| s.report.timings.total.as_secs_f64() * 1e3)
            .collect(),
        split_ms: StepSplit::of(done.iter().map(|s| &s.report)),
        outputs: done.into_iter().map(|s| s.output).collect(),
        progress: None,
    })
}

async fn run_agent_arm(
    arm: Arm,
    pack: StatePack,
    session: &str,
    steps: usize,
    on_step: &mut (impl FnMut(Arm, usize) + Send),
) -> Result<ArmRun, BenchError> {
    let agent = BenchAgent {
        session: session.to_string(),
    };
    let agent_loop = AgentLoop::new(Arc::new(pack), agent)
        .max_steps(steps)
        .answer_from_step(steps);
    let report = agent_loop
        .run_with_events(AGENT_TASK, |e| {
            if let crate::agent::AgentEvent::StepFinished(s) = e {
                on_step(arm, s.number)
            }
        })
        .await?;
    if matches!(
        report.stop,
        StopReason::Error(_) | StopReason::ContextFull { .. }
    ) {
        return Err(BenchError::AgentStopped {
            arm: arm.name(),
            steps: report.steps.len(),
            reason: reason_of(&report.stop),
        });
    }
    // Everything the run did: tool calls, turn closings, the loop itself.
    let totals = StepTotals {
        steps: 1 + report.steps.len(),
        prefilled: report.tokens.prefilled as usize,
        reused: report.tokens.reused as usize,
        generated: report.tokens.generated as usize,
        wall: report.wall,
        overhead: std::iter::once(&report.base)
            .chain(report.steps.iter().map(|s| &s.report))
            .map(|r| r.timings.overhead)
            .sum(),
    };
    let split_ms = StepSplit::of(report.steps.iter().map(|s| &s.report));
    Ok(ArmRun {
        arm,
        totals,
        step_ms: report
            .steps
            .iter()
            .map(|s| s.report.timings.total.as_secs_f64() * 1e3)
            .collect(),
        split_ms,
        progress: Some(AgentProgress::of(&report)),
        outputs: report.steps.into_iter().map(|s| s.output).collect(),
    })
}

fn reason_of(stop: &StopReason) -> String {
    match stop {
        StopReason::ContextFull { needed, window } => {
            format!("context full ({needed} tokens needed, window {window})")
        }
        StopReason::Error(e) => e.clone(),
        other => format!("{other:?}"),
    }
}

/// What [`run`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchPlan {
    /// The loop each arm runs.
    pub workload: Workload,
    /// Steps per run.
    pub steps: usize,
    /// Runs per arm.
    pub runs: usize,
    /// Whether the packs keep KV blobs (when the engine can export KV).
    pub kv_blobs: bool,
    /// The demo's base state holds at least this many tokens: a case file is appended to
    /// its system prompt until it does (0: the plain demo, about 300 tokens).
    pub context_tokens: usize,
}

/// Runs both arms (and the peer's, if given) `plan.runs` times for `plan.steps` steps of
/// `plan.workload`, rotating their order from run to run. `on_step(arm, step)` is called
/// after each step, for progress display.
pub async fn run(
    statepack_engine: Arc<dyn Engine>,
    naive_engine: Arc<dyn Engine>,
    peer: Option<&Peer>,
    plan: BenchPlan,
    mut on_step: impl FnMut(Arm, usize) + Send,
) -> Result<BenchReport, BenchError> {
    let BenchPlan {
        workload,
        steps,
        runs,
        ..
    } = plan;
    if steps == 0 || runs == 0 {
        return Err(BenchError::Empty);
    }
    if peer.is_some() && workload != Workload::Demo {
        return Err(BenchError::PeerWorkload);
    }
    let case_file = case_file(statepack_engine.as_ref(), plan.context_tokens).await?;
    let statepack_engine_name = statepack_engine.engine_name().to_string();
    let scratch = tempfile::tempdir()?;
    let mut arm_runs = Vec::with_capacity(2 * runs);
    let mut ratios = Vec::with_capacity(runs);
    let session_root = format!("{}-{}", std::process::id(), rand_suffix());
    for r in 0..runs {
        let session = format!("{session_root}-{r}");
        let mut order = vec![Arm::Naive, Arm::StatePack];
        if peer.is_some() {
            order.push(Arm::Peer);
        }
        let n = order.len();
        order.rotate_left(r % n);
        let mut pair = Vec::with_capacity(order.len());
        for arm in order {
            let engine = match arm {
                Arm::Naive => naive_engine.clone(),
                Arm::StatePack => statepack_engine.clone(),
                Arm::Peer => {
                    if let Some(p) = peer {
                        pair.push(
                            p.run(
                                statepack_engine.as_ref(),
                                &session,
                                &case_file,
                                steps,
                                &mut on_step,
                            )
                            .await?,
                        );
                    }
                    continue;
                }
            };
            pair.push(
                run_arm(
                    arm,
                    engine,
                    &plan,
                    &session,
                    &case_file,
                    scratch.path(),
                    &mut on_step,
                )
                .await?,
            );
        }
        let wall = |a: Arm| {
            pair.iter()
                .find(|x| x.arm == a)
                .map(|x| x.totals.wall.as_secs_f64())
                .unwrap_or(0.0)
        };
        ratios.push(wall(Arm::Naive) / wall(Arm::StatePack).max(1e-9));
        arm_runs.extend(pair);
    }
    let of = |a: Arm| arm_runs.iter().filter(move |x| x.arm == a);
    let prefilled = |a: Arm| of(a).map(|x| x.totals.prefilled).sum::<usize>() as f64;
    let per_step = |a: Arm| median(of(a).map(ArmRun::mean_step_ms).collect());
    let split = |a: Arm| StepSplit::median_of(&of(a).map(|x| x.split_ms).collect::<Vec<_>>());
    let sp_wall: Duration = of(Arm::StatePack).map(|x| x.totals.wall).sum();
    let sp_overhead: Duration = of(Arm::StatePack).map(|x| x.totals.overhead).sum();
    let naive_outputs: Vec<&Vec<String>> = of(Arm::Naive).map(|x| &x.outputs).collect();
    let sp_outputs: Vec<&Vec<String>> = of(Arm::StatePack).map(|x| &x.outputs).collect();
    let peer = peer.map(|p| {
        // Runs are in order, one of each arm per run: pair them up.
        let ratios = of(Arm::StatePack)
            .zip(of(Arm::Peer))
            .map(|(sp, pe)| sp.mean_step_ms() / pe.mean_step_ms().max(1e-9))
            .collect();
        let peer_outputs: Vec<&Vec<String>> = of(Arm::Peer).map(|x| &x.outputs).collect();
        PeerSummary {
            url: p.url().to_string(),
            step_ms: per_step(Arm::Peer),
            split_ms: split(Arm::Peer),
            statepack_over_peer: median(ratios),
            outputs_match_statepack: peer_outputs == sp_outputs,
        }
    });
    Ok(BenchReport {
        engine: statepack_engine_name,
        workload,
        steps,
        runs,
        speedup: median(ratios),
        token_savings: 1.0 - prefilled(Arm::StatePack) / prefilled(Arm::Naive).max(1.0),
        statepack_step_ms: per_step(Arm::StatePack),
        naive_step_ms: per_step(Arm::Naive),
        overhead_fraction: sp_overhead.as_secs_f64() / sp_wall.as_secs_f64().max(1e-9),
        statepack_split_ms: split(Arm::StatePack),
        naive_split_ms: split(Arm::Naive),
        outputs_identical: naive_outputs == sp_outputs,
        peer,
        arm_runs,
    })
}

/// Restoring a cold state from its KV blob vs prefilling it again, measured on fresh
/// engines (a new process would do the same: nothing of the state is in memory).
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The engine.
    pub engine: String,
    /// Tokens in the cold state.
    pub state_tokens: usize,
    /// Its KV as the engine serialized it, bytes.
    pub kv_bytes: u64,
    /// Its blob as stored (header and body), bytes.
    pub blob_bytes: u64,
    /// Where the blob was kept: `dir` (beside the database) or `redis` (`--kv redis://`).
    pub blob_tier: String,
    /// Runs (each arm once per run, on a freshly loaded engine).
    pub runs: usize,
    /// Per run: reading, checking and loading the blob into the engine, milliseconds.
    pub restore_ms: Vec<f64>,
    /// Per run: the engine prefilling the state's tokens again, milliseconds.
    pub reprefill_ms: Vec<f64>,
    /// Per run: the whole infer (8 greedy tokens after a short delta) after a restore, ms.
    pub restored_infer_ms: Vec<f64>,
    /// Per run: the same infer when the state is prefilled again, ms.
    pub reprefilled_infer_ms: Vec<f64>,
    /// Median of reprefill / restore.
    pub speedup: f64,
    /// Median of the two infers' wall-time ratio.
    pub infer_speedup: f64,
    /// Whether the infer gave the same text after a restore as after a re-prefill, in every
    /// run (greedy decoding over the same KV must).
    pub outputs_identical: bool,
}

/// Text to append to the demo's system prompt so that its base holds at least `tokens`
/// tokens: the demo's clauses and notes, numbered, until long enough ("" for 0).
async fn case_file(engine: &dyn Engine, tokens: usize) -> Result<String, BenchError> {
    if tokens == 0 {
        return Ok(String::new());
    }
    let t = engine.info().template;
    let heading = "\n\nThe contract and the case notes, item by item:\n";
    let (_, file) = with_clauses(engine, tokens, heading, |file| {
        demo::base_text_with(&t, "0", file)
    })
    .await?;
    Ok(file)
}

/// A base text of at least `tokens` tokens: the demo base, then clauses until long enough.
async fn long_base(
    engine: &dyn Engine,
    session: &str,
    tokens: usize,
) -> Result<String, BenchError> {
    let t = engine.info().template;
    let base = demo::base_text(&t, session)? + t.end_of_turn() + t.after_reply();
    let heading = "The contract, clause by clause:\n";
    let (text, _) = with_clauses(engine, tokens, heading, |clauses| {
        Ok(base.clone() + &t.turn(Some(Role::Assistant), Role::User, clauses)?)
    })
    .await?;
    Ok(text)
}

/// Appends the demo's clauses, numbered, one by one to `heading` until `render` of them
/// tokenizes to at least `tokens` tokens; gives back the rendered text and the clauses.
async fn with_clauses(
    engine: &dyn Engine,
    tokens: usize,
    heading: &str,
    render: impl Fn(&str) -> Result<String, TemplateError>,
) -> Result<(String, String), BenchError> {
    let mut clauses = String::from(heading);
    let mut i = 0;
    loop {
        let text = render(&clauses)?;
        if engine.tokenize(&text).await.map_err(PackError::from)?.len() >= tokens {
            return Ok((text, clauses));
        }
        let (tool, obs) = demo::OBSERVATIONS[i % demo::OBSERVATIONS.len()];
        clauses.push_str(&format!("{}. [{tool}] {obs}\n", i + 1));
        i += 1;
    }
}

/// Creates a state of about `tokens` tokens with its KV blob, then `runs` times, each on a
/// freshly loaded engine: an infer on it with the blob (restored) and without (prefilled
/// again). `load` loads a fresh engine of the kind measured; it must export KV. The blob is
/// kept in `tier` (e.g. Redis; its blob is deleted at the end), or without one beside the
/// bench's scratch database.
pub async fn restore_vs_prefill<F, Fut>(
    load: F,
    tier: Option<crate::kv_blob::KvBlobStore>,
    tokens: usize,
    runs: usize,
    mut on_run: impl FnMut(usize) + Send,
) -> Result<RestoreReport, BenchError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Arc<dyn Engine>, crate::engine::EngineError>>,
{
    if runs == 0 || tokens == 0 {
        return Err(BenchError::Empty);
    }
    let scratch = tempfile::tempdir()?;
    let db = scratch.path().join("restore.db");
    let signer = crate::ledger::Signer::generate()?;
    let session = format!("{}-{}", std::process::id(), rand_suffix());
    let engine = load().await.map_err(PackError::from)?;
    let with_tier = |pack: StatePack| match &tier {
        Some(b) => pack.with_kv_blobs(Some(b.clone())),
        None => pack,
    };
    let pack = with_tier(StatePack::new(
        engine.clone(),
        Store::open(&db, signer.clone())?,
    ));
    let Some(blobs) = pack.kv_blobs().cloned() else {
        return Err(BenchError::NoKvExport);
    };
    let text = long_base(engine.as_ref(), &session, tokens).await?;
    let base = pack.create(&text).await?;
    let state = base.output;
    let state_tokens = base.tokens.state as usize;
    blobs.flush();
    let blob_bytes = blobs.stored_bytes(&state).ok_or(BenchError::NotRestored)?;
    let model = engine.info().fingerprint;
    let kv_bytes = blobs
        .get(&state, &model)
        .map_err(|e| BenchError::Io(std::io::Error::other(e)))?
        .map_or(0, |b| b.raw.len() as u64);
    let engine_name = engine.engine_name().to_string();
    let t = engine.info().template;
    pack.close()?;
    drop(pack);
    drop(engine);

    let delta =
        t.turn(Some(Role::User), Role::User, "Which clause caps liability?")? + t.reply_prompt();
    let delta = delta.as_str();
    let sampling = crate::engine::Sampling::greedy(8);
    let mut r = RestoreReport {
        engine: engine_name,
        state_tokens,
        kv_bytes,
        blob_bytes,
        blob_tier: blobs.kind().to_string(),
        runs,
        restore_ms: Vec::new(),
        reprefill_ms: Vec::new(),
        restored_infer_ms: Vec::new(),
        reprefilled_infer_ms: Vec::new(),
        speedup: 0.0,
        infer_speedup: 0.0,
        outputs_identical: false,
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut texts = Vec::with_capacity(2 * runs);
    for run in 0..runs {
        // Alternate which arm goes first.
        for restore in [run % 2 == 0, run % 2 != 0] {
            let engine = load().await.map_err(PackError::from)?;
            let pack = StatePack::new(engine, Store::open(&db, signer.clone())?);
            let pack = if restore {
                with_tier(pack)
            } else {
                pack.with_kv_blobs(None)
            };
            let out = pack.infer(&state, delta, &sampling).await?;
            let t = &out.report;
            if restore {
                if t.tokens.restored == 0 {
                    return Err(BenchError::NotRestored);
                }
                r.restore_ms.push(ms(t.timings.restore));
                r.restored_infer_ms.push(ms(t.timings.total));
            } else {
                r.reprefill_ms.push(ms(t.timings.prefill));
                r.reprefilled_infer_ms.push(ms(t.timings.total));
            }
            pack.close()?;
            texts.push(out.text);
        }
        on_run(run);
    }
    r.outputs_identical = texts.windows(2).all(|w| w[0] == w[1]);
    if tier.is_some() {
        // A shared tier outlives the bench: leave nothing of it there.
        let _ = blobs.remove(&state);
    }
    r.speedup = median(
        r.reprefill_ms
            .iter()
            .zip(&r.restore_ms)
            .map(|(p, s)| p / s.max(1e-9))
            .collect(),
    );
    r.infer_speedup = median(
        r.reprefilled_infer_ms
            .iter()
            .zip(&r.restored_infer_ms)
            .map(|(p, s)| p / s.max(1e-9))
            .collect(),
    );
    Ok(r)
}

/// What [`decode_rate`] measured: greedy generations from one hot prompt.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeReport {
    /// The engine measured.
    pub engine: String,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens asked for a run.
    pub max_tokens: usize,
    /// Per run: tokens generated (fewer than asked if the model ended its turn).
    pub generated: Vec<usize>,
    /// Per run: the engine's decode time, ms (every generated token after the first, which
    /// comes from the prompt step's logits).
    pub decode_ms: Vec<f64>,
    /// Per run: wall time of the whole request, ms.
    pub wall_ms: Vec<f64>,
    /// Median over runs of decode ms per decode step (`decode_ms / (generated - 1)`).
    pub ms_per_token: f64,
    /// `1000 / ms_per_token`.
    pub tokens_per_s: f64,
}

/// The engine's greedy decode rate: the prompt is prefilled once, then `runs` generations
/// of up to `max_tokens` tokens each start from it (all of the prompt but its tail is
/// reused), timed by the engine's own decode clock. The figure isolates what one generated
/// token costs, which dominates an agent step that writes a tool call.
pub async fn decode_rate(
    engine: &dyn Engine,
    max_tokens: usize,
    runs: usize,
    mut on_run: impl FnMut(usize) + Send,
) -> Result<DecodeReport, BenchError> {
    if runs == 0 || max_tokens < 2 {
        return Err(BenchError::Empty);
    }
    let t = engine.info().template;
    let prompt = t.turn(None, Role::System, "You are a careful legal assistant.")?
        + &t.first_request(
            "Explain, clause by clause and in detail, what a master services agreement usually contains.",
        )?;
    let tokens = engine.tokenize(&prompt).await.map_err(PackError::from)?;
    engine.prefill(&tokens).await.map_err(PackError::from)?;
    let sampling = crate::engine::Sampling::greedy(max_tokens);
    let mut r = DecodeReport {
        engine: engine.engine_name().to_string(),
        prompt_tokens: tokens.len(),
        max_tokens,
        generated: Vec::new(),
        decode_ms: Vec::new(),
        wall_ms: Vec::new(),
        ms_per_token: 0.0,
        tokens_per_s: 0.0,
    };
    let mut per_token = Vec::new();
    for run in 0..runs {
        let g = engine
            .generate(&tokens, &sampling)
            .await
            .map_err(PackError::from)?;
        let decode_ms = g.usage.decode_time.as_secs_f64() * 1e3;
        r.generated.push(g.usage.generated);
        r.decode_ms.push(decode_ms);
        r.wall_ms.push(g.usage.wall.as_secs_f64() * 1e3);
        if g.usage.generated > 1 {
            per_token.push(decode_ms / (g.usage.generated - 1) as f64);
        }
        on_run(run);
    }
    if per_token.is_empty() {
        return Err(BenchError::NoDecode);
    }
    r.ms_per_token = median(per_token);
    r.tokens_per_s = if r.ms_per_token > 0.0 {
        1e3 / r.ms_per_token
    } else {
        0.0
    };
    Ok(r)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
