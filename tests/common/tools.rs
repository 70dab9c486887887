//! Tools that misbehave, for tests of how the agent loop contains them.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use state_pack::agent::{Tool, ToolError};

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
