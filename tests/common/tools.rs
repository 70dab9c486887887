//! Tools that misbehave, for tests of how the agent loop contains them.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use state_pack::agent::{Agent, Tool, ToolBox, ToolError};
use state_pack::legal::Multiply;

/// No arguments.
#[derive(Deserialize, JsonSchema)]
pub struct Nothing {}

/// Always panics.
pub struct Panics;

#[async_trait]
impl Tool for Panics {
    type Args = Nothing;
    fn name(&self) -> &str {
        "panics"
    }
    fn description(&self) -> &str {
        "always panics"
    }
    async fn call(&self, _: Nothing) -> Result<String, ToolError> {
        panic!("tool bug")
    }
}

/// An agent with one good tool (`multiply`) and one that panics. It refuses the answer
/// "too soon".
pub struct Clumsy;

#[async_trait]
impl Agent for Clumsy {
    fn system_prompt(&self) -> String {
        "You call tools.".into()
    }
    fn tools(&self) -> ToolBox {
        ToolBox::new().with(Multiply).with(Panics)
    }
    async fn review_answer(&self, answer: &str, _step: usize) -> Result<(), String> {
        if answer == "too soon" {
            return Err("check the product first".into());
        }
        Ok(())
    }
}
