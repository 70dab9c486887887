//! Tool calls that go wrong become observations, never crashes (no model needed).

mod common;

use std::time::Duration;

use async_trait::async_trait;
use common::tools::{Nothing, Panics};
use serde_json::json;
use state_pack::agent::{Action, Tool, ToolBox, ToolCall, ToolError};
use state_pack::legal::{ClauseLookup, Multiply};

struct Sleeps;
#[async_trait]
impl Tool for Sleeps {
    type Args = Nothing;
    fn name(&self) -> &str {
        "sleeps"
    }
    fn description(&self) -> &str {
        "never returns in time"
    }
    async fn call(&self, _: Nothing) -> Result<String, ToolError> {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok("late".into())
    }
}

fn call(tool: &str, args: serde_json::Value) -> ToolCall {
    ToolCall {
        tool: tool.into(),
        args,
    }
}

#[tokio::test]
async fn failures_are_contained() {
    let mut tools = ToolBox::new()
        .with(ClauseLookup)
        .with(Multiply)
        .with(Panics)
        .with(Sleeps);
    tools.timeout = Some(Duration::from_millis(200));
    let r = tools
        .run(&[
            call("multiply", json!({"a": 3, "b": 4})),
            call("no_such_tool", json!({})),
            call("multiply", json!({"a": "three"})),
            call("panics", json!({})),
            call("sleeps", json!({})),
            call("sleeps", json!({})),
            call(
                "clause_lookup",
                json!({"contract": "NSA-2021-044", "clause": "99"}),
            ),
        ])
        .await;
    assert_eq!(r[0].output, "12");
    assert!(r[0].ok);
    assert!(r[1].output.contains("unknown tool"), "{}", r[1].output);
    assert!(r[2].output.contains("invalid arguments"), "{}", r[2].output);
    assert!(r[3].output.contains("panicked"), "{}", r[3].output);
    assert!(r[4].output.contains("timed out"), "{}", r[4].output);
    assert!(r[6].output.contains("no clause 99"), "{}", r[6].output);
    assert!(r[1..].iter().all(|r| !r.ok));
}

#[test]
fn outputs_parse_as_calls_or_answers() {
    let tools = ToolBox::new().with(ClauseLookup);
    assert_eq!(
        tools.parse(r#"{"answer":"done"}"#),
        Ok(Action::Answer("done".into()))
    );
    assert!(matches!(
        tools.parse(r#"{"calls":[{"tool":"clause_lookup","args":{"contract":"X","clause":"1"}}]}"#),
        Ok(Action::Calls(c)) if c.len() == 1
    ));
    assert!(tools.parse(r#"{"calls":[]}"#).is_err());
    assert!(tools.parse(r#"{"answer":"cut"#).is_err());
    // The schema is generated from the argument struct, not written by hand.
    let schema = tools.action_schema().to_string();
    assert!(
        schema.contains(r#""enum":["NSA-2021-044"]"#)
            && schema.contains(r#""enum":["SC-2019-112"]"#)
            && schema.contains(r#""pattern":"^[0-9]{1,2}\\.[0-9]{1,2}$""#),
        "{schema}"
    );
    // Tool calls only: the answer alternative is left out.
    let calls = tools.calls_schema().to_string();
    assert!(
        schema.contains(r#""answer""#) && !calls.contains(r#""answer""#),
        "{calls}"
    );
}
