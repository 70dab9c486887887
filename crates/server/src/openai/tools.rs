//! OpenAI tool calling and structured output on state-pack's grammars.
//!
//! When a request declares `tools`, the system turn lists them and every reply is one JSON
//! action, decoded under a grammar built from the functions' argument schemas (the format
//! the agent loop uses): `{"calls":[{"tool":NAME,"args":{...}}]}` to call functions or
//! `{"answer":TEXT}` to answer. The action is answered as OpenAI `tool_calls` (arguments are
//! the exact JSON text the model wrote) or as `content`, and an assistant message sent back
//! is written in the same format, so the model sees what it said and the stored tokens match.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use state_pack_core::engine::Grammar;

use super::wire::{FunctionCall, FunctionDef, ResponseFormat, ToolCall, ToolDef};
use crate::error::ApiError;

/// The most calls one reply may make (one when `parallel_tool_calls` is false).
const MAX_PARALLEL_CALLS: usize = 4;

/// What the request allows the model to do with its tools.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolMode {
    /// No tools declared.
    None,
    /// Call tools or answer (`tool_choice: "auto"`, the default).
    Auto(Vec<FunctionDef>),
    /// Call at least one tool (`"required"`).
    Required(Vec<FunctionDef>),
    /// Call this function (`{"type":"function","function":{"name":...}}`).
    Named(Vec<FunctionDef>, String),
    /// Answer without calling (`"none"`); the tools are still listed, so the conversation's
    /// beginning does not change with the choice.
    Off(Vec<FunctionDef>),
}

impl ToolMode {
    /// From a request's `tools` and `tool_choice`.
    pub fn from_request(
        tools: Option<&[ToolDef]>,
        choice: Option<&Value>,
    ) -> Result<Self, ApiError> {
        let defs: Vec<FunctionDef> = tools
            .unwrap_or_default()
            .iter()
            .map(|t| {
                if t.kind != "function" {
                    return Err(ApiError::invalid(format!(
                        "tools: type {:?} is not supported (function only)",
                        t.kind
                    )));
                }
                let f = &t.function;
                if f.name.is_empty()
                    || !f
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(ApiError::invalid(format!(
                        "tools: function name {:?} must be letters, digits, _ or -",
                        f.name
                    )));
                }
                match &f.parameters {
                    None | Some(Value::Object(_)) => Ok(f.clone()),
                    Some(_) => Err(ApiError::invalid(format!(
                        "tools: parameters of {:?} must be a JSON Schema object",
                        f.name
                    ))),
                }
            })
            .collect::<Result<_, _>>()?;
        let choice = choice.filter(|c| !c.is_null());
        if defs.is_empty() {
            return match choice {
                None => Ok(ToolMode::None),
                Some(Value::String(s)) if s == "none" => Ok(ToolMode::None),
                Some(_) => Err(ApiError::invalid("tool_choice needs tools".into())),
            };
        }
        match choice {
            None => Ok(ToolMode::Auto(defs)),
            Some(Value::String(s)) => match s.as_str() {
                "auto" => Ok(ToolMode::Auto(defs)),
                "required" => Ok(ToolMode::Required(defs)),
                "none" => Ok(ToolMode::Off(defs)),
                other => Err(ApiError::invalid(format!(
                    "tool_choice {other:?} is not one of auto, none, required"
                ))),
            },
            Some(v) => {
                let name = v
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "tool_choice must be auto, none, required or {\"type\":\"function\",\"function\":{\"name\":...}}".into(),
                        )
                    })?;
                if !defs.iter().any(|d| d.name == name) {
                    return Err(ApiError::invalid(format!(
                        "tool_choice names {name:?}, which is not among the tools"
                    )));
                }
                Ok(ToolMode::Named(defs, name.to_string()))
            }
        }
    }

    /// Whether tools are declared (replies are actions).
    pub fn is_active(&self) -> bool {
        !matches!(self, ToolMode::None)
    }

    fn defs(&self) -> &[FunctionDef] {
        match self {
            ToolMode::None => &[],
            ToolMode::Auto(d)
            | ToolMode::Required(d)
            | ToolMode::Off(d)
            | ToolMode::Named(d, _) => d,
        }
    }

    /// The tool list for the system turn (the same whatever `tool_choice` says).
    pub fn describe(&self) -> Option<String> {
        if !self.is_active() {
            return None;
        }
        let mut s = String::from("Tools:\n");
        for f in self.defs() {
            s.push_str(&format!(
                "- {}: {} Arguments: {}\n",
                f.name,
                f.description.as_deref().unwrap_or(""),
                args_schema(f)
            ));
        }
        s.push_str("Reply with JSON only: {\"calls\":[{\"tool\":NAME,\"args\":{...}}]} to call tools, or {\"answer\":TEXT} to answer.");
        Some(s)
    }

    /// The grammar a reply is decoded under, ending with the template's `end_of_turn`.
    pub fn grammar(&self, end_of_turn: &str, parallel: bool) -> Option<Grammar> {
        let calls = |defs: &[FunctionDef]| {
            let each: Vec<Value> = defs
                .iter()
                .map(|f| {
                    json!({
                        "type": "object",
                        "properties": {"tool": {"const": f.name}, "args": args_schema(f)},
                        "required": ["tool", "args"],
                        "additionalProperties": false
                    })
                })
                .collect();
            json!({
                "type": "object",
                "properties": {"calls": {
                    "type": "array",
                    "items": {"anyOf": each},
                    "minItems": 1,
                    "maxItems": if parallel { MAX_PARALLEL_CALLS } else { 1 }
                }},
                "required": ["calls"],
                "additionalProperties": false
            })
        };
        let answer = json!({
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
            "additionalProperties": false
        });
        let alternatives = match self {
            ToolMode::None => return None,
            ToolMode::Auto(d) => vec![calls(d), answer],
            ToolMode::Required(d) => vec![calls(d)],
            ToolMode::Named(d, name) => {
                let one: Vec<FunctionDef> = d.iter().filter(|f| &f.name == name).cloned().collect();
                vec![calls(&one)]
            }
            ToolMode::Off(_) => vec![answer],
        };
        let schema = json!({"x-guidance": {"whitespace_flexible": false}, "anyOf": alternatives});
        Some(Grammar::json_turn(&schema, end_of_turn))
    }
}

fn args_schema(f: &FunctionDef) -> Value {
    f.parameters
        .clone()
        .unwrap_or_else(|| json!({"type": "object"}))
}

/// The grammar of `response_format` (no tools): `json_object` or `json_schema`.
pub fn response_grammar(
    format: Option<&ResponseFormat>,
    end_of_turn: &str,
) -> Result<Option<Grammar>, ApiError> {
    let Some(f) = format else { return Ok(None) };
    let schema = match f.kind.as_str() {
        "text" => return Ok(None),
        "json_object" => json!({"type": "object"}),
        "json_schema" => match f.json_schema.as_ref().and_then(|j| j.schema.clone()) {
            Some(s @ (Value::Object(_) | Value::Bool(_))) => s,
            _ => {
                return Err(ApiError::invalid(
                    "response_format.json_schema.schema must be a JSON Schema".into(),
                ))
            }
        },
        other => {
            return Err(ApiError::invalid(format!(
                "response_format.type {other:?} is not one of text, json_object, json_schema"
            )))
        }
    };
    Ok(Some(Grammar::json_turn(&schema, end_of_turn)))
}

/// A reply as OpenAI answers it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reply {
    /// Text, when the model answered.
    pub content: Option<String>,
    /// Calls, when it called tools.
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// Reads a reply decoded under [`ToolMode::grammar`]: calls get ids `{id_prefix}_{i}`. A
/// reply that is not an action (cut off by `max_tokens`) is answered as text.
pub fn parse_action(text: &str, id_prefix: &str) -> Reply {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Calls<'a> {
        #[serde(borrow)]
        calls: Vec<Call<'a>>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Call<'a> {
        tool: String,
        #[serde(borrow)]
        args: &'a RawValue,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Answer {
        answer: String,
    }
    let t = text.trim();
    if let Ok(c) = serde_json::from_str::<Calls<'_>>(t) {
        return Reply {
            content: None,
            tool_calls: Some(
                c.calls
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| ToolCall {
                        id: format!("{id_prefix}_{i}"),
                        kind: "function".into(),
                        function: FunctionCall {
                            name: c.tool,
                            arguments: c.args.get().to_string(),
                        },
                    })
                    .collect(),
            ),
        };
    }
    if let Ok(a) = serde_json::from_str::<Answer>(t) {
        return Reply {
            content: Some(a.answer),
            tool_calls: None,
        };
    }
    Reply {
        content: Some(text.to_string()),
        tool_calls: None,
    }
}

/// An assistant message's tool calls as the model writes them: compact JSON, the arguments
/// minified (clients re-serialize them, often with spaces) in their own key order.
pub fn render_calls(calls: &[ToolCall]) -> Result<String, String> {
    let mut out = String::from("{\"calls\":[");
    for (i, c) in calls.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let name = serde_json::to_string(&c.function.name).map_err(|e| e.to_string())?;
        let args = minify(&c.function.arguments)
            .map_err(|e| format!("arguments of {:?} are not JSON: {e}", c.function.name))?;
        out.push_str(&format!("{{\"tool\":{name},\"args\":{args}}}"));
    }
    out.push_str("]}");
    Ok(out)
}

/// An assistant message's text as the model writes an answer.
pub fn render_answer(text: &str) -> String {
    json!({ "answer": text }).to_string()
}

/// `text` (one JSON value) without whitespace outside strings, keys in their order.
fn minify(text: &str) -> Result<String, serde_json::Error> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)?;
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for ch in text.chars() {
        if in_string {
            out.push(ch);
            match (escaped, ch) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if ch == '"' {
            in_string = true;
            out.push(ch);
        } else if !ch.is_whitespace() {
            out.push(ch);
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn lookup() -> FunctionDef {
        FunctionDef {
            name: "lookup".into(),
            description: Some("Finds a clause.".into()),
            parameters: Some(json!({
                "type": "object",
                "properties": {"clause": {"type": "string"}},
                "required": ["clause"]
            })),
            strict: None,
        }
    }

    fn tools() -> Vec<ToolDef> {
        vec![ToolDef {
            kind: "function".into(),
            function: lookup(),
        }]
    }

    #[test]
    fn choices_parse_and_unknown_ones_are_refused() {
        let t = tools();
        assert_eq!(ToolMode::from_request(None, None).unwrap(), ToolMode::None);
        assert!(matches!(
            ToolMode::from_request(Some(&t), None).unwrap(),
            ToolMode::Auto(_)
        ));
        assert!(matches!(
            ToolMode::from_request(Some(&t), Some(&json!("required"))).unwrap(),
            ToolMode::Required(_)
        ));
        assert!(matches!(
            ToolMode::from_request(Some(&t), Some(&json!("none"))).unwrap(),
            ToolMode::Off(_)
        ));
        assert!(matches!(
            ToolMode::from_request(Some(&t), Some(&json!({"type":"function","function":{"name":"lookup"}}))).unwrap(),
            ToolMode::Named(_, n) if n == "lookup"
        ));
        for bad in [
            json!("sometimes"),
            json!({"type":"function","function":{"name":"nope"}}),
            json!(3),
        ] {
            assert!(
                ToolMode::from_request(Some(&t), Some(&bad)).is_err(),
                "{bad}"
            );
        }
        assert!(ToolMode::from_request(None, Some(&json!("required"))).is_err());
    }

    #[test]
    fn replies_parse_into_calls_or_text_and_render_back_byte_for_byte() {
        let model_wrote =
            "{\"calls\":[{\"tool\":\"lookup\",\"args\":{\"clause\":\"14.5\",\"a\":[1,2]}}]}";
        let r = parse_action(model_wrote, "call_ab");
        let calls = r.tool_calls.unwrap();
        assert_eq!(calls[0].id, "call_ab_0");
        assert_eq!(
            calls[0].function.arguments,
            "{\"clause\":\"14.5\",\"a\":[1,2]}"
        );
        assert_eq!(render_calls(&calls).unwrap(), model_wrote);
        // A client that re-serializes the arguments with spaces (Python's json.dumps).
        let mut spaced = calls.clone();
        spaced[0].function.arguments = "{\"clause\": \"14.5\", \"a\": [1, 2]}".into();
        assert_eq!(render_calls(&spaced).unwrap(), model_wrote);
        // Spaces inside strings stay.
        assert_eq!(
            minify("{\"a\": \"x y \\\" z\"}").unwrap(),
            "{\"a\":\"x y \\\" z\"}"
        );
        let answer = parse_action("{\"answer\":\"12 months\"}", "c");
        assert_eq!(answer.content.as_deref(), Some("12 months"));
        assert_eq!(render_answer("12 months"), "{\"answer\":\"12 months\"}");
        let cut = parse_action("{\"calls\":[{\"tool\":\"look", "c");
        assert_eq!(cut.content.as_deref(), Some("{\"calls\":[{\"tool\":\"look"));
        assert!(render_calls(&[ToolCall {
            id: "x".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "f".into(),
                arguments: "{oops".into()
            },
        }])
        .is_err());
    }

    #[test]
    fn grammars_follow_the_choice() {
        let t = tools();
        let lark = |mode: ToolMode| match mode.grammar("<|im_end|>", true) {
            Some(Grammar::Lark(l)) => l,
            other => panic!("{other:?}"),
        };
        let auto = lark(ToolMode::from_request(Some(&t), None).unwrap());
        assert!(
            auto.contains("\"answer\"") && auto.contains("\"calls\""),
            "{auto}"
        );
        assert!(auto.starts_with("start: action <|im_end|>"), "{auto}");
        let required = lark(ToolMode::from_request(Some(&t), Some(&json!("required"))).unwrap());
        assert!(!required.contains("\"answer\""));
        let off = lark(ToolMode::from_request(Some(&t), Some(&json!("none"))).unwrap());
        assert!(!off.contains("\"calls\""));
        assert!(ToolMode::None.grammar("<|im_end|>", true).is_none());
        assert!(response_grammar(None, "x").unwrap().is_none());
    }
}
