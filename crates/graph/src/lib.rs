//! LangGraph-style workflows: a [`StateGraph`] of async nodes (functions or
//! [`Agent`](state_pack_core::agent::Agent)s) over a typed state, run in super-steps with checkpoints in
//! the pack's SQLite database.
//!
//! - **State and reducers.** The state is a user type implementing [`GraphState`]: nodes
//!   return an `Update`, and [`GraphState::merge`] folds it in field by field
//!   ([`reduce::append`] for message lists, [`reduce::last`] for the rest).
//! - **Edges.** [`add_edge`](StateGraph::add_edge), fan-in with
//!   [`add_join`](StateGraph::add_join) (the target runs once every source has run),
//!   [`add_conditional_edges`](StateGraph::add_conditional_edges) with a router that may go to
//!   several nodes at once or [`Goto::Send`] a payload to one node per item (map-reduce).
//!   [`START`] and [`END`] are the entry and the exit.
//! - **Super-steps.** Every task due runs concurrently on the same state; their updates are
//!   merged in a fixed order (the order the tasks were scheduled), then edges and routers
//!   pick the next tasks. Parallel branches that lead to the same node meet there: it runs
//!   once, in the next step, after all of them (the join of a map-reduce).
//! - **Checkpoints.** One per super-step, keyed by thread and id with its parent; each stores
//!   only its updates and the tasks due next (see `src/graph/schema.sql`). A killed run
//!   [`resume`](CompiledGraph::resume)s from its last checkpoint; `interrupt_before` /
//!   `interrupt_after` pause a run for a human, who resumes it with an update;
//!   [`history`](CompiledGraph::history) lists a thread's checkpoints and
//!   [`fork`](CompiledGraph::fork) branches from any of them without touching the rest.
//!
//! ```no_run
//! # use state_pack_graph::{GraphState, StateGraph, START, END, reduce, NodeInput, Checkpointer};
//! # use serde::{Serialize, Deserialize};
//! #[derive(Clone, Default, Serialize, Deserialize)]
//! struct Chat { messages: Vec<String> }
//! #[derive(Clone, Default, Serialize, Deserialize)]
//! struct ChatUpdate { messages: Option<Vec<String>> }
//! impl GraphState for Chat {
//!     type Update = ChatUpdate;
//!     fn merge(&mut self, u: ChatUpdate) { reduce::append(&mut self.messages, u.messages) }
//! }
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let graph = StateGraph::<Chat>::new()
//!     .add_node("hello", |_: NodeInput<Chat>| async {
//!         Ok(ChatUpdate { messages: Some(vec!["hello".into()]) })
//!     })
//!     .add_edge(START, "hello")
//!     .add_edge("hello", END)
//!     .compile(Checkpointer::open("graph.db".as_ref())?)?;
//! let run = graph.invoke("thread-1", Chat::default()).await?;
//! assert_eq!(run.state.messages, ["hello"]);
//! # Ok(()) }
//! ```

mod checkpoint;
mod node;
pub mod reduce;
mod run;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use checkpoint::{CheckpointId, CheckpointInfo, Checkpointer, Source};
pub use node::{AgentNode, FnNode, Node, NodeContext, NodeError, NodeInput};
pub use run::{GraphEvent, GraphRun, RunStatus};

use state_pack_core::store::StoreError;

/// The entry: edges from here name the first nodes.
pub const START: &str = "__start__";
/// The exit: a task routed here ends its branch.
pub const END: &str = "__end__";

/// A graph's state: serializable (checkpoints store it as JSON) and mergeable.
pub trait GraphState: Clone + Send + Sync + Serialize + DeserializeOwned + 'static {
    /// What a node returns: the fields it changes.
    type Update: Clone + Send + Sync + Serialize + DeserializeOwned + 'static;
    /// Folds `update` in (the reducers). Must be deterministic: a resumed run rebuilds the
    /// state by merging the stored updates again.
    fn merge(&mut self, update: Self::Update);
}

/// Where a router sends the graph next.
#[derive(Debug, Clone, PartialEq)]
pub enum Goto {
    /// Run a node (or [`END`]) on the state.
    Node(String),
    /// Run a node with a payload of its own ([`NodeInput::arg`]): one task per `Send`, so a
    /// router can fan out over a list (map-reduce).
    Send(String, serde_json::Value),
    /// Several at once (parallel branches).
    Many(Vec<Goto>),
}

impl From<&str> for Goto {
    fn from(node: &str) -> Self {
        Goto::Node(node.to_string())
    }
}

impl From<String> for Goto {
    fn from(node: String) -> Self {
        Goto::Node(node)
    }
}

type Router<S> = Arc<dyn Fn(&S) -> Goto + Send + Sync>;

/// How often and how patiently a node is retried when it fails or times out.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all (1: no retry).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled before each later one.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            backoff: Duration::from_millis(100),
        }
    }
}

/// Per-node settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeOptions {
    /// Retries.
    pub retry: RetryPolicy,
    /// Each attempt's time limit (none by default).
    pub timeout: Option<Duration>,
}

/// Why a graph did not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphProblem {
    /// Two nodes with one name.
    #[error("node {0:?} is added twice")]
    DuplicateNode(String),
    /// A node named like [`START`] or [`END`].
    #[error("{0:?} is reserved")]
    ReservedName(String),
    /// An edge names a node that does not exist.
    #[error("edge {from:?} -> {to:?} names an unknown node {unknown:?}")]
    UnknownNode {
        /// Source.
        from: String,
        /// Target.
        to: String,
        /// The unknown one.
        unknown: String,
    },
    /// Nothing leaves [`START`].
    #[error("no edge from START: the graph has no entry")]
    NoEntry,
    /// No path from [`START`] reaches the node.
    #[error("node {0:?} cannot be reached from START")]
    Unreachable(String),
    /// No path from the node reaches [`END`].
    #[error("node {0:?} has no way to END")]
    NoWayToEnd(String),
    /// An interrupt names an unknown node.
    #[error("interrupt names an unknown node {0:?}")]
    UnknownInterrupt(String),
    /// Two conditional edges from one node.
    #[error("node {0:?} has two routers")]
    TwoRouters(String),
}

/// What can go wrong building or running a graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// `compile` refused the graph.
    #[error("invalid graph: {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// Every problem found.
        problems: Vec<GraphProblem>,
    },
    /// A node failed on every attempt.
    #[error("node {node:?} failed after {attempts} attempt(s): {message} (the run stopped at checkpoint {checkpoint}; resume it once fixed)")]
    Node {
        /// The node.
        node: String,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        message: String,
        /// The last checkpoint written.
        checkpoint: CheckpointId,
    },
    /// A router sent the graph to a node that does not exist.
    #[error("router of {from:?} sent the graph to unknown node {to:?}")]
    UnknownTarget {
        /// The routing node.
        from: String,
        /// Its answer.
        to: String,
    },
    /// The run took more super-steps than the limit.
    #[error("recursion limit: {limit} super-steps without reaching END (stopped at checkpoint {checkpoint}; raise it with recursion_limit)")]
    RecursionLimit {
        /// The limit.
        limit: usize,
        /// The last checkpoint written.
        checkpoint: CheckpointId,
    },
    /// No checkpoint for the thread.
    #[error("thread {0:?} has no checkpoint: start it with invoke")]
    NoThread(String),
    /// No such checkpoint.
    #[error("no checkpoint {0}")]
    NoCheckpoint(CheckpointId),
    /// The thread already has a run: `invoke` would start a second history on it.
    #[error("thread {0:?} already has checkpoints: resume it, or use a new thread id")]
    ThreadExists(String),
    /// A state or update does not (de)serialize.
    #[error("state (de)serialization: {0}")]
    Json(#[from] serde_json::Error),
    /// The checkpoint store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for GraphError {
    fn from(e: rusqlite::Error) -> Self {
        GraphError::Store(StoreError::from(e))
    }
}

impl From<state_pack_ledger::sql::SqlError> for GraphError {
    fn from(e: state_pack_ledger::sql::SqlError) -> Self {
        GraphError::Store(StoreError::Sql(e))
    }
}

pub(crate) struct NodeEntry<S: GraphState> {
    node: Arc<dyn Node<S>>,
    options: NodeOptions,
}

/// A graph being built. Builder methods never fail; [`compile`](Self::compile) checks it.
pub struct StateGraph<S: GraphState> {
    nodes: BTreeMap<String, NodeEntry<S>>,
    order: Vec<String>,
    edges: Vec<(String, String)>,
    joins: Vec<(Vec<String>, String)>,
    routers: BTreeMap<String, (Router<S>, Vec<String>)>,
    interrupt_before: BTreeSet<String>,
    interrupt_after: BTreeSet<String>,
    recursion_limit: usize,
    problems: Vec<GraphProblem>,
}

impl<S: GraphState> Default for StateGraph<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: GraphState> StateGraph<S> {
    /// An empty graph (recursion limit 25 super-steps).
    pub fn new() -> Self {
        Self {
            nodes: BTreeMap::new(),
            order: Vec::new(),
            edges: Vec::new(),
            joins: Vec::new(),
            routers: BTreeMap::new(),
            interrupt_before: BTreeSet::new(),
            interrupt_after: BTreeSet::new(),
            recursion_limit: 25,
            problems: Vec::new(),
        }
    }

    /// Adds a node running the async function `f`.
    pub fn add_node<F, Fut>(self, name: &str, f: F) -> Self
    where
        F: Fn(NodeInput<S>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<S::Update, NodeError>> + Send + 'static,
    {
        self.add_node_with(name, FnNode::new(f), NodeOptions::default())
    }

    /// Adds any [`Node`] (an [`AgentNode`], a type of yours) with its options.
    pub fn add_node_with(mut self, name: &str, node: impl Node<S>, options: NodeOptions) -> Self {
        if name == START || name == END {
            self.problems
                .push(GraphProblem::ReservedName(name.to_string()));
        } else if self.nodes.contains_key(name) {
            self.problems
                .push(GraphProblem::DuplicateNode(name.to_string()));
        } else {
            self.order.push(name.to_string());
            self.nodes.insert(
                name.to_string(),
                NodeEntry {
                    node: Arc::new(node),
                    options,
                },
            );
        }
        self
    }

    /// After `from` runs, `to` runs (in the next super-step).
    pub fn add_edge(mut self, from: &str, to: &str) -> Self {
        self.edges.push((from.to_string(), to.to_string()));
        self
    }

    /// `to` runs once every one of `from` has run since it last ran (fan-in of branches
    /// that take different numbers of steps).
    pub fn add_join(mut self, from: &[&str], to: &str) -> Self {
        self.joins
            .push((from.iter().map(|s| s.to_string()).collect(), to.to_string()));
        self
    }

    /// After `from` runs, `router` reads the merged state and picks the next nodes, which
    /// must be among `targets` (the graph is checked, and drawn, with these).
    pub fn add_conditional_edges(
        mut self,
        from: &str,
        router: impl Fn(&S) -> Goto + Send + Sync + 'static,
        targets: &[&str],
    ) -> Self {
        if self.routers.contains_key(from) {
            self.problems
                .push(GraphProblem::TwoRouters(from.to_string()));
        }
        self.routers.insert(
            from.to_string(),
            (
                Arc::new(router),
                targets.iter().map(|s| s.to_string()).collect(),
            ),
        );
        self
    }

    /// Pause before these nodes run; [`resume`](CompiledGraph::resume) goes on.
    pub fn interrupt_before(mut self, nodes: &[&str]) -> Self {
        self.interrupt_before
            .extend(nodes.iter().map(|s| s.to_string()));
        self
    }

    /// Pause after these nodes ran (their update is checkpointed).
    pub fn interrupt_after(mut self, nodes: &[&str]) -> Self {
        self.interrupt_after
            .extend(nodes.iter().map(|s| s.to_string()));
        self
    }

    /// Super-steps one invoke or resume may take before it stops with
    /// [`GraphError::RecursionLimit`].
    pub fn recursion_limit(mut self, steps: usize) -> Self {
        self.recursion_limit = steps;
        self
    }

    /// Every edge, as (from, to, conditional).
    fn all_edges(&self) -> Vec<(String, String, bool)> {
        let mut out: Vec<(String, String, bool)> = self
            .edges
            .iter()
            .map(|(f, t)| (f.clone(), t.clone(), false))
            .collect();
        for (from, to) in &self.joins {
            out.extend(from.iter().map(|f| (f.clone(), to.clone(), false)));
        }
        for (from, (_, targets)) in &self.routers {
            out.extend(targets.iter().map(|t| (from.clone(), t.clone(), true)));
        }
        out
    }

    /// Every problem with the graph, in a stable order.
    fn problems(&self) -> Vec<GraphProblem> {
        let mut problems = self.problems.clone();
        let edges = self.all_edges();
        for (from, to, _) in &edges {
            // Edges leave START or a node, and reach END or a node.
            let bad_from = from != START && !self.nodes.contains_key(from);
            let bad_to = to != END && !self.nodes.contains_key(to);
            for (bad, unknown) in [(bad_from, from), (bad_to, to)] {
                if bad {
                    problems.push(GraphProblem::UnknownNode {
                        from: from.clone(),
                        to: to.clone(),
                        unknown: unknown.clone(),
                    });
                }
            }
        }
        for n in self.interrupt_before.iter().chain(&self.interrupt_after) {
            if !self.nodes.contains_key(n) {
                problems.push(GraphProblem::UnknownInterrupt(n.clone()));
            }
        }
        if !edges.iter().any(|(f, _, _)| f == START) {
            problems.push(GraphProblem::NoEntry);
        }
        let reach = |start: &str, forward: bool| {
            let mut seen = BTreeSet::from([start.to_string()]);
            let mut queue = VecDeque::from([start.to_string()]);
            while let Some(n) = queue.pop_front() {
                for (f, t, _) in &edges {
                    let (a, b) = if forward { (f, t) } else { (t, f) };
                    if *a == n && seen.insert(b.clone()) {
                        queue.push_back(b.clone());
                    }
                }
            }
            seen
        };
        let from_start = reach(START, true);
        let to_end = reach(END, false);
        for n in &self.order {
            if !from_start.contains(n) {
                problems.push(GraphProblem::Unreachable(n.clone()));
            } else if !to_end.contains(n) {
                problems.push(GraphProblem::NoWayToEnd(n.clone()));
            }
        }
        problems
    }

    /// Checks the graph (unknown names, duplicates, unreachable nodes, nodes with no way to
    /// END) and binds it to a checkpoint store.
    pub fn compile(self, checkpointer: Checkpointer) -> Result<CompiledGraph<S>, GraphError> {
        let problems = self.problems();
        if !problems.is_empty() {
            return Err(GraphError::Invalid { problems });
        }
        Ok(CompiledGraph {
            mermaid: self.mermaid(),
            graph: Arc::new(self),
            checkpointer: Arc::new(checkpointer),
        })
    }

    /// The graph as Mermaid flowchart text; conditional edges are dotted.
    pub fn mermaid(&self) -> String {
        let id = |n: &str| match n {
            START => "__start__".to_string(),
            END => "__end__".to_string(),
            n => n.replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_"),
        };
        let mut out = String::from("flowchart TD\n");
        out.push_str("    __start__([START])\n");
        for n in &self.order {
            let mut label = n.clone();
            if self.interrupt_before.contains(n) {
                label = format!("⏸ {label}");
            }
            if self.interrupt_after.contains(n) {
                label = format!("{label} ⏸");
            }
            out.push_str(&format!("    {}[\"{}\"]\n", id(n), label.replace('"', "'")));
        }
        out.push_str("    __end__([END])\n");
        for (from, to, conditional) in self.all_edges() {
            let arrow = if conditional { "-.->" } else { "-->" };
            out.push_str(&format!("    {} {arrow} {}\n", id(&from), id(&to)));
        }
        out
    }
}

/// A checked graph bound to its checkpoints: run it with [`invoke`](Self::invoke) or
/// [`stream`](Self::stream). Cheap to clone.
pub struct CompiledGraph<S: GraphState> {
    graph: Arc<StateGraph<S>>,
    checkpointer: Arc<Checkpointer>,
    mermaid: String,
}

impl<S: GraphState> Clone for CompiledGraph<S> {
    fn clone(&self) -> Self {
        Self {
            graph: self.graph.clone(),
            checkpointer: self.checkpointer.clone(),
            mermaid: self.mermaid.clone(),
        }
    }
}

impl<S: GraphState> CompiledGraph<S> {
    /// The graph as Mermaid text.
    pub fn mermaid(&self) -> &str {
        &self.mermaid
    }

    /// The checkpoint store.
    pub fn checkpointer(&self) -> &Checkpointer {
        &self.checkpointer
    }
}
