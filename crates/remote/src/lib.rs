//! [`RemoteEngine`]: state-pack's states, compaction and signed receipts over an inference
//! server that already runs the model (llama.cpp's `llama-server`, or any server with an
//! OpenAI-compatible `/v1/completions` that takes token-id prompts).
//!
//! The pack still owns the token chain: every request sends the state's whole context as
//! token ids of the model's own vocabulary (read from the model's GGUF file with llama.cpp,
//! the tokenizer `llama-server` itself runs), and the server's prompt cache does the reuse.
//! What a receipt then says about reuse is what the server reported — `timings.cache_n` of
//! llama-server's `/completion`, `usage.prompt_tokens_details.cached_tokens` of
//! `/v1/completions` — and a server that reports no cached count is recorded as not
//! reported ([`EngineUsage::unreported`]), never as zero.
//!
//! ```no_run
//! # async fn run() -> Result<(), state_pack_core::engine::EngineError> {
//! use state_pack_remote::{RemoteApi, RemoteEngine, RemoteOptions};
//! let engine = RemoteEngine::connect(RemoteOptions::new(
//!     "http://127.0.0.1:8080",
//!     RemoteApi::Llama,
//!     "SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(),
//! ))
//! .await?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use state_pack_core::engine::{
    Device, Engine, EngineError, EngineUsage, FinishReason, Generation, KvDType, LlamaCppVocab,
    ModelInfo, Sampling, SamplingMode,
};
use state_pack_core::ledger::ReceiptRemote;
use state_pack_core::state::ModelFingerprint;
use state_pack_core::template::ChatTemplate;
use tracing::{debug, warn};

mod wire;

pub use wire::Answer;

/// Which API the server is spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteApi {
    /// llama-server's native `/completion`: token-id prompts, `cache_prompt`, the sampled
    /// ids (`return_tokens`) and the server's own reuse count (`timings.cache_n`).
    Llama,
    /// `/v1/completions` with a token-id prompt (llama-server, vLLM, SGLang): reuse from
    /// `usage.prompt_tokens_details.cached_tokens`; the sampled ids where the server returns
    /// them (`choices[0].token_ids`), otherwise the text re-tokenized here (and the receipt
    /// says so).
    OpenAiCompletions,
    /// `/v1/chat/completions`, for servers that take only messages (hosted APIs): the
    /// state's text is read back into its turns ([`ChatTemplate::messages`]) and sent as
    /// messages; the server renders its own prompt, so reuse and prefill counts are in the
    /// server's tokens, and the reply is re-tokenized here.
    OpenAiChat,
}

impl RemoteApi {
    /// Every API, as named on the command line.
    pub const ALL: [RemoteApi; 3] = [
        RemoteApi::Llama,
        RemoteApi::OpenAiCompletions,
        RemoteApi::OpenAiChat,
    ];

    /// `llama`, `openai-completions` or `openai-chat`.
    pub fn name(self) -> &'static str {
        match self {
            RemoteApi::Llama => "llama",
            RemoteApi::OpenAiCompletions => "openai-completions",
            RemoteApi::OpenAiChat => "openai-chat",
        }
    }

    fn path(self) -> &'static str {
        match self {
            RemoteApi::Llama => "/completion",
            RemoteApi::OpenAiCompletions => "/v1/completions",
            RemoteApi::OpenAiChat => "/v1/chat/completions",
        }
    }
}

impl std::str::FromStr for RemoteApi {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "llama" => Ok(RemoteApi::Llama),
            "openai-completions" => Ok(RemoteApi::OpenAiCompletions),
            "openai-chat" => Ok(RemoteApi::OpenAiChat),
            other => Err(format!(
                "unknown remote API {other:?} (expected llama, openai-completions or openai-chat)"
            )),
        }
    }
}

/// How a [`RemoteEngine`] reaches its server.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// The server's base URL (`http://host:port`, without `/v1`).
    pub url: String,
    /// The API to speak.
    pub api: RemoteApi,
    /// A GGUF file of the server's model (or one with the same vocabulary): its tokenizer
    /// makes the states' token ids, and its hash is part of the model fingerprint.
    pub tokenizer: PathBuf,
    /// The chat template; `None` recognises it from the GGUF file.
    pub chat_template: Option<ChatTemplate>,
    /// Sent as `Authorization: Bearer ...` when set.
    pub api_key: Option<String>,
    /// The model to ask for (`model` in OpenAI requests); `None` takes the server's first.
    pub model: Option<String>,
    /// The longest one request may take.
    pub timeout: Duration,
    /// Further attempts of a request that failed without an answer (connection refused or
    /// reset, timeout, HTTP 429 or 5xx), with doubling waits from 200 ms. Every request the
    /// engine makes is idempotent: the same prompt and sampling give the same answer.
    pub retries: u32,
    /// Ask the server to keep and reuse the prompt's KV (`cache_prompt`); `false` is the
    /// naive arm of `state-pack bench`, which re-prefills every prompt.
    pub cache_prompt: bool,
}

impl RemoteOptions {
    /// `url` spoken to in `api`, with the tokenizer of the GGUF file at `tokenizer`; a
    /// 300 s timeout, 3 retries, prompt caching on.
    pub fn new(url: &str, api: RemoteApi, tokenizer: &Path) -> Self {
        Self {
            url: url.trim_end_matches('/').to_string(),
            api,
            tokenizer: tokenizer.to_path_buf(),
            chat_template: None,
            api_key: None,
            model: None,
            timeout: Duration::from_secs(300),
            retries: 3,
            cache_prompt: true,
        }
    }
}

/// A model served by another process, behind the [`Engine`] trait.
pub struct RemoteEngine {
    info: ModelInfo,
    vocab: LlamaCppVocab,
    client: reqwest::Client,
    options: RemoteOptions,
    /// The model id the server gave when the engine connected.
    server_model: String,
    /// The template's end-of-turn token: the server stops on it without returning it.
    end_of_turn: Option<u32>,
    /// Requests the server runs at once: llama-server's slots (`/props` `total_slots`), 1
    /// where the server does not say.
    slots: usize,
}

impl std::fmt::Debug for RemoteEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEngine")
            .field("url", &self.options.url)
            .field("api", &self.options.api)
            .field("model", &self.server_model)
            .finish()
    }
}

fn failed(url: &str, what: impl std::fmt::Display) -> EngineError {
    EngineError::Failed(format!("remote server {url}: {what}"))
}

impl RemoteEngine {
    /// Reads the tokenizer, asks the server which model it runs (`/v1/models`) and how long
    /// a sequence may be, and checks that the server's vocabulary is the tokenizer's size.
    ///
    /// Fails with [`EngineError::Load`] on an unreadable tokenizer file and with
    /// [`EngineError::Failed`] when the server cannot be reached, answers badly, or runs a
    /// model whose vocabulary is not the tokenizer's.
    pub async fn connect(options: RemoteOptions) -> Result<Self, EngineError> {
        let (path, explicit) = (options.tokenizer.clone(), options.chat_template);
        let vocab = tokio::task::spawn_blocking(move || LlamaCppVocab::open(&path, explicit))
            .await
            .map_err(|e| EngineError::Failed(format!("tokenizer loader: {e}")))??;
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .build()
            .map_err(|e| failed(&options.url, e))?;
        let mut engine = Self {
            info: ModelInfo {
                name: String::new(),
                path: options.tokenizer.clone(),
                fingerprint: vocab.fingerprint(),
                context_window: vocab.trained_context(),
                kv_bytes_per_token: 0,
                template: vocab.template(),
                kv_dtype: KvDType::default(),
                device: Device::Remote,
            },
            end_of_turn: match vocab.tokenize(vocab.template().end_of_turn()).as_slice() {
                [id] => Some(*id),
                _ => None,
            },
            vocab,
            client,
            options,
            server_model: String::new(),
            slots: 1,
        };
        let models = engine.get("/v1/models").await?;
        let listed = wire::models(&models).map_err(|e| failed(&engine.options.url, e))?;
        let chosen = match &engine.options.model {
            Some(m) => listed.iter().find(|l| &l.id == m).ok_or_else(|| {
                failed(
                    &engine.options.url,
                    format!(
                        "serves no model {m:?} (it has: {})",
                        listed
                            .iter()
                            .map(|l| l.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?,
            None => listed
                .first()
                .ok_or_else(|| failed(&engine.options.url, "/v1/models lists no model"))?,
        };
        if let Some(n) = chosen.n_vocab.filter(|&n| n != engine.vocab.len()) {
            return Err(failed(
                &engine.options.url,
                format!(
                    "its model {} has a vocabulary of {n} tokens, the tokenizer {} has {}: not the same model",
                    chosen.id,
                    engine.options.tokenizer.display(),
                    engine.vocab.len()
                ),
            ));
        }
        if let Some(n) = chosen.n_ctx {
            engine.info.context_window = n;
        }
        if engine.options.api == RemoteApi::Llama {
            // llama-server's per-slot context, which may be smaller than the model's.
            let props = engine.get("/props").await?;
            if let Some(n) = wire::slot_context(&props) {
                engine.info.context_window = n;
            }
            engine.slots = wire::slots(&props).unwrap_or(1).max(1);
        }
        if engine.info.context_window == 0 {
            return Err(failed(
                &engine.options.url,
                "neither the server nor the tokenizer file says how long a sequence may be",
            ));
        }
        engine.server_model = chosen.id.clone();
        engine.info.name = chosen.id.clone();
        engine.info.fingerprint = fingerprint(&chosen.id, &engine.vocab.fingerprint());
        tracing::info!(
            url = %engine.options.url,
            api = engine.options.api.name(),
            model = %engine.server_model,
            context = engine.info.context_window,
            "connected to a remote inference server"
        );
        Ok(engine)
    }

    /// The server's model id.
    pub fn server_model(&self) -> &str {
        &self.server_model
    }

    /// The options it was connected with.
    pub fn options(&self) -> &RemoteOptions {
        &self.options
    }

    async fn get(&self, path: &str) -> Result<Value, EngineError> {
        self.send(path, None).await
    }

    /// One request, retried on a missing or transient answer; the JSON of a 200 answer.
    async fn send(&self, path: &str, body: Option<&Value>) -> Result<Value, EngineError> {
        let url = format!("{}{path}", self.options.url);
        let mut wait = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            let mut req = match body {
                Some(b) => self.client.post(&url).json(b),
                None => self.client.get(&url),
            };
            if let Some(key) = &self.options.api_key {
                req = req.bearer_auth(key);
            }
            let outcome = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.map_err(|e| failed(&url, e));
                    match text {
                        Ok(text) if status.is_success() => {
                            return serde_json::from_str(&text).map_err(|e| {
                                failed(
                                    &url,
                                    format!("the answer is not JSON ({e}): {}", clip(&text)),
                                )
                            })
                        }
                        Ok(text) => {
                            let transient = status.as_u16() == 429 || status.is_server_error();
                            let e = failed(&url, format!("HTTP {status}: {}", clip(&text)));
                            if !transient {
                                return Err(e);
                            }
                            e
                        }
                        Err(e) => e,
                    }
                }
                Err(e) => failed(&url, one_line(&e)),
            };
            if attempt >= self.options.retries {
                return Err(outcome);
            }
            attempt += 1;
            warn!(%outcome, attempt, wait_ms = wait.as_millis() as u64, "retrying the remote request");
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }

    /// The request body; `reply`: the prompt must end by asking for the model's reply.
    fn request(
        &self,
        prompt: &[u32],
        sampling: &Sampling,
        n: usize,
        reply: bool,
    ) -> Result<Value, EngineError> {
        let mut body = match self.options.api {
            RemoteApi::OpenAiChat => json!({
                "model": self.server_model,
                "messages": self.messages(prompt, reply)?,
                "max_tokens": n,
                "stream": false,
                "cache_prompt": self.options.cache_prompt,
            }),
            RemoteApi::Llama => json!({
                "prompt": prompt,
                "n_predict": n,
                "cache_prompt": self.options.cache_prompt,
                "return_tokens": true,
                "stream": false,
            }),
            RemoteApi::OpenAiCompletions => json!({
                "model": self.server_model,
                "prompt": prompt,
                "max_tokens": n,
                "stream": false,
                // Understood by llama-server and vLLM; other servers ignore them.
                "cache_prompt": self.options.cache_prompt,
                "return_token_ids": true,
            }),
        };
        let fields = match sampling.mode {
            // A one-candidate top-k is greedy on every server that has top-k.
            SamplingMode::Greedy => {
                json!({"temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0})
            }
            SamplingMode::Seeded {
                seed,
                temperature,
                top_p,
            } => json!({
                // Servers take 32-bit seeds: the two halves are folded together.
                "seed": ((seed >> 32) ^ (seed & 0xffff_ffff)) as u32,
                "temperature": temperature,
                "top_p": top_p,
                "top_k": 0,
                "min_p": 0.0,
                "repeat_penalty": 1.0,
            }),
        };
        merge(&mut body, fields);
        if let Some(grammar) = &sampling.grammar {
            let schema = match (grammar, self.options.api) {
                (g, RemoteApi::Llama) => match g {
                    state_pack_core::engine::Grammar::JsonSchema(s) => s.clone(),
                    g => g.as_json_turn().map(|(s, _)| s).ok_or_else(|| {
                        EngineError::Rejected(
                            "llama-server takes JSON Schema grammars, not Lark ones".into(),
                        )
                    })?,
                },
                (_, RemoteApi::OpenAiCompletions | RemoteApi::OpenAiChat) => {
                    return Err(EngineError::Rejected(
                        "grammars are not sent over the OpenAI APIs (servers disagree on the field): use the llama API".into(),
                    ))
                }
            };
            merge(&mut body, json!({ "json_schema": schema }));
        }
        Ok(body)
    }

    async fn complete(
        &self,
        prompt: &[u32],
        sampling: &Sampling,
        n: usize,
        reply: bool,
    ) -> Result<(Answer, Duration), EngineError> {
        let body = self.request(prompt, sampling, n, reply)?;
        let path = self.options.api.path();
        let started = Instant::now();
        let value = self.send(path, Some(&body)).await?;
        let wall = started.elapsed();
        let url = format!("{}{path}", self.options.url);
        let answer = match self.options.api {
            RemoteApi::Llama => wire::llama_answer(&value),
            RemoteApi::OpenAiCompletions => wire::openai_answer(&value),
            RemoteApi::OpenAiChat => wire::chat_answer(&value),
        }
        .map_err(|e| failed(&url, e))?;
        if let Some(m) = answer.model.as_deref().filter(|m| *m != self.server_model) {
            return Err(failed(
                &url,
                format!(
                    "answered with model {m}, not {} which the states were made with",
                    self.server_model
                ),
            ));
        }
        Ok((answer, wall))
    }

    /// The turns of `prompt` as OpenAI chat messages; with `reply`, refused unless the
    /// prompt ends with the reply prompt (a chat API generates replies only).
    fn messages(&self, prompt: &[u32], reply: bool) -> Result<Vec<Value>, EngineError> {
        let text = self.vocab.detokenize(prompt)?;
        let read = self.info.template.messages(&text).map_err(|e| {
            EngineError::Rejected(format!("the openai-chat API sends messages: {e}"))
        })?;
        if reply && !read.awaiting_reply {
            return Err(EngineError::Rejected(
                "the openai-chat API generates replies only: the state must end with the reply prompt".into(),
            ));
        }
        Ok(read
            .turns
            .iter()
            .map(|(role, content)| json!({"role": role.name(), "content": content}))
            .collect())
    }

    fn usage(&self, prompt: &[u32], a: &Answer, wall: Duration) -> EngineUsage {
        // Over chat, the server counts the prompt it rendered, in its own tokens.
        let prompt_tokens = match self.options.api {
            RemoteApi::OpenAiChat => a.prompt_tokens.unwrap_or(prompt.len()),
            _ => prompt.len(),
        };
        let (prefilled, reused, unreported) = match a.cached {
            Some(cached) => {
                let cached = cached.min(prompt_tokens);
                (
                    a.prompt_evaluated.unwrap_or(prompt_tokens - cached),
                    cached,
                    0,
                )
            }
            None => (0, 0, prompt_tokens),
        };
        EngineUsage {
            prompt_tokens,
            prefilled,
            reused,
            generated: 0,
            prefill_time: a.prompt_time.unwrap_or_default(),
            decode_time: a.decode_time.unwrap_or_default(),
            wall,
            unreported,
            retokenized: false,
        }
    }
}

/// The fingerprint of a remote model: the server's model id and the tokenizer file's
/// SHA-256, so that states made on two servers with different models never share a hash.
pub fn fingerprint(server_model: &str, tokenizer: &ModelFingerprint) -> ModelFingerprint {
    let mut h = Sha256::new();
    h.update(b"state-pack remote model v1\0");
    h.update(server_model.as_bytes());
    h.update([0]);
    h.update(tokenizer.as_bytes());
    ModelFingerprint::from_bytes(h.finalize().into())
}

fn merge(body: &mut Value, fields: Value) {
    if let (Some(b), Value::Object(f)) = (body.as_object_mut(), fields) {
        b.extend(f);
    }
}

fn clip(text: &str) -> String {
    let line = text.replace('\n', " ");
    match line.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line,
    }
}

/// reqwest's error with its causes, on one line.
fn one_line(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

#[async_trait]
impl Engine for RemoteEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn engine_name(&self) -> &'static str {
        "remote"
    }

    async fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        Ok(self.vocab.tokenize(text))
    }

    async fn detokenize(&self, tokens: &[u32]) -> Result<String, EngineError> {
        self.vocab.detokenize(tokens)
    }

    async fn prefill(&self, prompt: &[u32]) -> Result<EngineUsage, EngineError> {
        Sampling::greedy(1).check(prompt, self.info.context_window)?;
        // llama-server runs the prompt and samples nothing for n_predict 0; an OpenAI server
        // wants at least one token, which is dropped.
        let n = match self.options.api {
            RemoteApi::Llama => 0,
            RemoteApi::OpenAiCompletions | RemoteApi::OpenAiChat => 1,
        };
        let (answer, wall) = self
            .complete(prompt, &Sampling::greedy(1), n, false)
            .await?;
        let mut usage = self.usage(prompt, &answer, wall);
        if n == 0 {
            usage.decode_time = Duration::ZERO;
        }
        debug!(
            prompt = prompt.len(),
            reused = usage.reused,
            "remote prefill"
        );
        Ok(usage)
    }

    async fn generate(
        &self,
        prompt: &[u32],
        sampling: &Sampling,
    ) -> Result<Generation, EngineError> {
        sampling.check(prompt, self.info.context_window)?;
        let (answer, wall) = self
            .complete(prompt, sampling, sampling.max_tokens, true)
            .await?;
        let mut usage = self.usage(prompt, &answer, wall);
        let (mut tokens, retokenized) = match &answer.tokens {
            Some(ids) => (ids.clone(), false),
            None => (self.vocab.tokenize(&answer.text), true),
        };
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= self.vocab.len()) {
            return Err(failed(
                &self.options.url,
                format!("sampled token id {bad}, outside the tokenizer's vocabulary"),
            ));
        }
        let eot = self.end_of_turn;
        // Some answers end with the end-of-turn id (a grammar that closes the turn itself);
        // others stop on it and leave it out. The state holds it either way, as it holds
        // every token the model produced; the text never does.
        let ends_with_eot = eot.is_some() && tokens.last().copied() == eot;
        let text_len = tokens.len() - usize::from(ends_with_eot);
        let text = self.vocab.detokenize(&tokens[..text_len])?;
        let finish = if ends_with_eot {
            FinishReason::Stop
        } else if answer.stopped && tokens.len() < sampling.max_tokens {
            if let Some(eot) = eot {
                tokens.push(eot);
            }
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        if retokenized && text != answer.text {
            warn!(
                sent = %clip(&answer.text),
                rebuilt = %clip(&text),
                "the server's text does not round-trip through the tokenizer"
            );
        }
        usage.generated = tokens.len();
        usage.retokenized = retokenized;
        Ok(Generation {
            tokens,
            text,
            finish,
            usage,
        })
    }

    fn max_concurrent(&self) -> usize {
        self.slots
    }

    fn hot_prefix_len(&self, _tokens: &[u32]) -> usize {
        // What the server holds is its business: every request sends the whole context.
        0
    }

    fn remote(&self) -> Option<ReceiptRemote> {
        Some(ReceiptRemote {
            url: self.options.url.clone(),
            api: self.options.api.name().to_string(),
            model: self.server_model.clone(),
            retokenized: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_fingerprint_tells_models_and_tokenizers_apart() {
        let t1 = ModelFingerprint::from_bytes([1; 32]);
        let t2 = ModelFingerprint::from_bytes([2; 32]);
        let a = fingerprint("smollm2", &t1);
        assert_eq!(a, fingerprint("smollm2", &t1));
        assert_ne!(a, fingerprint("smollm2-b", &t1));
        assert_ne!(a, fingerprint("smollm2", &t2));
        // The separator keeps "ab" + tokenizer from colliding with "a" + "b...".
        assert_ne!(a, t1);
    }

    #[test]
    fn apis_parse_by_name() {
        for api in RemoteApi::ALL {
            assert_eq!(api.name().parse::<RemoteApi>(), Ok(api));
        }
        assert!("grpc".parse::<RemoteApi>().unwrap_err().contains("unknown"));
    }

    #[test]
    fn long_error_bodies_are_clipped_to_one_line() {
        let body = format!("line one\nline two {}", "x".repeat(500));
        let c = clip(&body);
        assert!(!c.contains('\n'));
        assert!(c.len() < 220 && c.ends_with("..."), "{c}");
    }
}
