//! Tool-using agents over a [`StatePack`]: [`Agent`], typed [`Tool`]s and [`AgentLoop`].
//!
//! The context is append-only: the system prompt and tool list are one base state, and each
//! step appends exactly one delta (the task, or the tool results) rendered in the model's
//! [`ChatTemplate`](crate::template::ChatTemplate) and tokenized on its own, so every step
//! prefills only its delta. Each step's
//! output is constrained by a grammar built from the tools' schemas, so it always parses as
//! tool calls or an answer. A loop guard answers a call identical to an earlier one with the
//! earlier result (and a note) instead of running the tool again, and stops a run that
//! keeps repeating itself ([`StopReason::Stuck`]). When a [`CompactionPolicy`] says so, the loop replaces the
//! context with a compacted one (a receipted `compact` operation) and goes on from there.

mod tool;
mod transcript;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use tracing::{info_span, Instrument};

pub use tool::{Action, Tool, ToolBox, ToolCall, ToolError, ToolResult, MAX_CALLS_PER_STEP};

use crate::compaction::{CompactionPolicy, CompactionStrategy, CostMeter, Trigger};
use crate::engine::{FinishReason, Grammar, Sampling};
use crate::pack::{OpReport, PackError, StatePack, Tokens};
use crate::state::StateHash;
use crate::template::Role;
use transcript::Transcript;

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
    /// Called on a final answer; return `Err(reason)` to send the model back to work (the
    /// reason becomes the observation and the run goes on).
    async fn review_answer(&self, _answer: &str, _step: usize) -> Result<(), String> {
        Ok(())
    }
    /// Called after each step.
    async fn after_step(&self, _step: &Step) {}
}

/// Why a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum StopReason {
    /// The model answered (and the agent accepted the answer).
    Answer,
    /// `max_steps` ran out.
    MaxSteps,
    /// The next step would not fit the model's context window (compaction off, or unable to
    /// free enough).
    ContextFull {
        /// Tokens the step needed.
        needed: usize,
        /// The window.
        window: usize,
    },
    /// The model made the same call in `times` steps (the loop guard's limit,
    /// [`AgentLoop::max_repeats`]). The run's last operation is a receipted merge of the
    /// observation that says so.
    Stuck {
        /// The repeated call.
        call: ToolCall,
        /// How many times the model made it.
        times: usize,
    },
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
    /// Why the agent refused the answer, if it did.
    pub answer_refused: Option<String>,
    /// The infer that generated the output.
    pub report: OpReport,
}

/// One compaction during a run.
#[derive(Debug, Clone, Serialize)]
pub struct Compaction {
    /// It ran before this step.
    pub before_step: usize,
    /// What fired, with the figures it used.
    pub trigger: Trigger,
    /// The state it replaced.
    pub replaced: StateHash,
    /// Tokens before and after.
    pub tokens_before: usize,
    /// Tokens of the compacted state.
    pub tokens_after: usize,
    /// Observations masked by this compaction.
    pub masked: usize,
    /// Steps summarized (dropped) by this compaction.
    pub summarized: usize,
    /// The summary the model wrote, if the strategy summarizes.
    pub summary: Option<String>,
    /// The infer that wrote the summary.
    pub summary_report: Option<OpReport>,
    /// The `compact` operation.
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
    /// Every compaction.
    pub compactions: Vec<Compaction>,
    /// The base state (system prompt and tools).
    pub base: OpReport,
    /// Token totals over the base, every step, observation merge and compaction.
    pub tokens: Tokens,
    /// The longest context any step ran on.
    pub peak_context: usize,
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
        /// Tokens in its input state.
        context: usize,
    },
    /// The model asked for a tool.
    ToolCall(ToolCall),
    /// A tool answered.
    ToolResult(ToolResult),
    /// A step is done.
    StepFinished(Box<Step>),
    /// The context was compacted.
    Compacted(Box<Compaction>),
    /// The run is over.
    Finished {
        /// Why.
        stop: StopReason,
    },
}

/// How step outputs are constrained.
#[derive(Debug, Clone)]
pub enum Decoding {
    /// The grammar of the agent's tools (the default): outputs always parse.
    Tools,
    /// Another grammar (tests, or tools the model may call that the grammar does not list).
    Grammar(Grammar),
    /// Unconstrained: outputs may not parse and become error observations.
    Free,
}

/// Runs an [`Agent`] over a [`StatePack`].
pub struct AgentLoop<A> {
    pack: Arc<StatePack>,
    agent: A,
    /// Steps before giving up.
    pub max_steps: usize,
    /// Tokens one step may generate.
    pub max_tokens_per_step: usize,
    /// When to compact (never, by default).
    pub policy: CompactionPolicy,
    /// How to compact.
    pub strategy: CompactionStrategy,
    /// How outputs are constrained.
    pub decoding: Decoding,
    /// The first step that may answer; earlier steps must call tools (with
    /// [`Decoding::Tools`]).
    pub answer_from_step: usize,
    /// The loop guard's limit: a run whose model makes one call (same tool, same arguments)
    /// in this many steps stops with [`StopReason::Stuck`]. Repeats before the limit get the
    /// earlier result back without running the tool. `0` turns the guard off (every call
    /// runs).
    pub max_repeats: usize,
}

impl<A: Agent> AgentLoop<A> {
    /// A loop of at most 8 steps of at most 192 generated tokens (room for
    /// [`MAX_CALLS_PER_STEP`] calls: a call that runs out of tokens does not parse),
    /// constrained by the tools' grammar, without compaction.
    pub fn new(pack: Arc<StatePack>, agent: A) -> Self {
        Self {
            pack,
            agent,
            max_steps: 8,
            max_tokens_per_step: 192,
            policy: CompactionPolicy::never(),
            strategy: CompactionStrategy::default(),
            decoding: Decoding::Tools,
            answer_from_step: 1,
            max_repeats: 3,
        }
    }

    /// Sets the loop guard's limit ([`max_repeats`](Self::max_repeats); `0`: off).
    pub fn max_repeats(mut self, n: usize) -> Self {
        self.max_repeats = n;
        self
    }

    /// Steps before `step` must call tools: the grammar leaves the answer out. Makes a
    /// small model look things up before it answers, and soak runs last.
    pub fn answer_from_step(mut self, step: usize) -> Self {
        self.answer_from_step = step;
        self
    }

    /// Sets the step limit.
    pub fn max_steps(mut self, n: usize) -> Self {
        self.max_steps = n;
        self
    }

    /// Compacts the context when `policy` says, as `strategy` says.
    pub fn compaction(mut self, policy: CompactionPolicy, strategy: CompactionStrategy) -> Self {
        self.policy = policy;
        self.strategy = strategy;
        self
    }

    /// Sets how outputs are constrained.
    pub fn decoding(mut self, decoding: Decoding) -> Self {
        self.decoding = decoding;
        self
    }

    /// Runs `task` to an answer or the step limit.
    pub async fn run(&self, task: &str) -> Result<AgentReport, PackError> {
        self.run_with_events(task, |_| {}).await
    }

    /// [`run`](Self::run), calling `on_event` as things happen. Errors before the first
    /// step (the base state cannot be made, bad compaction parameters) are returned; errors
    /// during the run end it with [`StopReason::Error`] and the report of what was done.
    pub async fn run_with_events(
        &self,
        task: &str,
        mut on_event: impl FnMut(AgentEvent) + Send,
    ) -> Result<AgentReport, PackError> {
        let started = Instant::now();
        self.policy
            .validate()
            .and_then(|()| self.strategy.validate())
            .map_err(PackError::InvalidParameters)?;
        let tools = self.agent.tools();
        let template = self.pack.engine().info().template;
        let system = format!("{}\n{}", self.agent.system_prompt(), tools.describe());
        let base = self
            .pack
            .create(&template.turn(None, Role::System, &system)?)
            .await?;
        let greedy = Sampling::greedy(self.max_tokens_per_step);
        let end = template.end_of_turn();
        let (sampling, calls_only) = match &self.decoding {
            Decoding::Tools => (
                greedy.clone().constrained(tools.grammar(end)),
                greedy.constrained(tools.calls_grammar(end)),
            ),
            Decoding::Grammar(g) => {
                let s = greedy.constrained(g.clone());
                (s.clone(), s)
            }
            Decoding::Free => (greedy.clone(), greedy),
        };
        let mut run = Run {
            meter: CostMeter::new(),
            transcript: Transcript::new(self.pack.clone(), self.pack.tokens(&base.output)?, task)
                .await?,
            totals: base.tokens,
            last_receipt: base.receipt.seq,
            state: base.output,
            steps: Vec::new(),
            compactions: Vec::new(),
            peak_context: base.tokens.state as usize,
            since_compaction: 0,
            calls: Vec::new(),
            stuck: None,
        };
        run.meter.observe(&base);
        let mut answer = None;
        let mut stop = StopReason::MaxSteps;
        for number in 1..=self.max_steps {
            let span = info_span!("agent.step", number);
            let outcome = self
                .step(
                    &tools,
                    number,
                    if number < self.answer_from_step {
                        &calls_only
                    } else {
                        &sampling
                    },
                    &mut run,
                    &mut on_event,
                )
                .instrument(span)
                .await;
            match outcome {
                Ok(Some(a)) => {
                    answer = Some(a);
                    stop = StopReason::Answer;
                    break;
                }
                Ok(None) => {
                    if let Some(s) = self.stuck(&mut run).await {
                        stop = s;
                        break;
                    }
                }
                Err(PackError::ContextOverflow { needed, window }) => {
                    stop = StopReason::ContextFull { needed, window };
                    break;
                }
                Err(e) => {
                    stop = StopReason::Error(e.to_string());
                    break;
                }
            }
        }
        tracing::info!(
            ?stop,
            steps = run.steps.len(),
            compactions = run.compactions.len(),
            "agent run finished"
        );
        on_event(AgentEvent::Finished { stop: stop.clone() });
        Ok(AgentReport {
            answer,
            stop,
            steps: run.steps,
            compactions: run.compactions,
            tokens: run.totals,
            peak_context: run.peak_context,
            receipts: (base.receipt.seq, run.last_receipt),
            base,
            final_state: run.state,
            wall: started.elapsed(),
        })
    }

    /// One step: compact if the policy says so, infer, run the calls, and queue the
    /// observation. Returns the accepted answer, if any.
    async fn step(
        &self,
        tools: &ToolBox,
        number: usize,
        sampling: &Sampling,
        run: &mut Run,
        on_event: &mut (impl FnMut(AgentEvent) + Send),
    ) -> Result<Option<String>, PackError> {
        if number > 1 {
            self.maybe_compact(number, run, on_event).await?;
        }
        let context = run.transcript.len();
        on_event(AgentEvent::StepStarted { number, context });
        let delta = run.transcript.pending().to_vec();
        let inference = self.pack.infer_tokens(&run.state, &delta, sampling).await?;
        run.record(&inference.report);
        run.peak_context = run.peak_context.max(inference.report.tokens.state as usize);
        let mut output_tokens = inference.generated.clone();
        run.state = inference.report.output;
        // The grammar ends each output with the end-of-turn token; if generation stopped
        // early (the token budget), close the turn so the next delta starts a fresh one.
        if inference.finish != FinishReason::Stop {
            let end = self.pack.engine().info().template.end_of_turn();
            let close = self.pack.engine().tokenize(end).await?;
            let merged = self.pack.merge_tokens(&run.state, &close).await?;
            run.record(&merged);
            run.state = merged.output;
            output_tokens.extend_from_slice(&close);
        }
        let action = tools.parse(&inference.text);
        let mut results = Vec::new();
        let mut answer_refused = None;
        match &action {
            Ok(Action::Calls(calls)) => {
                // Results in call order: repeats and refusals are answered here, the rest
                // run together.
                let mut slots: Vec<Option<ToolResult>> = Vec::with_capacity(calls.len());
                let mut allowed = Vec::new();
                for call in calls {
                    on_event(AgentEvent::ToolCall(call.clone()));
                    if let Some(earlier) = run.repeat(call, number, self.max_repeats) {
                        slots.push(Some(earlier));
                        continue;
                    }
                    match self.agent.before_tool_call(call).await {
                        Ok(()) => {
                            allowed.push(call.clone());
                            slots.push(None);
                        }
                        Err(reason) => slots.push(Some(ToolResult {
                            call: call.clone(),
                            ok: false,
                            output: format!("error: refused: {reason}"),
                            elapsed: Duration::ZERO,
                            repeat_of: None,
                        })),
                    }
                }
                let mut ran = tools.run(&allowed).await.into_iter();
                for slot in slots {
                    let r = match slot {
                        Some(r) => r,
                        None => match ran.next() {
                            Some(r) => {
                                run.first_result(number, &r);
                                r
                            }
                            None => continue,
                        },
                    };
                    on_event(AgentEvent::ToolResult(r.clone()));
                    results.push(r);
                }
            }
            Ok(Action::Answer(a)) => {
                answer_refused = self.agent.review_answer(a, number).await.err();
            }
            Err(_) => {}
        }
        let step = Step {
            number,
            output: inference.text,
            action,
            results,
            answer_refused,
            report: inference.report,
        };
        let t = &step.report.tokens;
        tracing::info!(
            number,
            context = t.state,
            prefilled = t.prefilled,
            reused = t.reused,
            generated = t.generated,
            parsed = step.action.is_ok(),
            "agent step"
        );
        self.agent.after_step(&step).await;
        on_event(AgentEvent::StepFinished(Box::new(step.clone())));
        let accepted = match (&step.action, &step.answer_refused) {
            (Ok(Action::Answer(a)), None) => Some(a.clone()),
            _ => None,
        };
        if accepted.is_none() {
            let mut body = observation_body(&step);
            if let Some((call, times)) = run.over_limit(self.max_repeats) {
                body.push_str(&format!(
                    "Stopped: {} was called {times} times with the same arguments.\n",
                    call.tool
                ));
                run.stuck = Some((call, times));
            }
            run.transcript.push_turn(output_tokens, &body).await?;
        }
        run.steps.push(step);
        run.since_compaction += 1;
        Ok(accepted)
    }

    /// After a step whose call reached the loop guard's limit: merges the step's
    /// observation, which says the run stops and why (a receipted operation).
    async fn stuck(&self, run: &mut Run) -> Option<StopReason> {
        let (call, times) = run.stuck.take()?;
        tracing::warn!(tool = %call.tool, times, "agent stuck: the same call repeated");
        let delta = run.transcript.pending().to_vec();
        match self.pack.merge_tokens(&run.state, &delta).await {
            Ok(report) => {
                run.record(&report);
                run.state = report.output;
                Some(StopReason::Stuck { call, times })
            }
            Err(e) => Some(StopReason::Error(e.to_string())),
        }
    }

    /// Compacts the context if the policy fires.
    async fn maybe_compact(
        &self,
        number: usize,
        run: &mut Run,
        on_event: &mut (impl FnMut(AgentEvent) + Send),
    ) -> Result<(), PackError> {
        let current = run.transcript.tokens();
        let plan = run.transcript.plan(&self.strategy, &current).await?;
        let ctx = crate::compaction::ContextStats {
            next_step_tokens: run.transcript.len()
                + run.transcript.pending().len()
                + self.max_tokens_per_step,
            window: self.pack.engine().info().context_window,
            steps_since_compaction: run.since_compaction,
            removable_tokens: plan.removable,
            rebuild_tokens: plan.rebuild,
            summary_tokens: self.strategy.summary_tokens().unwrap_or(0)
                * usize::from(plan.summarized > 0),
            remaining_steps: self.max_steps + 1 - number,
        };
        let Some(trigger) = self.policy.decide(&ctx, &run.meter) else {
            return Ok(());
        };
        let span = info_span!("agent.compact", before_step = number);
        async {
            // Compaction rebuilds the context from the transcript: make sure it is the state.
            let fingerprint = &self.pack.engine().info().fingerprint;
            if StateHash::of(fingerprint, &current) != run.state {
                return Err(PackError::Inconsistent {
                    state: run.state,
                    reason: format!(
                        "the agent's transcript ({} tokens) does not hash to the state",
                        current.len()
                    ),
                });
            }
            let tokens_before = current.len();
            let replaced = run.state;
            // The summary is written from the full current context, as an ordinary
            // (receipted) infer on a branch that the compacted state then replaces.
            let mut summary = None;
            let mut summary_report = None;
            if let (true, Some(max_tokens)) = (plan.summarized > 0, self.strategy.summary_tokens())
            {
                let request = run.transcript.summary_request().await?;
                let s = self
                    .pack
                    .infer_tokens(&run.state, &request, &Sampling::greedy(max_tokens))
                    .await?;
                run.record(&s.report);
                summary = Some(s.text.trim().to_string());
                summary_report = Some(s.report);
            }
            let applied = run.transcript.apply(&plan, summary.as_deref()).await?;
            let policy = serde_json::json!({
                "policy": self.policy,
                "strategy": self.strategy,
                "trigger": trigger,
                "before_step": number,
                "masked": applied.masked,
                "summarized": applied.summarized,
                "summary_sha256": summary.as_deref().map(sha256_hex),
                "summary_receipt": summary_report.as_ref().map(|r| r.receipt.seq),
            });
            let report = self
                .pack
                .compact_tokens(&replaced, run.transcript.tokens(), policy)
                .await?;
            run.record(&report);
            run.state = report.output;
            run.since_compaction = 0;
            let c = Compaction {
                before_step: number,
                trigger,
                replaced,
                tokens_before,
                tokens_after: report.tokens.state as usize,
                masked: applied.masked,
                summarized: applied.summarized,
                summary,
                summary_report,
                report,
            };
            tracing::info!(
                before = c.tokens_before,
                after = c.tokens_after,
                prefilled = c.report.tokens.prefilled,
                masked = c.masked,
                summarized = c.summarized,
                "compacted"
            );
            on_event(AgentEvent::Compacted(Box::new(c.clone())));
            run.compactions.push(c);
            Ok(())
        }
        .instrument(span)
        .await
    }
}

/// The mutable state of one run.
struct Run {
    meter: CostMeter,
    transcript: Transcript,
    totals: Tokens,
    last_receipt: u64,
    state: StateHash,
    steps: Vec<Step>,
    compactions: Vec<Compaction>,
    peak_context: usize,
    since_compaction: usize,
    /// Every distinct call of the run (a run makes a few dozen at most).
    calls: Vec<Seen>,
    /// The call that reached the loop guard's limit, and how many times it was made.
    stuck: Option<(ToolCall, usize)>,
}

/// One distinct call: the step that first made it, its result, and in how many steps the
/// model made it.
struct Seen {
    call: ToolCall,
    step: usize,
    last_step: usize,
    result: Option<(bool, String)>,
    times: usize,
}

impl Run {
    /// The loop guard: counts `call`, and when an earlier step made it and got a result,
    /// answers it with that result and a note instead of running the tool again.
    fn repeat(&mut self, call: &ToolCall, step: usize, max_repeats: usize) -> Option<ToolResult> {
        if max_repeats == 0 {
            return None;
        }
        let i = match self.calls.iter().position(|s| s.call == *call) {
            Some(i) => i,
            None => {
                self.calls.push(Seen {
                    call: call.clone(),
                    step,
                    last_step: 0,
                    result: None,
                    times: 0,
                });
                self.calls.len() - 1
            }
        };
        let seen = &mut self.calls[i];
        // Counted once a step: the same call twice in one step is one repeat of intent.
        if seen.last_step != step {
            seen.times += 1;
            seen.last_step = step;
        }
        let (ok, output) = seen.result.clone()?;
        Some(ToolResult {
            call: call.clone(),
            ok,
            output: format!(
                "{output} (the same call as step {}: its result again, not run twice; call something else or answer)",
                seen.step
            ),
            elapsed: Duration::ZERO,
            repeat_of: Some(seen.step),
        })
    }

    /// Keeps the result of a call that ran, for later repeats of it.
    fn first_result(&mut self, step: usize, r: &ToolResult) {
        if let Some(seen) = self.calls.iter_mut().find(|s| s.call == r.call) {
            if seen.result.is_none() {
                seen.step = step;
                seen.result = Some((r.ok, r.output.clone()));
            }
        }
    }

    /// A call the model has made `max_repeats` times (`0`: the guard is off).
    fn over_limit(&self, max_repeats: usize) -> Option<(ToolCall, usize)> {
        if max_repeats == 0 {
            return None;
        }
        self.calls
            .iter()
            .find(|s| s.times >= max_repeats)
            .map(|s| (s.call.clone(), s.times))
    }

    fn record(&mut self, r: &OpReport) {
        self.meter.observe(r);
        let t = &mut self.totals;
        t.delta += r.tokens.delta;
        t.state = r.tokens.state;
        t.prefilled += r.tokens.prefilled;
        t.reused += r.tokens.reused;
        t.generated += r.tokens.generated;
        self.last_receipt = r.receipt.seq;
    }
}

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The body of the observation that follows a step: the tool results, or why the output
/// could not be used.
fn observation_body(step: &Step) -> String {
    let mut body = String::new();
    match &step.action {
        Ok(Action::Calls(_)) => {
            for r in &step.results {
                body.push_str(&format!("{} -> {}\n", r.call.tool, r.output));
            }
        }
        Ok(Action::Answer(_)) => {
            if let Some(reason) = &step.answer_refused {
                body.push_str(&format!("error: answer not accepted: {reason}\n"));
            }
        }
        Err(e) => body.push_str(&format!("error: {e}\n")),
    }
    body
}
