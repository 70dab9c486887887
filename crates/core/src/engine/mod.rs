//! The engine layer: a model that speaks token ids.
//!
//! The pack owns tokenization and the token chains; an [`Engine`] only turns token ids into
//! text, text into token ids, and a token prefix into sampled tokens, and says honestly what
//! it computed. It knows nothing of states, stores or receipts.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::state::ModelFingerprint;
use crate::template::ChatTemplate;

pub mod fatal_signal;
pub mod gguf;
#[cfg(feature = "llamacpp")]
pub mod llamacpp;
#[cfg(feature = "mistralrs")]
pub mod mistralrs;
mod options;
mod sampler;
#[cfg(any(test, feature = "testing"))]
pub mod scripted;

#[cfg(feature = "llamacpp")]
pub use self::llamacpp::{LlamaCppEngine, LlamaCppOptions, LlamaCppVocab};
#[cfg(feature = "mistralrs")]
pub use self::mistralrs::MistralRsEngine;
pub use self::options::{ActivationDType, Device, MistralRsOptions};

/// An [`EngineError::Load`] for the model file at `path`.
pub(crate) fn load_err(path: &std::path::Path, reason: impl ToString) -> EngineError {
    EngineError::Load {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Distinct tokens in `sequences` when a shared prefix is held once (the nodes of their
/// prefix tree).
pub(crate) fn distinct_prefix_tokens(sequences: &[&[u32]]) -> usize {
    let mut sorted = sequences.to_vec();
    sorted.sort_unstable();
    let mut total = 0;
    let mut previous: &[u32] = &[];
    for s in sorted {
        total += s.len() - common_prefix(previous, s);
        previous = s;
    }
    total
}

/// Length of the common prefix of two token sequences.
pub(crate) fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// What the engine is running.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Human-readable name from the model file's metadata (or its file name).
    pub name: String,
    /// The weights file.
    pub path: PathBuf,
    /// SHA-256 of the weights file.
    pub fingerprint: ModelFingerprint,
    /// The most tokens one sequence may hold (prompt plus generated).
    pub context_window: usize,
    /// Bytes of KV cache one token occupies in the engine (all layers, keys and values).
    pub kv_bytes_per_token: usize,
    /// How the model's conversations are marked up: chosen when the engine was loaded, else
    /// recognised from the file's `tokenizer.chat_template`.
    pub template: ChatTemplate,
    /// The element type the engine keeps KV in.
    #[serde(default)]
    pub kv_dtype: KvDType,
    /// Where the engine runs the model.
    #[serde(default)]
    pub device: Device,
}

/// The element type of an engine's KV cache, named as PyTorch names it (the seed's clients
/// send those names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvDType {
    /// 32-bit floats.
    #[default]
    Float32,
    /// IEEE half precision.
    Float16,
    /// bfloat16.
    BFloat16,
}

impl KvDType {
    /// `float32`, `float16` or `bfloat16`.
    pub fn name(self) -> &'static str {
        match self {
            KvDType::Float32 => "float32",
            KvDType::Float16 => "float16",
            KvDType::BFloat16 => "bfloat16",
        }
    }

    /// A name as PyTorch, NumPy or GGML writes it (`float16`, `fp16`, `f16`, `half`, ...).
    pub fn parse(name: &str) -> Option<Self> {
        match name
            .trim()
            .to_ascii_lowercase()
            .trim_start_matches("torch.")
        {
            "float32" | "fp32" | "f32" | "float" => Some(KvDType::Float32),
            "float16" | "fp16" | "f16" | "half" => Some(KvDType::Float16),
            "bfloat16" | "bf16" => Some(KvDType::BFloat16),
            _ => None,
        }
    }
}

impl std::fmt::Display for KvDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How to pick each generated token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum SamplingMode {
    /// Always the most likely token: the same prefix always gives the same output.
    Greedy,
    /// Temperature and nucleus sampling driven by `seed`. The draw at each position depends
    /// only on the seed, the position and the model's logits there, so the same state, delta
    /// and seed give the same output in any process and in any order of requests.
    Seeded {
        /// The seed.
        seed: u64,
        /// Softmax temperature (> 0).
        temperature: f32,
        /// Nucleus mass kept, in (0, 1].
        top_p: f32,
    },
}

/// Sampling parameters for one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// How tokens are picked.
    pub mode: SamplingMode,
    /// The most tokens to generate; generation also stops at the model's end-of-turn token.
    pub max_tokens: usize,
    /// A grammar every generated token must keep the output inside (greedy mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grammar: Option<Grammar>,
}

/// A constraint on generated text, enforced token by token while decoding (mistral.rs runs
/// it with llguidance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Grammar {
    /// The output is one JSON value valid under this JSON Schema.
    JsonSchema(serde_json::Value),
    /// The output matches this Lark grammar.
    Lark(String),
}

impl Grammar {
    /// One JSON value valid under `schema`, then `end_of_turn` (the chat template's marker,
    /// one special token): the turn closes itself and generation stops there.
    pub fn json_turn(schema: &serde_json::Value, end_of_turn: &str) -> Self {
        Grammar::Lark(format!(
            "start: action {end_of_turn}\naction: %json {schema}\n"
        ))
    }

    /// The schema and end-of-turn marker of a grammar [`json_turn`](Self::json_turn) made,
    /// for engines that take a JSON Schema rather than a Lark grammar; `None` for any other.
    pub fn as_json_turn(&self) -> Option<(serde_json::Value, &str)> {
        match self {
            Grammar::Lark(lark) => {
                let (start, action) = lark.split_once('\n')?;
                let end_of_turn = start.strip_prefix("start: action ")?;
                let schema = action.strip_prefix("action: %json ")?.strip_suffix('\n')?;
                let schema: serde_json::Value = serde_json::from_str(schema).ok()?;
                (Grammar::json_turn(&schema, end_of_turn) == *self).then_some((schema, end_of_turn))
            }
            Grammar::JsonSchema(_) => None,
        }
    }
}

impl Sampling {
    /// Greedy decoding of at most `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            mode: SamplingMode::Greedy,
            max_tokens,
            grammar: None,
        }
    }

    /// These parameters, with generation constrained by `grammar`.
    pub fn constrained(mut self, grammar: Grammar) -> Self {
        self.grammar = Some(grammar);
        self
    }

    /// Seeded sampling at `temperature` with nucleus `top_p`.
    pub fn seeded(seed: u64, temperature: f32, top_p: f32, max_tokens: usize) -> Self {
        Self {
            mode: SamplingMode::Seeded {
                seed,
                temperature,
                top_p,
            },
            max_tokens,
            grammar: None,
        }
    }

    /// Refuses a request no engine can run: an empty prompt, nothing to generate, a grammar
    /// with seeded sampling (the seeded sampler picks the token itself and does not see the
    /// grammar's mask), or more tokens than `window` holds.
    pub fn check(&self, prompt: &[u32], window: usize) -> Result<(), EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::Rejected("empty prompt".into()));
        }
        if self.max_tokens == 0 {
            return Err(EngineError::Rejected(
                "max_tokens must be at least 1".into(),
            ));
        }
        if self.grammar.is_some() && self.mode != SamplingMode::Greedy {
            return Err(EngineError::Rejected(
                "a grammar needs greedy sampling (seeded sampling does not see the grammar's token mask)".into(),
            ));
        }
        if prompt.len() + self.max_tokens > window {
            return Err(EngineError::Rejected(format!(
                "{} prompt tokens + {} to generate exceed the context window of {window}",
                prompt.len(),
                self.max_tokens
            )));
        }
        Ok(())
    }

    /// Whether the same prefix always yields the same tokens under these parameters.
    pub fn is_deterministic(&self) -> bool {
        // Seeded sampling is a pure function of (seed, prefix) by construction.
        true
    }
}

/// Why a generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced its end-of-sequence / end-of-turn token.
    Stop,
    /// `max_tokens` were generated.
    Length,
}

/// What the engine really did for one request, as it measured it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineUsage {
    /// Tokens in the prompt sent.
    pub prompt_tokens: usize,
    /// Prompt tokens run through the model (prompt minus reused).
    pub prefilled: usize,
    /// Prompt tokens whose KV came from the engine's prefix cache, as the engine counted.
    pub reused: usize,
    /// Tokens sampled.
    pub generated: usize,
    /// Time the engine spent on the prompt.
    pub prefill_time: Duration,
    /// Time the engine spent generating.
    pub decode_time: Duration,
    /// Wall time of the request, from sending it to the engine to its answer.
    pub wall: Duration,
    /// Prompt tokens whose fate the engine did not report (a remote server without a
    /// cached-token count): in neither `prefilled` nor `reused`. 0 for local engines.
    pub unreported: usize,
    /// The sampled ids are this process's tokenization of text the engine returned, not the
    /// ids it sampled (a remote server that returns text only).
    pub retokenized: bool,
}

/// The result of [`Engine::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The ids the sampler chose, in order, including a final end-of-turn token if one was
    /// sampled.
    pub tokens: Vec<u32>,
    /// The generated text, without the end-of-turn token.
    pub text: String,
    /// Why generation stopped.
    pub finish: FinishReason,
    /// What it cost.
    pub usage: EngineUsage,
}

/// Receives generated token ids, in order, as the engine samples them
/// ([`Engine::generate_streaming`]). A closed receiver never stops generation.
pub type TokenSink = tokio::sync::mpsc::UnboundedSender<u32>;

/// A generation's request for the KV of its prompt's positions `from..` as soon as the prompt
/// is in the engine, before the first decode ([`Engine::generate_exporting`]): what the caller
/// does with the bytes (the pack hashes them for the receipt) then runs while the engine
/// decodes.
#[derive(Debug)]
pub struct PromptKvRequest {
    /// The first prompt position exported (what an earlier blob holds comes before it).
    pub from: usize,
    /// Where the export goes; `Ok(None)` when the engine could not export it.
    pub reply: tokio::sync::oneshot::Sender<Result<Option<ExportedKv>, EngineError>>,
}

/// KV handed out by [`Engine::generate_exporting`].
#[derive(Debug)]
pub struct ExportedKv {
    /// The bytes, as [`Engine::export_kv`] makes them.
    pub raw: Vec<u8>,
    /// How long the engine took to export them. An engine that exports before decoding counts
    /// it in the generation's wall time but in neither its prefill nor its decode time.
    pub time: Duration,
}

/// Errors from an engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file could not be read or parsed.
    #[error("cannot load model {path}: {reason}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The request was rejected before it ran (bad parameters, empty prompt, too long).
    #[error("engine rejected the request: {0}")]
    Rejected(String),
    /// The engine failed while running the request.
    #[error("engine failed: {0}")]
    Failed(String),
}

/// A local or remote model that speaks token ids.
#[async_trait]
pub trait Engine: Send + Sync {
    /// What model this engine runs.
    fn info(&self) -> &ModelInfo;

    /// Which engine this is, for reports: `mistralrs`, `llamacpp`, or `custom` for any other
    /// implementation.
    fn engine_name(&self) -> &'static str {
        "custom"
    }

    /// Token ids of `text`, without adding BOS/EOS; special-token markup in the text (such as
    /// `<|im_start|>`) becomes its special token.
    async fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineError>;

    /// The text of `tokens`, special tokens included.
    async fn detokenize(&self, tokens: &[u32]) -> Result<String, EngineError>;

    /// Run `prompt` through the model so that its KV is held for later extension, without
    /// generating anything.
    async fn prefill(&self, prompt: &[u32]) -> Result<EngineUsage, EngineError>;

    /// Generate from `prompt` under `sampling`.
    async fn generate(
        &self,
        prompt: &[u32],
        sampling: &Sampling,
    ) -> Result<Generation, EngineError>;

    /// [`generate`](Self::generate), sending each sampled id to `sink` as soon as it is
    /// chosen. The returned [`Generation`] is the answer; the sink only shows it early. The
    /// default, for engines that cannot stream, sends every id when generation is done.
    async fn generate_streaming(
        &self,
        prompt: &[u32],
        sampling: &Sampling,
        sink: TokenSink,
    ) -> Result<Generation, EngineError> {
        let generation = self.generate(prompt, sampling).await?;
        for t in &generation.tokens {
            let _ = sink.send(*t);
        }
        Ok(generation)
    }

    /// [`generate`](Self::generate) (or [`generate_streaming`](Self::generate_streaming) with
    /// `sink`) that also hands out the KV of the prompt's positions `export.from..` through
    /// `export.reply`. An engine that can, exports it as soon as the prompt is in, before
    /// decoding, so that the caller's work on it overlaps the decode; the default exports it
    /// after the generation. `export.reply` is always answered or dropped before this
    /// returns.
    async fn generate_exporting(
        &self,
        prompt: &[u32],
        sampling: &Sampling,
        sink: Option<TokenSink>,
        export: PromptKvRequest,
    ) -> Result<Generation, EngineError> {
        let generation = match sink {
            Some(sink) => self.generate_streaming(prompt, sampling, sink).await?,
            None => self.generate(prompt, sampling).await?,
        };
        let started = std::time::Instant::now();
        let exported = self.export_kv(prompt, export.from).await.map(|raw| {
            raw.map(|raw| ExportedKv {
                raw,
                time: started.elapsed(),
            })
        });
        let _ = export.reply.send(exported);
        Ok(generation)
    }

    /// The inference server this engine sends its work to, for receipts; `None` (the
    /// default) for a model run in this process.
    fn remote(&self) -> Option<state_pack_ledger::ReceiptRemote> {
        None
    }

    /// How many leading tokens of `tokens` the engine holds KV for right now (0 when it
    /// holds none).
    fn hot_prefix_len(&self, tokens: &[u32]) -> usize;

    /// How many generations the engine runs at once (batched together); callers that
    /// queue requests for it (the server) admit this many. 1 unless the engine batches.
    fn max_concurrent(&self) -> usize {
        1
    }

    /// How many token sequences the engine holds KV for right now.
    fn hot_entries(&self) -> usize {
        0
    }

    /// Tokens whose KV the engine holds in memory now, a cell shared by several sequences
    /// counted once (times [`ModelInfo::kv_bytes_per_token`], the KV memory in use).
    fn hot_tokens(&self) -> usize {
        0
    }

    /// Whether this engine can hand out and take back the KV of a token sequence as bytes
    /// ([`export_kv`](Self::export_kv), [`import_kv`](Self::import_kv)). mistral.rs cannot:
    /// a state it no longer holds is prefilled again.
    fn kv_export(&self) -> bool {
        false
    }

    /// The KV of positions `from..tokens.len()` of `tokens` as opaque bytes, if the engine
    /// holds all of `tokens`; `None` when it does not (or cannot export KV at all).
    async fn export_kv(
        &self,
        _tokens: &[u32],
        _from: usize,
    ) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(None)
    }

    /// Loads KV that [`export_kv`](Self::export_kv) produced (by this model, in any process)
    /// for consecutive ranges of `tokens` — the first chunk from position 0, each next one
    /// from where the previous ended, the last up to `tokens.len()` — so that `tokens` are
    /// hot again without being prefilled. `Ok(false)` when the engine cannot, or the bytes do
    /// not restore exactly `tokens` (then nothing is kept).
    async fn import_kv(&self, _tokens: &[u32], _chunks: Vec<Vec<u8>>) -> Result<bool, EngineError> {
        Ok(false)
    }
}

/// Which engine runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// mistral.rs ([`MistralRsEngine`]): the default.
    #[default]
    MistralRs,
    /// llama.cpp (`LlamaCppEngine`, cargo feature `llamacpp`): faster on CPU, and states
    /// survive a restart as KV blobs.
    LlamaCpp,
    /// An inference server in another process (`RemoteEngine` of the `state-pack-remote`
    /// crate): connected to, not loaded from a file, so never by [`load_engine`].
    Remote,
}

impl EngineKind {
    /// Every engine, built in or not.
    pub const ALL: [EngineKind; 3] = [
        EngineKind::MistralRs,
        EngineKind::LlamaCpp,
        EngineKind::Remote,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::MistralRs => "mistralrs",
            EngineKind::LlamaCpp => "llamacpp",
            EngineKind::Remote => "remote",
        }
    }

    /// Whether this build can load the engine from a model file ([`load_engine`]): never
    /// for [`Remote`](Self::Remote), which the application connects to itself.
    pub fn available(self) -> bool {
        match self {
            EngineKind::MistralRs => cfg!(feature = "mistralrs"),
            EngineKind::LlamaCpp => cfg!(feature = "llamacpp"),
            EngineKind::Remote => false,
        }
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mistralrs" | "mistral.rs" => Ok(EngineKind::MistralRs),
            "llamacpp" | "llama.cpp" => Ok(EngineKind::LlamaCpp),
            "remote" => Ok(EngineKind::Remote),
            other => Err(format!(
                "unknown engine {other:?} (expected mistralrs, llamacpp or remote)"
            )),
        }
    }
}

/// How to load an engine, whichever it is: every knob is a field here, none is read from
/// the environment (the CLI maps its flags and their `env` names onto these fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSpec {
    /// The engine.
    pub kind: EngineKind,
    /// Token sequences whose KV the engine keeps (mistral.rs prefix-cache entries, llama.cpp
    /// slots); `0` keeps none, so every prompt is prefilled in full.
    pub hot_states: usize,
    /// CPU threads for llama.cpp; `0` means every core. (mistral.rs's CPU kernels run on
    /// rayon's global pool, sized once per process by `RAYON_NUM_THREADS`.)
    pub threads: usize,
    /// llama.cpp: tokens per `llama_decode` call while prefilling.
    pub batch: usize,
    /// llama.cpp: flash attention forced on or off; `None` lets llama.cpp decide.
    pub flash_attention: Option<bool>,
    /// llama.cpp: one persistent CPU thread pool ([`LlamaCppOptions::thread_pool`]).
    pub thread_pool: bool,
    /// mistral.rs: activation and KV precision.
    pub dtype: ActivationDType,
    /// mistral.rs: requantize Q4_1/Q5_0/Q5_1 weights to Q8_0 at load
    /// ([`MistralRsOptions::requantize_q8`]).
    pub requantize_q8: bool,
    /// The chat template; `None` recognises it from the model file (an error if the file
    /// has none or an unknown one).
    pub chat_template: Option<ChatTemplate>,
    /// Where to run the model.
    pub device: Device,
    /// The KV memory all hot states share, in bytes. llama.cpp: the size of its pool of KV
    /// cells; `0` keeps the default pool (the training context, at most 8,192 tokens).
    /// mistral.rs: the most its prefix cache keeps ([`MistralRsOptions::kv_budget_bytes`]);
    /// `0` sets no byte limit, only [`hot_states`](Self::hot_states).
    pub kv_budget_bytes: u64,
    /// mistral.rs: sequences its scheduler runs at once
    /// ([`MistralRsOptions::max_sequences`]; 1 by default, as there).
    pub mistralrs_sequences: usize,
}

impl EngineSpec {
    /// `kind` with the defaults: 8 hot states, every core, batches of 512, flash attention
    /// as llama.cpp decides, F32 activations, Q8_0 requantization on, one mistral.rs
    /// sequence at a time.
    pub fn new(kind: EngineKind) -> Self {
        let mistralrs = MistralRsOptions::default();
        Self {
            kind,
            hot_states: 8,
            threads: 0,
            batch: DEFAULT_LLAMACPP_BATCH,
            flash_attention: None,
            thread_pool: false,
            dtype: mistralrs.dtype,
            requantize_q8: mistralrs.requantize_q8,
            chat_template: None,
            device: Device::Cpu,
            kv_budget_bytes: 0,
            mistralrs_sequences: mistralrs.max_sequences,
        }
    }

    /// The same spec keeping `n` hot states.
    pub fn hot_states(self, n: usize) -> Self {
        Self {
            hot_states: n,
            ..self
        }
    }
}

/// llama.cpp's prefill batch unless told otherwise ([`EngineSpec::batch`]).
pub const DEFAULT_LLAMACPP_BATCH: usize = 512;

/// Loads the GGUF model at `path` in the engine `spec` names.
///
/// Fails with [`EngineError::Load`] if the model cannot be loaded, or if this build does not
/// include the engine (cargo features `mistralrs`, on by default, and `llamacpp`).
pub async fn load_engine(
    path: &std::path::Path,
    spec: EngineSpec,
) -> Result<std::sync::Arc<dyn Engine>, EngineError> {
    match spec.kind {
        #[cfg(feature = "mistralrs")]
        EngineKind::MistralRs => Ok(std::sync::Arc::new(
            MistralRsEngine::load(
                path,
                MistralRsOptions {
                    prefix_cache_entries: spec.hot_states,
                    dtype: spec.dtype,
                    requantize_q8: spec.requantize_q8,
                    chat_template: spec.chat_template,
                    device: spec.device,
                    // One at a time unless asked: see `MistralRsOptions::max_sequences`.
                    max_sequences: spec.mistralrs_sequences,
                    kv_budget_bytes: spec.kv_budget_bytes,
                },
            )
            .await?,
        )),
        #[cfg(feature = "llamacpp")]
        EngineKind::LlamaCpp => Ok(std::sync::Arc::new(
            LlamaCppEngine::load(
                path,
                LlamaCppOptions {
                    slots: spec.hot_states,
                    threads: spec.threads,
                    batch: spec.batch,
                    flash_attention: spec.flash_attention,
                    thread_pool: spec.thread_pool,
                    chat_template: spec.chat_template,
                    device: spec.device,
                    kv_budget_bytes: spec.kv_budget_bytes,
                    ..LlamaCppOptions::default()
                },
            )
            .await?,
        )),
        EngineKind::Remote => Err(EngineError::Load {
            path: path.to_path_buf(),
            reason: "a remote engine is connected to its server (state_pack_remote::RemoteEngine::connect), not loaded from a model file".into(),
        }),
        #[cfg(not(feature = "mistralrs"))]
        EngineKind::MistralRs => Err(EngineError::Load {
            path: path.to_path_buf(),
            reason: "this build has no mistral.rs engine: rebuild with the `mistralrs` feature (on by default)".into(),
        }),
        #[cfg(not(feature = "llamacpp"))]
        EngineKind::LlamaCpp => Err(EngineError::Load {
            path: path.to_path_buf(),
            reason: "this build has no llama.cpp engine: rebuild with `--features llamacpp` (needs cmake and a C++ compiler)".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_turn_grammar_gives_back_its_schema_and_marker() {
        let schema =
            serde_json::json!({"type": "object", "properties": {"tool": {"type": "string"}}});
        let g = Grammar::json_turn(&schema, "<|im_end|>");
        assert_eq!(g.as_json_turn(), Some((schema.clone(), "<|im_end|>")));
        assert_eq!(Grammar::Lark("start: \"a\"".into()).as_json_turn(), None);
        assert_eq!(Grammar::JsonSchema(schema).as_json_turn(), None);
        // Extra rules after the action are not a json_turn grammar.
        let Grammar::Lark(lark) = g else {
            unreachable!()
        };
        assert_eq!(
            Grammar::Lark(format!("{lark}x: \"y\"\n")).as_json_turn(),
            None
        );
    }

    #[test]
    fn shared_prefixes_are_counted_once() {
        assert_eq!(distinct_prefix_tokens(&[]), 0);
        assert_eq!(distinct_prefix_tokens(&[&[1, 2, 3]]), 3);
        // [1,2,3] and [1,2,4,5] share [1,2]; [7] shares nothing; [1,2] is inside both.
        assert_eq!(
            distinct_prefix_tokens(&[&[1, 2, 4, 5], &[7], &[1, 2, 3], &[1, 2]]),
            6
        );
        assert_eq!(distinct_prefix_tokens(&[&[1, 2], &[1, 2]]), 2);
    }
}
