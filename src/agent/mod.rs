//! Tool-using agents over a [`StatePack`]: [`Agent`], typed [`Tool`]s and [`AgentLoop`].
//!
//! The context is append-only: the system prompt and tool list are one base state, and each
//! step appends exactly one delta (the task, or the tool results) rendered in the chat
//! template on its own, so every step prefills only its delta. Each step's output is
//! constrained by a grammar built from the tools' schemas, so it always parses as tool calls
//! or an answer.

pub mod legal;
mod tool;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use tracing::{info_span, Instrument};

pub use tool::{Action, Tool, ToolBox, ToolCall, ToolError, ToolResult, MAX_CALLS_PER_STEP};

use crate::engine::Sampling;
use crate::pack::{OpReport, PackError, StatePack, TokenCounts};
use crate::state::StateHash;

/// An agent: what it is told, and what it can do.
#[async_trait]
pub trait Agent: Send + Sync {
    /// The system prompt (the tool list and reply format are added after it).
    fn system_prompt(&self) -> String;
    /// Its tools.
    fn tools(&self) -> ToolBox;
    /// Called before each tool call; return `Err(reason)` to refuse it (the reason becomes
    /// the observation).
    async fn before_tool_call(&self, _call: &ToolCall) -> Result<(), String> {
        Ok(())
    }
    /// Called after each step.
    async fn after_step(&self, _step: &Step) {}
}

/// Why a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum StopReason {
    /// The model answered.
    Answer,
    /// `max_steps` ran out.
    MaxSteps,
    /// The pack or engine failed.
    Error(String),
}

/// One step of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// 1-based.
    pub number: usize,
    /// What the model generated.
    pub output: String,
    /// What it meant: calls, an answer, or why it could not be read.
    pub action: Result<Action, String>,
    /// The tool results (empty for an answer).
    pub results: Vec<ToolResult>,
    /// The infer that generated the output.
    pub report: OpReport,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct AgentReport {
    /// The final answer, if the model gave one.
    pub answer: Option<String>,
    /// Why it ended.
    pub stop: StopReason,
    /// Every step.
    pub steps: Vec<Step>,
    /// The base state (system prompt and tools).
    pub base: OpReport,
    /// Token totals over the base, every step and every observation merge.
    pub tokens: TokenCounts,
    /// The state the run ended in.
    pub final_state: StateHash,
    /// First and last receipt written by the run.
    pub receipts: (u64, u64),
    /// Wall time.
    pub wall: Duration,
}

/// Something that happened during a run, for UIs ([`AgentLoop::run_with_events`]).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum AgentEvent {
    /// A step is about to run.
    StepStarted {
        /// Its number.
        number: usize,
    },
    /// The model asked for a tool.
    ToolCall(ToolCall),
    /// A tool answered.
    ToolResult(ToolResult),
    /// The run is over.
    Finished {
        /// Why.
        stop: StopReason,
    },
}

/// Chat template pieces (ChatML, as SmolLM2 and many others use).
const TURN_END: &str = "<|im_end|>";

/// Runs an [`Agent`] over a [`StatePack`].
pub struct AgentLoop<A> {
    pack: Arc<StatePack>,
    agent: A,
    /// Steps before giving up.
    pub max_steps: usize,
    /// Tokens one step may generate.
    pub max_tokens_per_step: usize,
}

impl<A: Agent> AgentLoop<A> {
    /// A loop of at most 8 steps of at most 96 generated tokens.
    pub fn new(pack: Arc<StatePack>, agent: A) -> Self {
        Self {
            pack,
            agent,
            max_steps: 8,
            max_tokens_per_step: 96,
        }
    }

    /// Sets the step limit.
    pub fn max_steps(mut self, n: usize) -> Self {
        self.max_steps = n;
        self
    }

    /// Runs `task` to an answer or the step limit.
    pub async fn run(&self, task: &str) -> Result<AgentReport, PackError> {
        self.run_with_events(task, |_| {}).await
    }

    /// [`run`](Self::run), calling `on_event` as things happen.
    pub async fn run_with_events(
        &self,
        task: &str,
        mut on_event: impl FnMut(AgentEvent) + Send,
    ) -> Result<AgentReport, PackError> {
        let started = Instant::now();
        let tools = self.agent.tools();
        let base_text = format!(
            "<|im_start|>system\n{}\n{}{TURN_END}\n",
            self.agent.system_prompt(),
            tools.describe()
        );
        let base = self.pack.create(&base_text).await?;
        let sampling =
            Sampling::greedy(self.max_tokens_per_step).constrained(tools.grammar(TURN_END));
        let mut totals = base.tokens;
        let mut state = base.output;
        let mut delta = format!("<|im_start|>user\n{task}{TURN_END}\n<|im_start|>assistant\n");
        let mut steps = Vec::new();
        let mut answer = None;
        let mut stop = StopReason::MaxSteps;
        let mut last_receipt = base.receipt.seq;
        for number in 1..=self.max_steps {
            on_event(AgentEvent::StepStarted { number });
            let span = info_span!("agent.step", number);
            let step = self
                .step(&tools, number, &state, &delta, &sampling, &mut on_event)
                .instrument(span)
                .await;
            let (step, next_state) = match step {
                Ok(s) => s,
                Err(e) => {
                    stop = StopReason::Error(e.to_string());
                    break;
                }
            };
            add(&mut totals, &step.report.tokens);
            last_receipt = step.report.receipt.seq;
            state = next_state;
            tracing::info!(
                number,
                prefilled = step.report.tokens.prefilled,
                reused = step.report.tokens.reused,
                generated = step.report.tokens.generated,
                "agent step"
            );
            self.agent.after_step(&step).await;
            if let Ok(Action::Answer(a)) = &step.action {
                answer = Some(a.clone());
                steps.push(step);
                stop = StopReason::Answer;
                break;
            }
            delta = observation(&step);
            steps.push(step);
        }
        on_event(AgentEvent::Finished { stop: stop.clone() });
        Ok(AgentReport {
            answer,
            stop,
            steps,
            tokens: totals,
            receipts: (base.receipt.seq, last_receipt),
            base,
            final_state: state,
            wall: started.elapsed(),
        })
    }

    async fn step(
        &self,
        tools: &ToolBox,
        number: usize,
        state: &StateHash,
        delta: &str,
        sampling: &Sampling,
        on_event: &mut (impl FnMut(AgentEvent) + Send),
    ) -> Result<(Step, StateHash), PackError> {
        let inference = self.pack.infer(state, delta, sampling).await?;
        let mut next = inference.report.output;
        let action = tools.parse(&inference.text);
        let mut results = Vec::new();
        if let Ok(Action::Calls(calls)) = &action {
            let mut allowed = Vec::new();
            for call in calls {
                on_event(AgentEvent::ToolCall(call.clone()));
                match self.agent.before_tool_call(call).await {
                    Ok(()) => allowed.push(call.clone()),
                    Err(reason) => results.push(ToolResult {
                        call: call.clone(),
                        ok: false,
                        output: format!("error: refused: {reason}"),
                        elapsed: Duration::ZERO,
                    }),
                }
            }
            results.extend(tools.run(&allowed).await);
            for r in &results {
                on_event(AgentEvent::ToolResult(r.clone()));
            }
        }
        // The grammar ends each output with the end-of-turn token; if generation stopped
        // early (the token budget), close the turn so the next delta starts a fresh one.
        if inference.finish != crate::engine::FinishReason::Stop {
            next = self.pack.merge(&next, TURN_END).await?.output;
        }
        Ok((
            Step {
                number,
                output: inference.text,
                action,
                results,
                report: inference.report,
            },
            next,
        ))
    }
}

fn add(t: &mut TokenCounts, s: &TokenCounts) {
    t.delta += s.delta;
    t.state = s.state;
    t.prefilled += s.prefilled;
    t.reused += s.reused;
    t.generated += s.generated;
}

/// The next step's delta: the tool results (or why the output could not be used), as a
/// user turn, and the opening of the assistant's turn.
fn observation(step: &Step) -> String {
    let mut body = String::new();
    match &step.action {
        Ok(Action::Calls(_)) => {
            for r in &step.results {
                body.push_str(&format!("{} -> {}\n", r.call.tool, r.output));
            }
        }
        // An answer ends the run; there is no next step to observe it.
        Ok(Action::Answer(_)) => {}
        Err(e) => body.push_str(&format!("error: {e}\n")),
    }
    format!("\n<|im_start|>user\nObservation:\n{body}{TURN_END}\n<|im_start|>assistant\n")
}
