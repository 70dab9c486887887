//! A small legal-research agent with real tools over a bundled corpus: the agent of this
//! example, of `state-pack run` / `agent` / `bench` (the application crate compiles this file
//! as `state_pack::legal`) and of the agent-loop tests.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;

use state_pack::agent::{Agent, Tool, ToolBox, ToolError};

/// Clauses of two bundled contracts: (contract, clause, text).
pub const CORPUS: &[(&str, &str, &str)] = &[
    (
        "NSA-2021-044",
        "14.5",
        "Liability is capped at the fees paid in the 12 months before the claim.",
    ),
    (
        "NSA-2021-044",
        "9.2",
        "Either party may terminate on 60 days' written notice.",
    ),
    (
        "NSA-2021-044",
        "17.1",
        "Force majeure excludes strikes by the supplier's own staff.",
    ),
    (
        "SC-2019-112",
        "4.1",
        "Fees are 1200 per month, invoiced quarterly.",
    ),
    (
        "SC-2019-112",
        "11.3",
        "Confidentiality survives termination for 5 years.",
    ),
];

/// The contracts of [`CORPUS`]. An enum, so the schema lists them and the model cannot
/// invent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum Contract {
    /// The network services agreement.
    #[serde(rename = "NSA-2021-044")]
    Nsa2021044,
    /// The supply contract.
    #[serde(rename = "SC-2019-112")]
    Sc2019112,
}

impl Contract {
    /// Its id in the corpus.
    pub fn id(self) -> &'static str {
        match self {
            Contract::Nsa2021044 => "NSA-2021-044",
            Contract::Sc2019112 => "SC-2019-112",
        }
    }
}

/// Arguments of `clause_lookup`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ClauseArgs {
    /// The contract.
    pub contract: Contract,
    /// Clause number such as 14.5.
    #[schemars(regex(pattern = r"^[0-9]{1,2}\.[0-9]{1,2}$"))]
    pub clause: String,
}

/// Looks a clause up in [`CORPUS`].
pub struct ClauseLookup;

#[async_trait]
impl Tool for ClauseLookup {
    type Args = ClauseArgs;
    fn name(&self) -> &str {
        "clause_lookup"
    }
    fn description(&self) -> &str {
        "The text of one clause of a contract."
    }
    async fn call(&self, a: ClauseArgs) -> Result<String, ToolError> {
        CORPUS
            .iter()
            .find(|(c, n, _)| *c == a.contract.id() && *n == a.clause.trim())
            .map(|(_, _, text)| text.to_string())
            .ok_or_else(|| {
                let known: Vec<&str> = CORPUS
                    .iter()
                    .filter(|(c, _, _)| *c == a.contract.id())
                    .map(|(_, n, _)| *n)
                    .collect();
                ToolError(format!(
                    "no clause {} in {}; its clauses are {}",
                    a.clause,
                    a.contract.id(),
                    known.join(", ")
                ))
            })
    }
}

/// Arguments of `multiply`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct MultiplyArgs {
    /// First factor.
    pub a: f64,
    /// Second factor.
    pub b: f64,
}

/// A calculator: `a * b`.
pub struct Multiply;

#[async_trait]
impl Tool for Multiply {
    type Args = MultiplyArgs;
    fn name(&self) -> &str {
        "multiply"
    }
    fn description(&self) -> &str {
        "a times b."
    }
    async fn call(&self, a: MultiplyArgs) -> Result<String, ToolError> {
        Ok(format!("{}", a.a * a.b))
    }
}

/// The legal-research agent.
pub struct LegalAgent;

#[async_trait]
impl Agent for LegalAgent {
    fn system_prompt(&self) -> String {
        concat!(
            "You are a legal research assistant. Read clauses with clause_lookup before you ",
            "answer, and answer only from what the tools return. Contracts: NSA-2021-044 ",
            "(clauses 9.2, 14.5, 17.1), SC-2019-112 (clauses 4.1, 11.3).\n",
            "Example: to read clause 9.2 of NSA-2021-044, reply ",
            r#"{"calls":[{"tool":"clause_lookup","args":{"contract":"NSA-2021-044","clause":"9.2"}}]}"#,
        )
        .into()
    }
    fn tools(&self) -> ToolBox {
        ToolBox::new().with(ClauseLookup).with(Multiply)
    }
}
