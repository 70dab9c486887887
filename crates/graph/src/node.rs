//! Graph nodes: async functions, agents, or any [`Node`].

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;

use super::GraphState;
use state_pack_core::agent::{Agent, AgentLoop, AgentReport};

/// A node's error: anything, shown to the user and fed to the retry policy.
pub type NodeError = Box<dyn std::error::Error + Send + Sync>;

/// Where a node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeContext {
    /// The thread.
    pub thread: String,
    /// The node's name.
    pub node: String,
    /// The super-step (0 is the first).
    pub step: i64,
    /// The attempt (1 is the first).
    pub attempt: u32,
}

/// What a node gets.
#[derive(Debug, Clone)]
pub struct NodeInput<S> {
    /// The state at the start of the super-step.
    pub state: S,
    /// The payload of a [`Goto::Send`](super::Goto::Send), if the task came from one.
    pub arg: Option<serde_json::Value>,
    /// Where it runs.
    pub ctx: NodeContext,
}

/// A graph node.
#[async_trait]
pub trait Node<S: GraphState>: Send + Sync + 'static {
    /// Runs once; returns the fields to change.
    async fn run(&self, input: NodeInput<S>) -> Result<S::Update, NodeError>;
}

/// A node that is an async function.
pub struct FnNode<S, F> {
    f: F,
    _state: PhantomData<fn() -> S>,
}

impl<S, F> FnNode<S, F> {
    /// Wraps `f`.
    pub fn new(f: F) -> Self {
        Self {
            f,
            _state: PhantomData,
        }
    }
}

#[async_trait]
impl<S, F, Fut> Node<S> for FnNode<S, F>
where
    S: GraphState,
    F: Fn(NodeInput<S>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<S::Update, NodeError>> + Send + 'static,
{
    async fn run(&self, input: NodeInput<S>) -> Result<S::Update, NodeError> {
        (self.f)(input).await
    }
}

type TaskFn<S> = Arc<dyn Fn(&NodeInput<S>) -> String + Send + Sync>;
type UpdateFn<S> = Arc<dyn Fn(&S, AgentReport) -> <S as GraphState>::Update + Send + Sync>;

/// A node that runs an [`AgentLoop`]: `task` writes the agent's task from the state,
/// `update` turns its report into the state update. Agents whose system prompts are equal
/// share that prompt's KV: the pack prefills it once, and later runs reuse it.
pub struct AgentNode<S: GraphState, A: Agent + 'static> {
    agent: Arc<AgentLoop<A>>,
    task: TaskFn<S>,
    update: UpdateFn<S>,
}

impl<S: GraphState, A: Agent + 'static> AgentNode<S, A> {
    /// A node running `agent` on the task `task(input)`, updating the state with
    /// `update(state, report)`.
    pub fn new(
        agent: AgentLoop<A>,
        task: impl Fn(&NodeInput<S>) -> String + Send + Sync + 'static,
        update: impl Fn(&S, AgentReport) -> S::Update + Send + Sync + 'static,
    ) -> Self {
        Self {
            agent: Arc::new(agent),
            task: Arc::new(task),
            update: Arc::new(update),
        }
    }
}

#[async_trait]
impl<S: GraphState, A: Agent + 'static> Node<S> for AgentNode<S, A> {
    async fn run(&self, input: NodeInput<S>) -> Result<S::Update, NodeError> {
        let task = (self.task)(&input);
        let report = self.agent.run(&task).await?;
        Ok((self.update)(&input.state, report))
    }
}
