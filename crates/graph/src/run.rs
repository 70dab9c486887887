//! Running a compiled graph: super-steps, routing, retries, checkpoints, interrupts.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info_span, Instrument};

use super::checkpoint::{CheckpointId, CheckpointInfo, Joins, New, Source, Stored, Task};
use super::{CompiledGraph, Goto, GraphError, GraphState, NodeContext, NodeInput, END, START};

/// How a run stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "nodes")]
pub enum RunStatus {
    /// The graph reached [`END`] on every branch.
    Finished,
    /// Paused before these nodes (`interrupt_before`): resume to run them.
    InterruptedBefore(Vec<String>),
    /// Paused after these nodes ran (`interrupt_after`).
    InterruptedAfter(Vec<String>),
}

/// A run's outcome.
#[derive(Debug, Clone)]
pub struct GraphRun<S> {
    /// The thread.
    pub thread: String,
    /// The state at the last checkpoint.
    pub state: S,
    /// Why it stopped.
    pub status: RunStatus,
    /// The last checkpoint written.
    pub checkpoint: CheckpointId,
    /// Super-steps this call ran.
    pub steps: usize,
}

/// What a streaming run reports, in order.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum GraphEvent {
    /// A node began (all of a super-step's nodes begin together).
    NodeStarted {
        /// Super-step.
        step: i64,
        /// Node.
        node: String,
    },
    /// A node's attempt failed and it will be retried.
    NodeRetrying {
        /// Super-step.
        step: i64,
        /// Node.
        node: String,
        /// The failed attempt.
        attempt: u32,
        /// Its error.
        error: String,
    },
    /// A node finished; its update, as JSON.
    NodeFinished {
        /// Super-step.
        step: i64,
        /// Node.
        node: String,
        /// Attempts it took.
        attempts: u32,
        /// Wall time of all attempts.
        #[serde(with = "humantime_serde_ms")]
        elapsed: Duration,
        /// The update.
        update: serde_json::Value,
    },
    /// The super-step's updates were merged and checkpointed.
    StateUpdated(CheckpointInfo),
    /// The run paused or ended.
    Stopped(RunStatus),
}

mod humantime_serde_ms {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

/// A task's outcome: its update, or its last error; attempts; failed attempts' errors.
struct TaskOutcome<U> {
    result: Result<U, String>,
    attempts: u32,
    retried: Vec<String>,
    elapsed: Duration,
}

impl<S: GraphState> CompiledGraph<S> {
    /// Runs a new thread from `input` to the end or an interrupt.
    pub async fn invoke(&self, thread: &str, input: S) -> Result<GraphRun<S>, GraphError> {
        self.stream(thread, input, |_| {}).await
    }

    /// [`invoke`](Self::invoke), reporting every node start and finish and every state
    /// update to `on_event`.
    pub async fn stream(
        &self,
        thread: &str,
        input: S,
        mut on_event: impl FnMut(GraphEvent) + Send,
    ) -> Result<GraphRun<S>, GraphError> {
        if self.checkpointer.latest(thread)?.is_some() {
            return Err(GraphError::ThreadExists(thread.to_string()));
        }
        let mut joins = Joins::new();
        let next = self.route(&[Task(START.into(), None)], &input, &mut joins)?;
        let receipts = self.checkpointer.receipt_count()?;
        let snapshot = serde_json::to_value(&input)?;
        let root = self.checkpointer.insert(New {
            thread,
            parent: None,
            step: -1,
            source: Source::Input,
            snapshot: Some(&snapshot),
            writes: &[],
            next: &next,
            joins: &joins,
            receipts: (receipts, receipts),
        })?;
        let at = Position {
            checkpoint: root,
            step: 0,
            next,
            joins,
        };
        self.drive(thread, input, at, false, &mut on_event).await
    }

    /// Goes on with `thread` from its newest checkpoint: after a crash, or past an
    /// interrupt. `human`, if given, is merged first (and checkpointed as an `update`).
    pub async fn resume(
        &self,
        thread: &str,
        human: Option<S::Update>,
    ) -> Result<GraphRun<S>, GraphError> {
        self.resume_stream(thread, human, |_| {}).await
    }

    /// [`resume`](Self::resume), with events.
    pub async fn resume_stream(
        &self,
        thread: &str,
        human: Option<S::Update>,
        mut on_event: impl FnMut(GraphEvent) + Send,
    ) -> Result<GraphRun<S>, GraphError> {
        let latest = self
            .checkpointer
            .latest(thread)?
            .ok_or_else(|| GraphError::NoThread(thread.to_string()))?;
        let mut state = self.state_at(latest.id)?;
        let mut checkpoint = latest.id;
        if let Some(update) = human {
            let writes = [("__human__".to_string(), serde_json::to_value(&update)?)];
            state.merge(update);
            checkpoint = self.write_update(&latest, &writes)?;
        }
        tracing::info!(thread, %checkpoint, next = ?latest.next, "resuming");
        let at = Position {
            checkpoint,
            step: latest.step + 1,
            next: latest.next,
            joins: latest.joins,
        };
        // The newest checkpoint's tasks are due: a run paused before them is resumed past
        // the interrupt.
        self.drive(thread, state, at, true, &mut on_event).await
    }

    /// Branches from checkpoint `from` (time travel): a new checkpoint with `from` as its
    /// parent, holding `update` if any, with the same tasks due. It becomes its thread's
    /// newest, so [`resume`](Self::resume) goes on from it; the checkpoints after `from`
    /// stay as they were.
    pub fn fork(
        &self,
        from: CheckpointId,
        update: Option<S::Update>,
    ) -> Result<CheckpointId, GraphError> {
        let base = self.checkpointer.get(from)?;
        let writes: Vec<(String, serde_json::Value)> = match update {
            Some(u) => vec![("__fork__".to_string(), serde_json::to_value(&u)?)],
            None => Vec::new(),
        };
        self.write_update(&base, &writes)
    }

    fn write_update(
        &self,
        base: &Stored,
        writes: &[(String, serde_json::Value)],
    ) -> Result<CheckpointId, GraphError> {
        let receipts = self.checkpointer.receipt_count()?;
        self.checkpointer.insert(New {
            thread: &base.thread,
            parent: Some(base.id),
            step: base.step,
            source: Source::Update,
            snapshot: None,
            writes,
            next: &base.next,
            joins: &base.joins,
            receipts: (receipts, receipts),
        })
    }

    /// The state at checkpoint `id`: the thread's input with every update on the way
    /// merged in order.
    pub fn state_at(&self, id: CheckpointId) -> Result<S, GraphError> {
        let chain = self.checkpointer.chain(id)?;
        let mut state: S = match chain.first().and_then(|c| c.snapshot.clone()) {
            Some(s) => serde_json::from_value(s)?,
            None => return Err(GraphError::NoCheckpoint(id)),
        };
        for c in &chain {
            for (_, update) in &c.writes {
                state.merge(serde_json::from_value(update.clone())?);
            }
        }
        Ok(state)
    }

    /// The thread's newest state and checkpoint.
    pub fn state(&self, thread: &str) -> Result<(S, CheckpointInfo), GraphError> {
        let latest = self
            .checkpointer
            .latest(thread)?
            .ok_or_else(|| GraphError::NoThread(thread.to_string()))?;
        Ok((self.state_at(latest.id)?, CheckpointInfo::from(&latest)))
    }

    /// Every checkpoint of `thread`, newest first (forks included).
    pub fn history(&self, thread: &str) -> Result<Vec<CheckpointInfo>, GraphError> {
        self.checkpointer.history(thread)
    }

    async fn drive(
        &self,
        thread: &str,
        mut state: S,
        mut at: Position,
        mut past_interrupt: bool,
        on_event: &mut (impl FnMut(GraphEvent) + Send),
    ) -> Result<GraphRun<S>, GraphError> {
        let mut steps = 0;
        loop {
            if at.next.is_empty() {
                return Ok(stopped(
                    thread,
                    RunStatus::Finished,
                    state,
                    at.checkpoint,
                    steps,
                    on_event,
                ));
            }
            let before = self.nodes_in(&at.next, &self.graph.interrupt_before);
            if !past_interrupt && !before.is_empty() {
                let status = RunStatus::InterruptedBefore(before);
                return Ok(stopped(
                    thread,
                    status,
                    state,
                    at.checkpoint,
                    steps,
                    on_event,
                ));
            }
            past_interrupt = false;
            if steps == self.graph.recursion_limit {
                return Err(GraphError::RecursionLimit {
                    limit: self.graph.recursion_limit,
                    checkpoint: at.checkpoint,
                });
            }
            let span = info_span!("graph.step", thread, step = at.step, tasks = at.next.len());
            let (updates, receipts) = self
                .super_step(thread, &state, &at, on_event)
                .instrument(span)
                .await?;
            let mut writes = Vec::with_capacity(updates.len());
            for (task, update) in at.next.iter().zip(updates) {
                writes.push((task.0.clone(), serde_json::to_value(&update)?));
                state.merge(update);
            }
            let mut joins = std::mem::take(&mut at.joins);
            let next = self.route(&at.next, &state, &mut joins)?;
            let checkpoint = self.checkpointer.insert(New {
                thread,
                parent: Some(at.checkpoint),
                step: at.step,
                source: Source::Loop,
                snapshot: None,
                writes: &writes,
                next: &next,
                joins: &joins,
                receipts,
            })?;
            steps += 1;
            // As stored (with its size), so what a UI shows is what a resume will read.
            let stored = self.checkpointer.get(checkpoint)?;
            on_event(GraphEvent::StateUpdated(CheckpointInfo::from(&stored)));
            let after = self.nodes_in(&at.next, &self.graph.interrupt_after);
            at = Position {
                checkpoint,
                step: at.step + 1,
                next,
                joins,
            };
            if !after.is_empty() {
                let status = RunStatus::InterruptedAfter(after);
                return Ok(stopped(
                    thread,
                    status,
                    state,
                    at.checkpoint,
                    steps,
                    on_event,
                ));
            }
        }
    }

    /// Runs every task of one super-step concurrently; their updates in task order, and
    /// the receipts written meanwhile.
    async fn super_step(
        &self,
        thread: &str,
        state: &S,
        at: &Position,
        on_event: &mut (impl FnMut(GraphEvent) + Send),
    ) -> Result<(Vec<S::Update>, (u64, u64)), GraphError> {
        let receipts_from = self.checkpointer.receipt_count()?;
        let mut handles = Vec::with_capacity(at.next.len());
        for Task(node, arg) in &at.next {
            on_event(GraphEvent::NodeStarted {
                step: at.step,
                node: node.clone(),
            });
            let entry = self
                .graph
                .nodes
                .get(node)
                .ok_or_else(|| GraphError::UnknownTarget {
                    from: "checkpoint".into(),
                    to: node.clone(),
                })?;
            let input = NodeInput {
                state: state.clone(),
                arg: arg.clone(),
                ctx: NodeContext {
                    thread: thread.to_string(),
                    node: node.clone(),
                    step: at.step,
                    attempt: 1,
                },
            };
            handles.push(tokio::spawn(run_task(
                entry.node.clone(),
                entry.options.clone(),
                input,
            )));
        }
        let mut updates = Vec::with_capacity(handles.len());
        let mut failure = None;
        for (Task(node, _), handle) in at.next.iter().zip(handles) {
            let outcome = match handle.await {
                Ok(o) => o,
                Err(e) => TaskOutcome {
                    result: Err(format!("task failed: {e}")),
                    attempts: 1,
                    retried: Vec::new(),
                    elapsed: Duration::ZERO,
                },
            };
            for (i, error) in outcome.retried.iter().enumerate() {
                on_event(GraphEvent::NodeRetrying {
                    step: at.step,
                    node: node.clone(),
                    attempt: i as u32 + 1,
                    error: error.clone(),
                });
            }
            match outcome.result {
                Ok(update) => {
                    on_event(GraphEvent::NodeFinished {
                        step: at.step,
                        node: node.clone(),
                        attempts: outcome.attempts,
                        elapsed: outcome.elapsed,
                        update: serde_json::to_value(&update)?,
                    });
                    updates.push(update);
                }
                Err(message) => {
                    tracing::warn!(node, attempts = outcome.attempts, %message, "node failed");
                    failure.get_or_insert(GraphError::Node {
                        node: node.clone(),
                        attempts: outcome.attempts,
                        message,
                        checkpoint: at.checkpoint,
                    });
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let receipts_to = self.checkpointer.receipt_count()?;
        Ok((updates, (receipts_from, receipts_to)))
    }

    /// The tasks due after `ran`, given the merged `state`; updates the joins.
    fn route(&self, ran: &[Task], state: &S, joins: &mut Joins) -> Result<Vec<Task>, GraphError> {
        let g = &self.graph;
        let mut next: Vec<Task> = Vec::new();
        let mut push = |from: &str, task: Task| -> Result<(), GraphError> {
            if task.0 != END && !g.nodes.contains_key(&task.0) {
                return Err(GraphError::UnknownTarget {
                    from: from.to_string(),
                    to: task.0,
                });
            }
            // A node reached by several branches runs once (with no payload of its own).
            if task.0 != END && (task.1.is_some() || !next.contains(&task)) {
                next.push(task);
            }
            Ok(())
        };
        let mut seen = BTreeSet::new();
        for Task(node, _) in ran {
            if !seen.insert(node.as_str()) {
                continue;
            }
            for (_, to) in g.edges.iter().filter(|(f, _)| f == node) {
                push(node, Task(to.clone(), None))?;
            }
            if let Some((router, _)) = g.routers.get(node) {
                let mut stack = vec![router(state)];
                while let Some(goto) = stack.pop() {
                    match goto {
                        Goto::Node(to) => push(node, Task(to, None))?,
                        Goto::Send(to, arg) => push(node, Task(to, Some(arg)))?,
                        Goto::Many(all) => stack.extend(all.into_iter().rev()),
                    }
                }
            }
            for (i, (sources, to)) in g.joins.iter().enumerate() {
                if sources.contains(node) {
                    let arrived = joins.entry(i).or_default();
                    arrived.insert(node.clone());
                    if sources.iter().all(|s| arrived.contains(s)) {
                        joins.remove(&i);
                        push(node, Task(to.clone(), None))?;
                    }
                }
            }
        }
        Ok(next)
    }

    fn nodes_in(&self, tasks: &[Task], set: &BTreeSet<String>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for Task(n, _) in tasks {
            if set.contains(n) && !out.contains(n) {
                out.push(n.clone());
            }
        }
        out
    }
}

fn stopped<S>(
    thread: &str,
    status: RunStatus,
    state: S,
    checkpoint: CheckpointId,
    steps: usize,
    on_event: &mut impl FnMut(GraphEvent),
) -> GraphRun<S> {
    on_event(GraphEvent::Stopped(status.clone()));
    GraphRun {
        thread: thread.to_string(),
        state,
        status,
        checkpoint,
        steps,
    }
}

/// Where a run stands: its newest checkpoint and what is due.
struct Position {
    checkpoint: CheckpointId,
    step: i64,
    next: Vec<Task>,
    joins: Joins,
}

/// One task with its retries and time limit. Runs on its own tokio task, so a panicking
/// node is contained.
async fn run_task<S: GraphState>(
    node: Arc<dyn super::Node<S>>,
    options: super::NodeOptions,
    mut input: NodeInput<S>,
) -> TaskOutcome<S::Update> {
    let started = Instant::now();
    let attempts = options.retry.max_attempts.max(1);
    let mut retried = Vec::new();
    let mut backoff = options.retry.backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        input.ctx.attempt = attempt;
        let node = node.clone();
        let this = input.clone();
        let mut handle =
            tokio::spawn(async move { node.run(this).await.map_err(|e| e.to_string()) });
        let joined = match options.timeout {
            Some(limit) => match tokio::time::timeout(limit, &mut handle).await {
                Ok(joined) => joined,
                Err(_) => {
                    handle.abort();
                    Ok(Err(format!("timed out after {limit:?}")))
                }
            },
            None => handle.await,
        };
        let result = match joined {
            Ok(r) => r,
            Err(e) if e.is_panic() => Err(format!("panicked: {}", panic_message(e.into_panic()))),
            Err(e) => Err(format!("task failed: {e}")),
        };
        match result {
            Err(e) if attempt < attempts => {
                tracing::info!(node = input.ctx.node, attempt, error = %e, "retrying node");
                retried.push(e);
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            result => {
                return TaskOutcome {
                    result,
                    attempts: attempt,
                    retried,
                    elapsed: started.elapsed(),
                }
            }
        }
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
