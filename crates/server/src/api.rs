//! The wire types of the HTTP protocol. The OpenAPI document (`/openapi.json`) is generated
//! from these same types, so the two cannot drift apart.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use state_pack_core::engine::{FinishReason, Grammar, Sampling};
use state_pack_core::pack::{OpReport, Timings, Tokens};
use state_pack_ledger::hash::{DeltaHash, StateHash};
use state_pack_ledger::log::StoredReceipt;

use super::error::{ApiError, ErrorCode};

/// `POST /states`: a base state from text.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// The base text (system prompt, tools, task), in the model's chat template.
    pub base_text: String,
    /// The seed protocol's KV type (`float16`, ...): accepted when it names the type the
    /// engine keeps KV in (`GET /health`, `model.kv_dtype`), refused otherwise.
    #[serde(default)]
    pub dtype: Option<String>,
}

/// `POST /merge`: append a delta without generating.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeRequest {
    /// The state to extend (64 lowercase hex characters).
    pub state_hash: String,
    /// Text to append, tokenized on its own.
    pub delta_text: String,
    /// As in [`CreateRequest::dtype`].
    #[serde(default)]
    pub dtype: Option<String>,
}

/// `POST /infer`: append a delta and generate.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    /// The state to extend (64 lowercase hex characters).
    pub state_hash: String,
    /// Text to append before generating, tokenized on its own.
    pub delta_text: String,
    /// How to generate (greedy, 64 tokens when absent).
    #[serde(default)]
    pub sampling: Option<SamplingRequest>,
    /// As in [`CreateRequest::dtype`].
    #[serde(default)]
    pub dtype: Option<String>,
}

/// Sampling parameters. Without `temperature` (or with 0) decoding is greedy; with it,
/// tokens are drawn by a sampler seeded with `seed`, so the same request always gives the
/// same output. Either way a request that was already answered is answered from the store.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamplingRequest {
    /// The most tokens to generate (1 ..= the server's limit; default 64).
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Softmax temperature, 0 ..= 2; 0 or absent is greedy.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus mass kept, in (0, 1] (default 1).
    #[serde(default)]
    pub top_p: Option<f32>,
    /// The sampler's seed (default 0).
    #[serde(default)]
    pub seed: Option<u64>,
    /// A JSON Schema the output must satisfy (greedy decoding only).
    #[serde(default)]
    pub json_schema: Option<serde_json::Value>,
}

impl SamplingRequest {
    /// The engine's parameters, checked against the server's `max_tokens` limit.
    pub fn to_sampling(&self, limit: usize) -> Result<Sampling, ApiError> {
        let max_tokens = self.max_tokens.unwrap_or(64.min(limit));
        let (temperature, top_p) =
            check_sampling("sampling.", max_tokens, limit, self.temperature, self.top_p)?;
        let sampling = if temperature == 0.0 {
            if self.seed.is_some() || self.top_p.is_some() {
                return Err(ApiError::invalid(
                    "sampling.seed and sampling.top_p need a temperature above 0".into(),
                ));
            }
            Sampling::greedy(max_tokens)
        } else {
            Sampling::seeded(self.seed.unwrap_or(0), temperature, top_p, max_tokens)
        };
        match &self.json_schema {
            None => Ok(sampling),
            Some(_) if temperature != 0.0 => Err(ApiError::invalid(
                "sampling.json_schema needs greedy decoding (no temperature)".into(),
            )),
            Some(schema) if !schema.is_object() && !schema.is_boolean() => Err(ApiError::invalid(
                "sampling.json_schema must be a JSON Schema object".into(),
            )),
            Some(schema) => Ok(sampling.constrained(Grammar::JsonSchema(schema.clone()))),
        }
    }
}

/// Checks `max_tokens` (1..=`limit`), `temperature` (0..=2, default 0) and `top_p` ((0, 1],
/// default 1), naming each field after `prefix`; gives back the temperature and nucleus.
pub(crate) fn check_sampling(
    prefix: &str,
    max_tokens: usize,
    limit: usize,
    temperature: Option<f32>,
    top_p: Option<f32>,
) -> Result<(f32, f32), ApiError> {
    if max_tokens == 0 || max_tokens > limit {
        return Err(ApiError::invalid(format!(
            "{prefix}max_tokens must be 1..={limit}, got {max_tokens}"
        )));
    }
    let temperature = temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(format!(
            "{prefix}temperature must be in 0..=2, got {temperature}"
        )));
    }
    let top_p = top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(format!(
            "{prefix}top_p must be in (0, 1], got {top_p}"
        )));
    }
    Ok((temperature, top_p))
}

/// `POST /compact`: replace a long chat-template state by a shorter one.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompactRequest {
    /// The state to compact (64 lowercase hex characters).
    pub state_hash: String,
    /// What to keep (defaults when absent).
    #[serde(default)]
    pub policy: Option<CompactPolicy>,
    /// The seed protocol's compaction: the deltas the client appended to `state_hash` since
    /// it was made, folded into one fresh state (`state_hash`'s tokens, then each delta
    /// tokenized on its own, without the outputs generated after them). Not with `policy`.
    #[serde(default)]
    pub accumulated_deltas: Option<Vec<String>>,
    /// As in [`CreateRequest::dtype`].
    #[serde(default)]
    pub dtype: Option<String>,
}

/// Which turns of a chat-template state survive compaction (turns are found by the model's
/// template's turn markers: ChatML's `<|im_start|>`, Gemma's `<start_of_turn>`, ...).
/// The first `keep_first` turns (system prompt, task) and the last `keep_last` turns stay
/// verbatim; the turns between are folded into one note: a summary the model writes in at
/// most `summary_tokens` tokens, or, with `summary_tokens` 0, a placeholder naming how many
/// turns were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompactPolicy {
    /// Leading turns kept (default 2).
    #[serde(default = "default_keep_first")]
    pub keep_first: usize,
    /// Trailing turns kept (default 4).
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
    /// Token budget of the summary of the folded turns; 0 drops them (default 0).
    #[serde(default)]
    pub summary_tokens: usize,
}

fn default_keep_first() -> usize {
    2
}
fn default_keep_last() -> usize {
    4
}

impl Default for CompactPolicy {
    fn default() -> Self {
        Self {
            keep_first: default_keep_first(),
            keep_last: default_keep_last(),
            summary_tokens: 0,
        }
    }
}

/// Measured times of one operation, milliseconds.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
pub struct WireTimings {
    /// Engine prefill.
    pub prefill_ms: f64,
    /// Engine decode.
    pub decode_ms: f64,
    /// The pack's own work (hashing, SQLite).
    pub overhead_ms: f64,
    /// Loading the input state's KV blob (llama.cpp engine only).
    pub restore_ms: f64,
    /// Exporting and writing the output state's KV blob (llama.cpp engine only).
    pub save_ms: f64,
    /// The whole operation, queueing excluded.
    pub total_ms: f64,
    /// Time waiting for the engine queue.
    pub queued_ms: f64,
}

impl WireTimings {
    /// From the pack's timings and the time spent queueing.
    pub fn new(t: &Timings, queued: std::time::Duration) -> Self {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        Self {
            prefill_ms: ms(t.prefill),
            decode_ms: ms(t.decode),
            overhead_ms: ms(t.overhead),
            restore_ms: ms(t.restore),
            save_ms: ms(t.save),
            total_ms: ms(t.total),
            queued_ms: ms(queued),
        }
    }
}

/// A signed receipt exactly as stored: check it with `signature` over SHA-256 of
/// `"state-pack/receipt/v1\0" || body` (see docs/RECEIPTS.md), or fetch its inclusion proof.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct WireReceipt {
    /// Position in the log.
    pub seq: u64,
    /// Receipt hash, hex.
    pub hash: String,
    /// The canonical (RFC 8785) body, verbatim.
    pub body: String,
    /// Ed25519 signature over the hash, hex.
    pub signature: String,
}

impl From<&StoredReceipt> for WireReceipt {
    fn from(r: &StoredReceipt) -> Self {
        Self {
            seq: r.seq,
            hash: r.hash().to_hex(),
            body: String::from_utf8_lossy(&r.body).into_owned(),
            signature: hex::encode(&r.signature),
        }
    }
}

/// Answer to `POST /states` and `POST /merge`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct StateResponse {
    /// The state made (for merge, the new state).
    #[schemars(with = "String")]
    pub state_hash: StateHash,
    /// Same as `state_hash` (the seed protocol's name for merge results).
    #[schemars(with = "String")]
    pub new_state_hash: StateHash,
    /// Token counts.
    pub tokens: Tokens,
    /// Times.
    pub timings: WireTimings,
    /// Whether the engine ran (not when it already held every token).
    pub engine_called: bool,
    /// The seed protocol's `cache_hit`: the engine was not called (it held every token).
    pub cache_hit: bool,
    /// KV bytes the state occupies in the engine when hot (the seed's `bytes`).
    pub bytes: u64,
    /// The whole operation, seconds (the seed's `elapsed_s`; `timings.total_ms` / 1000).
    pub elapsed_s: f64,
    /// The signed receipt of this operation.
    pub receipt: WireReceipt,
}

impl StateResponse {
    /// From a pack report; `kv_bytes_per_token` is the model's.
    pub fn new(
        r: &OpReport,
        queued: std::time::Duration,
        receipt: WireReceipt,
        kv_bytes_per_token: usize,
    ) -> Self {
        Self {
            state_hash: r.output,
            new_state_hash: r.output,
            tokens: r.tokens,
            timings: WireTimings::new(&r.timings, queued),
            engine_called: r.engine_called,
            cache_hit: !r.engine_called,
            bytes: r.tokens.state * kv_bytes_per_token as u64,
            elapsed_s: r.timings.total.as_secs_f64(),
            receipt,
        }
    }
}

/// An infer's token counts: the signed object (the receipt's `tokens`: `delta`, `state`,
/// `prefilled`, `reused`, `generated`, `restored`) and the seed protocol's four figures,
/// derived from it.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
pub struct InferTokens {
    /// The signed counts.
    #[serde(flatten)]
    pub signed: Tokens,
    /// Tokens of the input state.
    pub base: u64,
    /// Tokens of the prompt: input state and delta (`state - generated`).
    pub new_total: u64,
    /// Prompt tokens the engine did not run (`new_total - prefilled`, as measured).
    pub saved: u64,
    /// `saved` over `new_total`, percent (two decimals).
    pub savings_pct: f64,
}

impl From<Tokens> for InferTokens {
    fn from(t: Tokens) -> Self {
        let new_total = t.state.saturating_sub(t.generated);
        let saved = new_total.saturating_sub(t.prefilled);
        let pct = if new_total == 0 {
            0.0
        } else {
            (saved as f64 * 10_000.0 / new_total as f64).round() / 100.0
        };
        Self {
            signed: t,
            base: new_total.saturating_sub(t.delta),
            new_total,
            saved,
            savings_pct: pct,
        }
    }
}

/// Answer to `POST /infer`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct InferResponse {
    /// The input state (as the seed protocol answers it).
    #[schemars(with = "String")]
    pub state_hash: StateHash,
    /// The state made: input, delta and generated tokens.
    #[schemars(with = "String")]
    pub new_state_hash: StateHash,
    /// SHA-256 of the delta's tokens on this model (the receipt's `delta`), hex.
    #[schemars(with = "String")]
    pub delta_hash: DeltaHash,
    /// The generated text.
    pub output: String,
    /// Why generation stopped.
    #[schemars(with = "String")]
    pub finish: FinishReason,
    /// Token counts (all engine counts are 0 for an answer from the store).
    pub tokens: InferTokens,
    /// Times.
    pub timings: WireTimings,
    /// Whether the engine ran.
    pub engine_called: bool,
    /// When the answer came from the store: the receipt of the infer it repeats.
    pub replay_of: Option<u64>,
    /// The signed receipt of this operation.
    pub receipt: WireReceipt,
}

/// Answer to `POST /compact`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CompactResponse {
    /// The compacted state.
    #[schemars(with = "String")]
    pub new_state_hash: StateHash,
    /// Turns folded into the note.
    pub steps_folded: usize,
    /// Tokens before compaction.
    pub tokens_before: usize,
    /// The summary the model wrote, if the policy asked for one.
    pub summary: Option<String>,
    /// Token counts of the compaction.
    pub tokens: Tokens,
    /// Times (the summary's generation included).
    pub timings: WireTimings,
    /// The policy applied (none for the seed's `accumulated_deltas`).
    pub policy: Option<CompactPolicy>,
    /// The receipt of the summary's generation, if there was one.
    pub summary_receipt: Option<WireReceipt>,
    /// The signed receipt of the compaction.
    pub receipt: WireReceipt,
}

/// Answer to `GET /states/{hash}`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct StateInfo {
    /// Its hash.
    #[schemars(with = "String")]
    pub state_hash: StateHash,
    /// Its length in tokens.
    pub tokens: usize,
    /// KV bytes it occupies in the engine when hot.
    pub kv_bytes: usize,
    /// The same (the seed protocol's name).
    pub bytes: usize,
    /// The model's id (as `GET /v1/models` names it).
    pub model: String,
    /// Whether the engine holds its KV now (extending it prefills only the delta).
    pub hot: bool,
    /// The state it was made from.
    #[schemars(with = "Option<String>")]
    pub parent: Option<StateHash>,
    /// The operation that made it.
    pub op: String,
}

/// What the server runs.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ModelSummary {
    /// The id OpenAI-style requests name it by (`GET /v1/models`).
    pub id: String,
    /// Name from the model file.
    pub name: String,
    /// SHA-256 of the weights file, hex.
    pub fingerprint: String,
    /// The context window in tokens.
    pub context_window: usize,
    /// The chat template turns are written in (`chatml`, `llama3`, `gemma`, `phi3`,
    /// `mistral`).
    pub chat_template: String,
    /// The type the engine keeps KV in (`float32`, `float16`, `bfloat16`): what a seed
    /// client's `dtype` must name.
    pub kv_dtype: String,
    /// Where the engine runs the model (`cpu`, `cuda:0`, ...).
    pub device: String,
}

/// Answer to `GET /health`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Health {
    /// "ok", or "draining" during shutdown.
    pub status: String,
    /// Token sequences whose KV the engine holds now.
    pub states_hot: usize,
    /// States in the store.
    pub states_cached: u64,
    /// Receipts in the ledger.
    pub receipts: u64,
    /// The model.
    pub model: ModelSummary,
    /// The engine queue.
    pub queue: super::queue::QueueStats,
}

/// Parses a state hash strictly: exactly 64 lowercase hex characters.
pub fn parse_hash(field: &str, s: &str) -> Result<StateHash, ApiError> {
    if s.len() != 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(ApiError::new(
            ErrorCode::InvalidHash,
            format!("{field} must be 64 lowercase hex characters"),
        ));
    }
    s.parse()
        .map_err(|e| ApiError::new(ErrorCode::InvalidHash, format!("{field}: {e}")))
}
