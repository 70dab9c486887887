//! Typed tools: arguments are a Rust struct, their JSON Schema is generated (schemars), and
//! every way a call can go wrong becomes an observation for the model, never a crash.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::engine::Grammar;

/// A tool the model can call.
///
/// ```
/// use async_trait::async_trait;
/// use schemars::JsonSchema;
/// use serde::Deserialize;
/// use state_pack_core::agent::{Tool, ToolError};
///
/// #[derive(Deserialize, JsonSchema)]
/// struct Add { a: f64, b: f64 }
///
/// struct Calculator;
///
/// #[async_trait]
/// impl Tool for Calculator {
///     type Args = Add;
///     fn name(&self) -> &str { "add" }
///     fn description(&self) -> &str { "a + b" }
///     async fn call(&self, args: Add) -> Result<String, ToolError> {
///         Ok((args.a + args.b).to_string())
///     }
/// }
/// ```
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    /// The arguments; their JSON Schema constrains what the model may generate.
    type Args: DeserializeOwned + JsonSchema + Send + 'static;
    /// The name the model calls it by (letters, digits, `_`).
    fn name(&self) -> &str;
    /// One line for the system prompt.
    fn description(&self) -> &str;
    /// Runs the tool; the text returned (or the error) is the model's next observation.
    async fn call(&self, args: Self::Args) -> Result<String, ToolError>;
}

/// A tool's failure, shown to the model as the observation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(pub String);

/// One call the model asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Tool name.
    pub tool: String,
    /// Arguments as generated.
    pub args: Value,
}

/// What became of one call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The call.
    pub call: ToolCall,
    /// Whether the tool ran and returned `Ok`.
    pub ok: bool,
    /// Its output, or what went wrong (unknown tool, invalid arguments, panic, timeout,
    /// the tool's own error).
    pub output: String,
    /// How long it took.
    pub elapsed: Duration,
    /// The earlier step that made the same call, when the loop guard answered it with that
    /// step's result instead of running the tool again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_of: Option<usize>,
}

/// What the model decided in one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Call these tools (concurrently).
    Calls(Vec<ToolCall>),
    /// The final answer.
    Answer(String),
}

#[async_trait]
trait DynTool: Send + Sync {
    fn name(&self) -> &str;
    fn description(&self) -> &str;
    fn schema(&self) -> Value;
    async fn call_json(&self, args: Value) -> Result<String, ToolError>;
}

struct Typed<T>(T);

#[async_trait]
impl<T: Tool> DynTool for Typed<T> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn description(&self) -> &str {
        self.0.description()
    }
    fn schema(&self) -> Value {
        let mut settings = schemars::gen::SchemaSettings::draft07();
        settings.inline_subschemas = true;
        let schema = settings.into_generator().into_root_schema_for::<T::Args>();
        let mut v = serde_json::to_value(schema).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.remove("$schema");
            o.remove("title");
            o.remove("definitions");
            // Arguments the tool does not read are not generated: every token the model
            // spends goes to an argument that matters.
            if o.get("type") == Some(&Value::from("object")) {
                o.entry("additionalProperties")
                    .or_insert(Value::Bool(false));
            }
        }
        v
    }
    async fn call_json(&self, args: Value) -> Result<String, ToolError> {
        let args: T::Args = serde_json::from_value(args)
            .map_err(|e| ToolError(format!("invalid arguments for {}: {e}", self.0.name())))?;
        self.0.call(args).await
    }
}

/// The tools of one agent, and the grammar that makes the model call them correctly.
#[derive(Clone, Default)]
pub struct ToolBox {
    tools: BTreeMap<String, Arc<dyn DynTool>>,
    /// How long one call may run.
    pub timeout: Option<Duration>,
}

/// The most calls the model may make in one step.
pub const MAX_CALLS_PER_STEP: usize = 3;

impl ToolBox {
    /// No tools; calls time out after 30 s.
    pub fn new() -> Self {
        Self {
            tools: BTreeMap::new(),
            timeout: Some(Duration::from_secs(30)),
        }
    }

    /// Adds a tool (replacing one of the same name).
    pub fn with<T: Tool>(mut self, tool: T) -> Self {
        self.tools
            .insert(tool.name().to_string(), Arc::new(Typed(tool)));
        self
    }

    /// Tool names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }

    /// The JSON Schema of one step's output: `{"calls":[{"tool":..,"args":..}, ..]}` with
    /// each tool's own argument schema, or `{"answer":"..."}`. Compact JSON only, so the
    /// model spends no tokens on whitespace.
    pub fn action_schema(&self) -> Value {
        self.schema_of(true)
    }

    /// [`action_schema`](Self::action_schema) without the answer: tool calls only.
    pub fn calls_schema(&self) -> Value {
        self.schema_of(false)
    }

    fn schema_of(&self, allow_answer: bool) -> Value {
        let calls: Vec<Value> = self
            .tools
            .values()
            .map(|t| {
                json!({
                    "type": "object",
                    "properties": {"tool": {"const": t.name()}, "args": t.schema()},
                    "required": ["tool", "args"],
                    "additionalProperties": false
                })
            })
            .collect();
        let mut alternatives = Vec::new();
        if allow_answer || calls.is_empty() {
            alternatives.push(json!({
                "type": "object",
                "properties": {"answer": {"type": "string", "maxLength": 160}},
                "required": ["answer"],
                "additionalProperties": false
            }));
        }
        if !calls.is_empty() {
            alternatives.insert(
                0,
                json!({
                    "type": "object",
                    "properties": {"calls": {
                        "type": "array",
                        "items": {"anyOf": calls},
                        "minItems": 1,
                        "maxItems": MAX_CALLS_PER_STEP
                    }},
                    "required": ["calls"],
                    "additionalProperties": false
                }),
            );
        }
        json!({"x-guidance": {"whitespace_flexible": false}, "anyOf": alternatives})
    }

    /// The grammar for one step: an action as JSON, then the chat template's end-of-turn
    /// token, so the turn closes itself and generation stops there.
    pub fn grammar(&self, end_of_turn: &str) -> Grammar {
        Grammar::json_turn(&self.action_schema(), end_of_turn)
    }

    /// [`grammar`](Self::grammar) for tool calls only (no answer yet).
    pub fn calls_grammar(&self, end_of_turn: &str) -> Grammar {
        Grammar::json_turn(&self.calls_schema(), end_of_turn)
    }

    /// Lines for the system prompt: each tool, its arguments and the reply format.
    pub fn describe(&self) -> String {
        let mut s = String::from("Tools:\n");
        for t in self.tools.values() {
            s.push_str(&format!(
                "- {}: {} Arguments: {}\n",
                t.name(),
                t.description(),
                t.schema()
            ));
        }
        s.push_str("Reply with JSON only: {\"calls\":[{\"tool\":NAME,\"args\":{...}}]} to call tools, or {\"answer\":TEXT} when done.");
        s
    }

    /// Parses a step's output. Anything that is not a valid action is an error to show the
    /// model (the grammar makes this rare; a truncated output still gets here).
    pub fn parse(&self, text: &str) -> Result<Action, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Calls {
            calls: Vec<ToolCall>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Answer {
            answer: String,
        }
        let text = text.trim();
        if let Ok(a) = serde_json::from_str::<Answer>(text) {
            return Ok(Action::Answer(a.answer));
        }
        match serde_json::from_str::<Calls>(text) {
            Ok(c) if !c.calls.is_empty() => Ok(Action::Calls(c.calls)),
            Ok(_) => Err("no tool calls and no answer".into()),
            Err(e) => Err(format!("not a tool call or an answer ({e}): {text:?}")),
        }
    }

    /// Runs `calls` concurrently. Unknown tools, invalid arguments, panics, timeouts and
    /// tool errors each come back as a failed [`ToolResult`].
    pub async fn run(&self, calls: &[ToolCall]) -> Vec<ToolResult> {
        let handles: Vec<_> = calls
            .iter()
            .map(|call| {
                let tool = self.tools.get(&call.tool).cloned();
                let call = call.clone();
                let timeout = self.timeout;
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    let Some(tool) = tool else {
                        return (
                            call.clone(),
                            Err(format!("unknown tool {:?}", call.tool)),
                            started.elapsed(),
                        );
                    };
                    let fut = tool.call_json(call.args.clone());
                    let out = match timeout {
                        Some(t) => match tokio::time::timeout(t, fut).await {
                            Ok(r) => r.map_err(|e| e.0),
                            Err(_) => Err(format!("{} timed out after {:?}", call.tool, t)),
                        },
                        None => fut.await.map_err(|e| e.0),
                    };
                    (call, out, started.elapsed())
                })
            })
            .collect();
        let mut results = Vec::with_capacity(calls.len());
        for (handle, call) in handles.into_iter().zip(calls) {
            let (call, out, elapsed) = match handle.await {
                Ok(r) => r,
                Err(e) if e.is_panic() => (
                    call.clone(),
                    Err(format!("{} crashed (panicked)", call.tool)),
                    Duration::ZERO,
                ),
                Err(e) => (
                    call.clone(),
                    Err(format!("{} was cancelled: {e}", call.tool)),
                    Duration::ZERO,
                ),
            };
            tracing::debug!(tool = %call.tool, ok = out.is_ok(), ?elapsed, "tool call");
            results.push(match out {
                Ok(output) => ToolResult {
                    call,
                    ok: true,
                    output,
                    elapsed,
                    repeat_of: None,
                },
                Err(output) => ToolResult {
                    call,
                    ok: false,
                    output: format!("error: {output}"),
                    elapsed,
                    repeat_of: None,
                },
            });
        }
        results
    }
}
