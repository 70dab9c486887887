//! The built-in demo: a legal-research agent reading tool observations step by step.
//!
//! The base prompt (system role, tools, task: ~420 tokens) is created once; each step appends
//! one tool observation as a user turn (~30 tokens), opens an assistant turn and generates a
//! few tokens greedily. This is the loop `state-pack run` shows and `state-pack bench` times.

use std::time::Duration;

use serde::Serialize;

use crate::engine::{FinishReason, Sampling};
use crate::pack::{OpReport, PackError, StatePack};
use crate::state::StateHash;
use crate::template::{ChatTemplate, Role, TemplateError};

/// The system prompt. `{session}` keeps benchmark runs apart.
const SYSTEM: &str =
    "You are Lex, a careful legal-research assistant working for a small commercial law firm. \
You review contracts clause by clause and answer questions with citations to the clause \
numbers you relied on. You never invent clauses, dates or amounts: when a fact is missing \
you say what you would need to look up.

You can call these tools. Reply with exactly one line per step, either a tool call or a \
final answer:
- clause_lookup(contract, clause): returns the text of one clause of a contract in the \
firm's document store.
- definitions(contract, term): returns how a contract defines a capitalised term.
- calculator(expression): evaluates an arithmetic expression, for notice periods, fees and \
interest.
- case_search(query): returns the citation and one-line holding of the most relevant \
precedent in the firm's case notes.
- answer(text): ends the task with your final answer to the client.

Rules: cite clause numbers as [Cl. n]. Compute every amount with the calculator. Keep the \
client's deadline in mind: the notice must be served within the contractual period. \
Session {session}.";

/// The task.
const TASK: &str =
    "Our client, Harbour Logistics Ltd, wants to terminate its warehouse services agreement with \
Northgate Storage plc (contract NSA-2021-044) early because of repeated late deliveries. \
Work out whether they may terminate for cause, what notice they must give, whether any \
early-termination fee applies and how much it would be if the monthly fee is 18,400 GBP, \
and whether they can recover the 12,000 GBP of spoiled stock. Use the tools step by step.";

/// The start of the agent's first reply, written for it (the turn stays open).
const FIRST_CALL: &str = "clause_lookup(NSA-2021-044, 14.2)";

/// Canned tool observations, in the order the demo agent receives them.
pub const OBSERVATIONS: &[(&str, &str)] = &[
    ("clause_lookup", "[Cl. 14.2] Either party may terminate for material breach not remedied within 30 days of written notice."),
    ("definitions", "\"Material Breach\" includes three or more Late Deliveries in any rolling period of 90 days."),
    ("clause_lookup", "[Cl. 6.4] A delivery is a Late Delivery if made more than 48 hours after the scheduled slot."),
    ("case_search", "Rice v Great Yarmouth BC [2003]: repeated minor breaches may together amount to a repudiatory breach."),
    ("clause_lookup", "[Cl. 14.5] On termination under 14.2 no early-termination fee is payable by the terminating party."),
    ("calculator", "18400 * 3 = 55200"),
    ("clause_lookup", "[Cl. 14.6] Otherwise the fee equals three months of the Monthly Fee."),
    ("clause_lookup", "[Cl. 19.1] Notices must be in writing and delivered by hand or recorded post to the registered office."),
    ("clause_lookup", "[Cl. 11.3] Liability for loss of or damage to stored goods is capped at 10,000 GBP per event."),
    ("calculator", "12000 - 10000 = 2000"),
    ("definitions", "\"Event\" means one occurrence or a series of connected occurrences from one cause."),
    ("clause_lookup", "[Cl. 11.5] The cap does not apply to losses caused by gross negligence or wilful default."),
    ("case_search", "Red Sea Tankers v Papachristidis [1997]: gross negligence is a serious disregard of an obvious risk."),
    ("clause_lookup", "[Cl. 7.2] The Supplier shall keep temperature logs and produce them within 5 Business Days of request."),
    ("calculator", "30 + 5 = 35"),
    ("clause_lookup", "[Cl. 21.1] Disputes go first to senior executives for 20 Business Days, then to arbitration in London."),
    ("definitions", "\"Business Day\" means a day other than a Saturday, Sunday or bank holiday in England."),
    ("clause_lookup", "[Cl. 14.8] Termination does not affect rights and remedies accrued before termination."),
    ("case_search", "Hadley v Baxendale (1854): damages cover losses arising naturally or within the parties' contemplation."),
    ("calculator", "18400 * 0 = 0"),
];

/// Tokens generated per demo step.
pub const TOKENS_PER_STEP: usize = 8;

/// The demo's base text for benchmark session `session`, in `template`: the system prompt,
/// the task, and the agent's first call, its turn left open (the model goes on from there).
pub fn base_text(template: &ChatTemplate, session: &str) -> Result<String, TemplateError> {
    base_text_with(template, session, "")
}

/// [`base_text`] with `case_file` (material the agent may consult) appended to the system
/// prompt: how the benchmark makes a long context.
pub fn base_text_with(
    template: &ChatTemplate,
    session: &str,
    case_file: &str,
) -> Result<String, TemplateError> {
    let system = SYSTEM.replace("{session}", session) + case_file;
    Ok(template.turn(None, Role::System, &system)? + &template.first_request(TASK)? + FIRST_CALL)
}

/// The delta for observation `i` (cycling through [`OBSERVATIONS`]), closing the previous
/// assistant turn unless the model already closed it with its end-of-turn token.
pub fn observation_delta(
    template: &ChatTemplate,
    i: usize,
    previous_turn_closed: bool,
) -> Result<String, TemplateError> {
    let (tool, text) = OBSERVATIONS[i % OBSERVATIONS.len()];
    after_reply(
        template,
        previous_turn_closed,
        &ChatTemplate::observation(tool, text),
    )
}

/// The next request after a generated reply, saying `content`: the reply is closed first
/// unless the model already closed it with its end-of-turn token.
pub fn after_reply(
    template: &ChatTemplate,
    reply_closed: bool,
    content: &str,
) -> Result<String, TemplateError> {
    let close = if reply_closed {
        ""
    } else {
        template.end_of_turn()
    };
    Ok(close.to_string() + &template.next_request(content)?)
}

/// One step of the demo loop.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Step number, from 1, counting earlier runs on the same database.
    pub number: usize,
    /// The generated text.
    pub output: String,
    /// The operation.
    pub report: OpReport,
}

/// Where a demo loop starts.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    /// The state to continue from.
    pub state: StateHash,
    /// The step number of the first new step.
    pub next_step: usize,
    /// Whether the state ends with a closed assistant turn.
    pub turn_closed: bool,
}

/// Runs `steps` demo steps from `start`, calling `on_step` after each.
pub async fn run_steps(
    pack: &StatePack,
    start: Start,
    steps: usize,
    mut on_step: impl FnMut(&Step),
) -> Result<Vec<Step>, PackError> {
    let template = pack.engine().info().template;
    let mut state = start.state;
    let mut closed = start.turn_closed;
    let mut out = Vec::with_capacity(steps);
    for k in 0..steps {
        let number = start.next_step + k;
        let delta = observation_delta(&template, number - 1, closed)?;
        let inf = pack
            .infer(&state, &delta, &Sampling::greedy(TOKENS_PER_STEP))
            .await?;
        closed = inf.finish == FinishReason::Stop;
        state = inf.report.output;
        let step = Step {
            number,
            output: inf.text,
            report: inf.report,
        };
        on_step(&step);
        out.push(step);
    }
    Ok(out)
}

/// Sums of a run's steps.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StepTotals {
    /// Steps.
    pub steps: usize,
    /// Tokens prefilled.
    pub prefilled: usize,
    /// Tokens reused.
    pub reused: usize,
    /// Tokens generated.
    pub generated: usize,
    /// Wall time.
    pub wall: Duration,
    /// Pack overhead (hashing, SQLite).
    pub overhead: Duration,
}

impl StepTotals {
    /// Totals of `reports`.
    pub fn of<'a>(reports: impl IntoIterator<Item = &'a OpReport>) -> Self {
        reports.into_iter().fold(Self::default(), |mut t, r| {
            t.steps += 1;
            t.prefilled += r.tokens.prefilled as usize;
            t.reused += r.tokens.reused as usize;
            t.generated += r.tokens.generated as usize;
            t.wall += r.timings.total;
            t.overhead += r.timings.overhead;
            t
        })
    }
}
