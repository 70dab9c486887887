//! OpenAI's request and response shapes, as the `openai` SDKs, LangChain and LangGraph send
//! and read them. Fields a client may send that state-pack cannot honour are parsed so that
//! a non-default value is refused by name (never silently ignored); fields no client relies
//! on are ignored.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::WireReceipt;
use state_pack_core::pack::Tokens;
use state_pack_ledger::hash::StateHash;

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ChatRequest {
    /// The served model's id (`GET /v1/models`).
    pub model: String,
    /// The whole conversation so far; re-sending it is what stateless clients do, and only
    /// the messages the server has not seen before are prefilled.
    pub messages: Vec<ChatMessage>,
    /// Functions the model may call.
    #[serde(default)]
    pub tools: Option<Vec<ToolDef>>,
    /// `"auto"` (default with tools), `"none"`, `"required"` or
    /// `{"type": "function", "function": {"name": ...}}`.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// `{"type": "text" | "json_object" | "json_schema", "json_schema": {"schema": ...}}`.
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    /// Accepted; calls are made one step at a time under one grammar.
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Sampling and streaming parameters shared with `/v1/completions`.
    #[serde(flatten)]
    pub common: CommonParams,
}

/// The parameters of both completion endpoints.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct CommonParams {
    /// The most tokens to generate (default: the server's limit).
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Newer name of `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<usize>,
    /// 0 or absent: greedy. Above 0: seeded sampling (deterministic for a given `seed`).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus mass, (0, 1].
    #[serde(default)]
    pub top_p: Option<f32>,
    /// The sampler's seed (default 0): the same request gives the same answer.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Answer as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// `{"include_usage": true}`: a last chunk carries the usage.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Must be 1 (or absent).
    #[serde(default)]
    pub n: Option<u32>,
    /// Stop sequences: not supported (generation stops at the model's end-of-turn token).
    #[serde(default)]
    pub stop: Option<Value>,
    /// Must be false (or absent).
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// Must be 0 (or absent).
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// Must be 0 (or absent).
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Must be absent or empty.
    #[serde(default)]
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    /// Free-form; recorded in nothing.
    #[serde(default)]
    pub user: Option<String>,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// One message of a conversation.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text, or a list of `{"type": "text", "text": ...}` parts.
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant's tool calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// For `role: "tool"`: the call this result answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// Ignored.
    #[serde(default)]
    pub name: Option<String>,
}

/// A message's content.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Parts; only text parts are accepted.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ContentPart {
    /// `text` (others are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    #[serde(default)]
    pub text: Option<String>,
}

/// A function the model may call.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ToolDef {
    /// `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionDef,
}

/// A function's name, description and JSON Schema of its arguments.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
pub struct FunctionDef {
    /// Its name.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: Option<String>,
    /// JSON Schema of its arguments (an object schema; `{}` when absent).
    #[serde(default)]
    pub parameters: Option<Value>,
    /// Accepted: arguments always follow the schema (they are decoded under it).
    #[serde(default)]
    pub strict: Option<bool>,
}

/// A tool call, in a response or sent back in an assistant message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolCall {
    /// Its id; a `tool` message names it in `tool_call_id`.
    pub id: String,
    /// `function`.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// The call.
    pub function: FunctionCall,
}

fn function_kind() -> String {
    "function".into()
}

/// A function call: its name and its arguments as JSON text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FunctionCall {
    /// The function.
    pub name: String,
    /// The arguments, JSON text exactly as the model wrote them.
    pub arguments: String,
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ResponseFormat {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For `json_schema`: `{"name", "schema", "strict"?}`.
    #[serde(default)]
    pub json_schema: Option<JsonSchemaFormat>,
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct JsonSchemaFormat {
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// The JSON Schema the answer must satisfy.
    #[serde(default)]
    pub schema: Option<Value>,
    /// Accepted: the answer is always decoded under the schema.
    #[serde(default)]
    pub strict: Option<bool>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct CompletionRequest {
    /// The served model's id.
    pub model: String,
    /// Text, token ids, or a list holding one of those.
    pub prompt: Value,
    /// Must be false (or absent).
    #[serde(default)]
    pub echo: Option<bool>,
    /// Must be absent.
    #[serde(default)]
    pub suffix: Option<String>,
    /// Must be 1 (or absent).
    #[serde(default)]
    pub best_of: Option<u32>,
    /// Sampling and streaming parameters shared with `/v1/chat/completions`.
    #[serde(flatten)]
    pub common: CommonParams,
}

/// Token counts as OpenAI clients read them, all measured.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
    /// Of the prompt, how much was not computed for this request.
    pub prompt_tokens_details: PromptTokensDetails,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV the engine already held or loaded from a KV blob (the prompt
    /// minus what the engine prefilled for this request); all of them for an answer
    /// repeated from the store.
    pub cached_tokens: u64,
}

/// What state-pack adds to every answer (LangChain drops unknown fields: the same facts are
/// in the `x-state-pack-*` headers of non-streamed answers).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StatePackInfo {
    /// The state made: the prompt and the generated tokens.
    #[schemars(with = "String")]
    pub state: StateHash,
    /// The stored state the prompt was found to begin with (`None`: none did, and a base
    /// state was created from its first message).
    #[schemars(with = "Option<String>")]
    pub matched_state: Option<StateHash>,
    /// Its length: how many of the prompt's tokens matched what was stored.
    pub matched_tokens: usize,
    /// Prompt tokens the engine ran for this request.
    pub prefilled: u64,
    /// The infer's signed token counts.
    pub tokens: Tokens,
    /// Whether the engine ran for the infer.
    pub engine_called: bool,
    /// When the answer was repeated from the store: the receipt it repeats.
    pub replay_of: Option<u64>,
    /// The signed receipts of this request: the base state's (if one was created), then the
    /// infer's.
    pub receipts: Vec<WireReceipt>,
}

/// A chat answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-` and the infer receipt's hash.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model's id.
    pub model: String,
    /// The one answer.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
    /// The model's fingerprint.
    pub system_fingerprint: String,
    /// state-pack's own figures and receipts.
    pub state_pack: StatePackInfo,
}

/// `choices[i]` of a chat answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ChatChoice {
    /// 0.
    pub index: u32,
    /// The reply.
    pub message: AssistantMessage,
    /// `stop`, `length` or `tool_calls`.
    pub finish_reason: &'static str,
    /// Always null.
    pub logprobs: Option<()>,
}

/// The model's reply.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AssistantMessage {
    /// `assistant`.
    pub role: &'static str,
    /// The text (null when the model called tools).
    pub content: Option<String>,
    /// The calls, when it called tools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// A text completion.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TextCompletion {
    /// `cmpl-` and the infer receipt's hash.
    pub id: String,
    /// `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model's id.
    pub model: String,
    /// The one answer.
    pub choices: Vec<TextChoice>,
    /// Token counts.
    pub usage: Usage,
    /// state-pack's own figures and receipts.
    pub state_pack: StatePackInfo,
}

/// `choices[i]` of a text completion.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TextChoice {
    /// The generated text.
    pub text: String,
    /// 0.
    pub index: u32,
    /// Always null.
    pub logprobs: Option<()>,
    /// `stop` or `length`.
    pub finish_reason: &'static str,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ModelList {
    /// `list`.
    pub object: &'static str,
    /// The one model served.
    pub data: Vec<ModelCard>,
}

/// One served model.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ModelCard {
    /// The id requests name.
    pub id: String,
    /// `model`.
    pub object: &'static str,
    /// When the server started, unix seconds.
    pub created: u64,
    /// `state-pack`.
    pub owned_by: &'static str,
}
