//! The built-in research graph: a researcher agent looks a clause up, a reviewer agent
//! checks the finding, and a router loops back to the researcher until the reviewer
//! approves or the rounds run out. Both agents are [`LegalAgent`]s: they share a system
//! prompt, so its base state is prefilled once for all of them. Behind `state-pack graph`
//! and of this example (the application crate compiles this file as `state_pack::research`).
//!
//! ```text
//! START --> researcher --> reviewer -.-> researcher
//!                                   -.-> END
//! ```

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use state_pack::agent::{AgentLoop, AgentReport};
use state_pack::graph::{
    reduce, AgentNode, GraphState, NodeOptions, RetryPolicy, StateGraph, END, START,
};
use state_pack::legal::LegalAgent;
use state_pack::StatePack;

/// The research state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Research {
    /// The question.
    pub question: String,
    /// The researcher's findings, one per round.
    pub findings: Vec<String>,
    /// The reviewer's verdicts, one per round.
    pub reviews: Vec<String>,
    /// Rounds done.
    pub rounds: u32,
    /// Whether the last review approved the last finding.
    pub approved: bool,
    /// Rounds allowed.
    pub max_rounds: u32,
}

/// A node's change to [`Research`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResearchUpdate {
    /// Appended.
    pub findings: Option<Vec<String>>,
    /// Appended.
    pub reviews: Option<Vec<String>>,
    /// Added.
    pub rounds: Option<u32>,
    /// Replaced.
    pub approved: Option<bool>,
}

impl GraphState for Research {
    type Update = ResearchUpdate;
    fn merge(&mut self, u: ResearchUpdate) {
        reduce::append(&mut self.findings, u.findings);
        reduce::append(&mut self.reviews, u.reviews);
        reduce::add(&mut self.rounds, u.rounds);
        reduce::last(&mut self.approved, u.approved);
    }
}

impl Research {
    /// A new run's input.
    pub fn new(question: &str, max_rounds: u32) -> Self {
        Self {
            question: question.to_string(),
            max_rounds,
            ..Self::default()
        }
    }
}

/// The base (system prompt and tools) of one agent run: tokens, and how many of them the
/// engine prefilled (the rest it reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BaseUse {
    /// Tokens in the base.
    pub tokens: usize,
    /// Prefilled by this run.
    pub prefilled: usize,
    /// Reused from the engine's cache.
    pub reused: usize,
}

/// Every agent run's base use, in order (outside the graph state: a resumed run on a cold
/// engine prefills what an uninterrupted one reused, and the state must not differ).
pub type BaseLog = Arc<Mutex<Vec<(String, BaseUse)>>>;

/// What an agent run found: its answer, or else its last tool result (or error). Results
/// the loop guard answered from an earlier call are skipped: the first one says the same.
fn outcome(report: &AgentReport) -> String {
    if let Some(answer) = &report.answer {
        return answer.trim().to_string();
    }
    let results = || {
        report
            .steps
            .iter()
            .rev()
            .flat_map(|s| s.results.iter().rev())
            .filter(|r| r.repeat_of.is_none())
    };
    match results().find(|r| r.ok).or_else(|| results().next()) {
        Some(r) if r.ok => r.output.trim().to_string(),
        Some(r) => format!("{} failed: {}", r.call.tool, r.output.trim()),
        None => "(no answer and no tool call)".into(),
    }
}

/// Whether the reviewer approves `finding`: it says so, or a clause it looked up says
/// what the finding says.
fn approves(report: &AgentReport, finding: &str) -> bool {
    let said = report
        .answer
        .as_deref()
        .is_some_and(|a| a.to_ascii_uppercase().contains("APPROVED"));
    let checked = report
        .steps
        .iter()
        .flat_map(|s| &s.results)
        .filter(|r| r.repeat_of.is_none())
        .any(|r| r.ok && !r.output.trim().is_empty() && finding.contains(r.output.trim()));
    said || checked
}

fn log_base(log: &BaseLog, node: &str, report: &AgentReport) {
    let t = &report.base.tokens;
    log.lock().unwrap_or_else(|p| p.into_inner()).push((
        node.to_string(),
        BaseUse {
            tokens: t.state as usize,
            prefilled: t.prefilled as usize,
            reused: t.reused as usize,
        },
    ));
}

/// The research graph over `pack`, to compile (after adding any interrupts). Each agent
/// runs at most `agent_steps` steps (step 1 must call a tool); `base_log` collects each
/// agent run's base use.
pub fn graph(pack: Arc<StatePack>, agent_steps: usize, base_log: BaseLog) -> StateGraph<Research> {
    let agent = || {
        AgentLoop::new(pack.clone(), LegalAgent)
            .max_steps(agent_steps)
            .answer_from_step(2)
    };
    let options = NodeOptions {
        retry: RetryPolicy {
            max_attempts: 2,
            ..RetryPolicy::default()
        },
        timeout: None,
    };
    let log = base_log.clone();
    let researcher = AgentNode::new(
        agent(),
        |i| {
            let s: &Research = &i.state;
            match s.reviews.last() {
                None => s.question.clone(),
                Some(review) => format!(
                    "{} A reviewer said of the last answer: {review} Look it up again.",
                    s.question
                ),
            }
        },
        move |_, report| {
            log_base(&log, "researcher", &report);
            ResearchUpdate {
                findings: Some(vec![outcome(&report)]),
                rounds: Some(1),
                ..ResearchUpdate::default()
            }
        },
    );
    let log = base_log;
    let reviewer = AgentNode::new(
        agent(),
        |i| {
            let s: &Research = &i.state;
            format!(
                "Check this answer to \"{}\" against the contract text, and answer APPROVED or REVISE with the reason: {}",
                s.question,
                s.findings.last().map(String::as_str).unwrap_or("(none)")
            )
        },
        move |s: &Research, report| {
            log_base(&log, "reviewer", &report);
            let finding = s.findings.last().map(String::as_str).unwrap_or("");
            ResearchUpdate {
                approved: Some(approves(&report, finding)),
                reviews: Some(vec![outcome(&report)]),
                ..ResearchUpdate::default()
            }
        },
    );
    StateGraph::new()
        .add_node_with("researcher", researcher, options.clone())
        .add_node_with("reviewer", reviewer, options)
        .add_edge(START, "researcher")
        .add_edge("researcher", "reviewer")
        .add_conditional_edges(
            "reviewer",
            |s: &Research| {
                if s.approved || s.rounds >= s.max_rounds {
                    END.into()
                } else {
                    "researcher".into()
                }
            },
            &["researcher", END],
        )
}
