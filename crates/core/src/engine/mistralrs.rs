//! [`MistralRsEngine`]: a local GGUF model on the CPU through mistral.rs.
//!
//! Prompts go to mistral.rs as token ids (`RequestMessage::CompletionTokens`) so that its
//! prefix cache matches byte-exactly. The figures in [`EngineUsage`] come from mistral.rs
//! itself: prefill and decode time from its `Usage`, reused tokens from the prefix-cache
//! counter our patch adds (see `vendor/README.md`), sampled ids from the same patch.
//!
//! Which token sequences are hot, and the bytes of KV they hold, come from mistral.rs's
//! prefix cache too: the patched cache publishes its entries (keyed by the tokens whose KV
//! each holds) after every change, before the request that changed it is answered, and
//! drops its oldest entries beyond a count and, if one is set, a byte limit. Each request
//! that runs alone checks the reuse those entries predict against the engine's own counter
//! and logs a warning if they ever disagree; the counter is what gets reported.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mistralrs::core::{
    AutoDeviceMapParams, DefaultSchedulerMethod, DeviceMapSetting, GGUFLoaderBuilder,
    GGUFSpecificConfig, MistralRsBuilder, ModelDType, PrefixCacheHeld, PrefixCacheShared,
    RequestMessage, SchedulerConfig, TokenSource,
};
use mistralrs::{
    Constraint, CustomLogitsProcessor, Device, Model, NormalRequest, Request, Response,
    SamplingParams,
};
use tracing::{debug, info_span, warn, Instrument};

use super::gguf::ModelFile;
use super::options::{ActivationDType, MistralRsOptions};
use super::sampler::{SeededSampler, TokenForwarder};
use super::{common_prefix, load_err};
use super::{
    Engine, EngineError, EngineUsage, FinishReason, Generation, Grammar, KvDType, ModelInfo,
    Sampling, SamplingMode, TokenSink,
};

/// The GGUF architectures mistral.rs 0.8.1's quantized loader builds a model for
/// (`pipeline/gguf.rs`).
const ARCHITECTURES: [&str; 8] = [
    "llama",
    "mistral3",
    "phi2",
    "phi3",
    "starcoder2",
    "qwen2",
    "qwen3",
    "qwen3moe",
];

/// The longest prefix of `tokens` any entry of `held` holds.
fn longest_match(held: &PrefixCacheHeld, tokens: &[u32]) -> usize {
    held.keys
        .iter()
        .map(|e| common_prefix(e, tokens))
        .max()
        .unwrap_or(0)
}

/// Tokens of `prompt` the engine will take from its cache: never the last two (see
/// `vendor/README.md`: a prompt step always runs at least two tokens).
fn predicted_reuse(held: &PrefixCacheHeld, prompt: &[u32]) -> usize {
    longest_match(held, prompt).min(prompt.len().saturating_sub(2))
}

/// A local GGUF model run by mistral.rs on the CPU.
pub struct MistralRsEngine {
    model: Model,
    info: ModelInfo,
    eos: Vec<u32>,
    /// The patched prefix cache's byte limit and what it holds.
    prefix_cache: Arc<PrefixCacheShared>,
    /// Sequences mistral.rs's scheduler runs at once ([`MistralRsOptions::max_sequences`]).
    max_sequences: usize,
    /// Requests begun, and requests running now: the predicted reuse is checked only
    /// for a request that ran alone (concurrent requests change the cache under it).
    begun: AtomicUsize,
    running: AtomicUsize,
    peak: AtomicUsize,
}

impl MistralRsEngine {
    /// Loads the GGUF file at `path`.
    ///
    /// Fails with [`EngineError::Load`] if the file is missing, unreadable, not GGUF, or a
    /// model mistral.rs cannot run.
    pub async fn load(path: &Path, options: MistralRsOptions) -> Result<Self, EngineError> {
        let file = ModelFile::open(path)?;
        let template = file.chat_template(path, options.chat_template)?;
        let ModelFile {
            meta,
            fingerprint,
            name,
        } = file;
        if let Some(arch) = meta.str("general.architecture") {
            if !ARCHITECTURES.contains(&arch) {
                return Err(load_err(
                    path,
                    format!(
                        "mistral.rs 0.8.1's GGUF loader has no `{arch}` architecture (it runs {}); the llama.cpp engine runs it",
                        ARCHITECTURES.join(", ")
                    ),
                ));
            }
        }
        super::fatal_signal::install();
        let ctx_meta = meta.arch_usize("context_length");
        let layers = meta.arch_usize("block_count");
        let embd = meta.arch_usize("embedding_length");
        let heads = meta.arch_usize("attention.head_count");
        let kv_heads = meta.arch_usize("attention.head_count_kv").or(heads);
        let (Some(layers), Some(embd), Some(heads), Some(kv_heads)) =
            (layers, embd, heads, kv_heads)
        else {
            return Err(load_err(path, "GGUF metadata lacks the attention shape (block_count, embedding_length, head_count)"));
        };
        let elem = match options.dtype {
            ActivationDType::F32 => 4,
            ActivationDType::Bf16 => 2,
        };
        let kv_bytes_per_token = layers * 2 * kv_heads * (embd / heads.max(1)) * elem;

        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let file = path
            .file_name()
            .ok_or_else(|| load_err(path, "not a file path"))?
            .to_string_lossy()
            .into_owned();
        let loader = GGUFLoaderBuilder::new(
            None,
            None,
            dir.to_string_lossy().into_owned(),
            vec![file],
            GGUFSpecificConfig { topology: None },
            false,
            None,
        )
        .build();
        let dtype = match options.dtype {
            ActivationDType::F32 => ModelDType::F32,
            ActivationDType::Bf16 => ModelDType::BF16,
        };
        let device = match options.device {
            super::Device::Cpu => Device::Cpu,
            super::Device::Cuda(n) => Device::new_cuda(n).map_err(|e| {
                load_err(
                    path,
                    format!("{} was asked for, but mistral.rs cannot open it ({e}): a CUDA build needs the cargo feature `cuda`", options.device),
                )
            })?,
            super::Device::Remote => {
                return Err(load_err(
                    path,
                    "mistral.rs runs the model in this process: a remote server is the remote engine's",
                ))
            }
        };
        // Checked before the weights load, so that a bad setting fails at once.
        let max_sequences = std::num::NonZeroUsize::new(options.max_sequences)
            .ok_or_else(|| load_err(path, "max_sequences must be at least 1"))?;
        let started = Instant::now();
        // A process-wide switch in our mistral.rs patch, read while the weights load.
        mistralrs::core::set_gguf_requantize(options.requantize_q8);
        let pipeline = loader
            .load_model_from_hf(
                None,
                TokenSource::None,
                &dtype,
                &device,
                true,
                DeviceMapSetting::Auto(AutoDeviceMapParams::default_text()),
                None,
                None,
            )
            .map_err(|e| load_err(path, format!("{e:#}")))?;
        let eos = {
            let p = pipeline.lock().await;
            p.get_metadata().eos_tok.clone()
        };
        let runner = MistralRsBuilder::new(
            pipeline,
            SchedulerConfig::DefaultScheduler {
                method: DefaultSchedulerMethod::Fixed(max_sequences),
            },
            false,
            None,
        )
        .with_no_prefix_cache(options.prefix_cache_entries == 0)
        .with_prefix_cache_n(options.prefix_cache_entries.max(1))
        .build()
        .await;
        let model = Model::new(runner);
        let prefix_cache = model
            .inner()
            .get_logger(None)
            .map_err(|e| load_err(path, format!("{e:#}")))?
            .prefix_cache();
        let max_bytes = usize::try_from(options.kv_budget_bytes).unwrap_or(usize::MAX);
        prefix_cache.set_max_bytes(max_bytes);
        let context_window = model
            .max_sequence_length()
            .ok()
            .flatten()
            .or(ctx_meta)
            .unwrap_or(2048);
        tracing::info!(
            model = %name,
            load_ms = started.elapsed().as_millis() as u64,
            context_window,
            prefix_cache_entries = options.prefix_cache_entries,
            kv_budget_bytes = options.kv_budget_bytes,
            "loaded model"
        );
        Ok(Self {
            model,
            info: ModelInfo {
                name,
                path: path.to_path_buf(),
                fingerprint,
                context_window,
                kv_bytes_per_token,
                template,
                kv_dtype: match options.dtype {
                    ActivationDType::F32 => KvDType::Float32,
                    ActivationDType::Bf16 => KvDType::BFloat16,
                },
                device: options.device,
            },
            eos,
            prefix_cache,
            max_sequences: max_sequences.get(),
            begun: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        })
    }

    /// Prompt tokens request `id` was served from the prefix cache: counted per request by
    /// our patch (`vendor/README.md`), so concurrent requests each get their own.
    fn reused_by(&self, id: usize) -> Result<usize, EngineError> {
        let logger = self
            .model
            .inner()
            .get_logger(None)
            .map_err(|e| EngineError::Failed(e.to_string()))?;
        Ok(logger.take_prefix_cache_tokens_reused(id))
    }

    /// `f` of what the prefix cache holds now.
    fn held<R>(&self, f: impl FnOnce(&PrefixCacheHeld) -> R) -> R {
        self.prefix_cache.read(f)
    }

    async fn run(
        &self,
        prompt: &[u32],
        sampling: &Sampling,
        sink: Option<TokenSink>,
    ) -> Result<Generation, EngineError> {
        sampling.check(prompt, self.info.context_window)?;
        let predicted = self.held(|h| predicted_reuse(h, prompt));
        let ticket = self.begun.fetch_add(1, Ordering::SeqCst);
        let before = self.running.fetch_add(1, Ordering::SeqCst);
        self.peak.fetch_max(before + 1, Ordering::SeqCst);
        let alone_at_start = before == 0;
        let result = self.run_one(prompt, sampling, sink).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        let alone = alone_at_start && self.begun.load(Ordering::SeqCst) == ticket + 1;
        let generation = result?;
        let reused = generation.usage.reused;
        if alone && reused != predicted {
            warn!(
                predicted,
                reused,
                "the prefix cache's entries predicted other reuse than the engine counted; reporting the engine's count"
            );
        }
        Ok(generation)
    }

    async fn run_one(
        &self,
        prompt: &[u32],
        sampling: &Sampling,
        sink: Option<TokenSink>,
    ) -> Result<Generation, EngineError> {
        let mut params = SamplingParams::deterministic();
        params.max_len = Some(sampling.max_tokens);
        let forwarder = sink.map(|sink| {
            Arc::new(TokenForwarder {
                sink,
                seen: std::sync::Mutex::new((None, 0)),
            })
        });
        let mut processors: Vec<Arc<dyn CustomLogitsProcessor>> = Vec::new();
        if let Some(f) = &forwarder {
            processors.push(f.clone());
        }
        if let SamplingMode::Seeded {
            seed,
            temperature,
            top_p,
        } = sampling.mode
        {
            processors.push(Arc::new(SeededSampler {
                seed,
                temperature,
                top_p,
                next_position: std::sync::atomic::AtomicUsize::new(prompt.len()),
            }));
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let runner = self.model.inner();
        let id = runner.next_request_id();
        let mut request = NormalRequest::new_simple(
            RequestMessage::CompletionTokens(prompt.to_vec()),
            params,
            tx,
            id,
            None,
            None,
        );
        request.return_logprobs = true;
        request.constraint = match &sampling.grammar {
            None => Constraint::None,
            Some(Grammar::JsonSchema(schema)) => Constraint::JsonSchema(schema.clone()),
            Some(Grammar::Lark(lark)) => Constraint::Lark(lark.clone()),
        };
        request.logits_processors = (!processors.is_empty()).then_some(processors);
        let sender = runner
            .get_sender(None)
            .map_err(|e| EngineError::Failed(e.to_string()))?;
        let wall = Instant::now();
        sender
            .send(Request::Normal(Box::new(request)))
            .await
            .map_err(|e| EngineError::Failed(format!("engine stopped: {e}")))?;
        let answer = rx.recv().await;
        // Taken whatever the answer, so that a failed request leaves no entry behind in the
        // patched per-request counter.
        let reused = self.reused_by(id);
        let response = match answer {
            Some(Response::CompletionDone(r)) => r,
            Some(Response::ValidationError(e)) => return Err(EngineError::Rejected(e.to_string())),
            Some(Response::InternalError(e)) => return Err(EngineError::Failed(e.to_string())),
            Some(Response::CompletionModelError(msg, _)) => return Err(EngineError::Failed(msg)),
            Some(_) => return Err(EngineError::Failed("unexpected response kind".into())),
            None => {
                return Err(EngineError::Failed(
                    "engine closed the response channel".into(),
                ))
            }
        };
        let wall = wall.elapsed();
        let reused = reused?;

        let choice = response
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::Failed("response has no choice".into()))?;
        let tokens: Vec<u32> = choice
            .logprobs
            .and_then(|l| l.content)
            .map(|c| c.iter().map(|t| t.token_id).collect())
            .unwrap_or_default();
        if tokens.len() != response.usage.completion_tokens {
            return Err(EngineError::Failed(format!(
                "engine returned {} sampled ids for {} generated tokens",
                tokens.len(),
                response.usage.completion_tokens
            )));
        }
        if let Some(f) = &forwarder {
            for t in tokens.iter().skip(f.sent()) {
                let _ = f.sink.send(*t);
            }
        }
        let finish = if choice.finish_reason == "length" {
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        let prefill_time = secs(response.usage.total_prompt_time_sec);
        let decode_time = secs(response.usage.total_completion_time_sec);
        debug!(
            prompt = prompt.len(),
            reused,
            generated = tokens.len(),
            wall_ms = wall.as_millis() as u64,
            "engine request"
        );
        Ok(Generation {
            text: choice.text,
            finish,
            usage: EngineUsage {
                prompt_tokens: prompt.len(),
                prefilled: prompt.len() - reused.min(prompt.len()),
                reused,
                generated: tokens.len(),
                prefill_time,
                decode_time,
                wall,
                unreported: 0,
                retokenized: false,
            },
            tokens,
        })
    }

    /// The most requests this engine has had running at once.
    pub fn peak_concurrency(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// The model's end-of-sequence token ids.
    pub fn eos_tokens(&self) -> &[u32] {
        &self.eos
    }
}

fn secs(s: f32) -> Duration {
    Duration::try_from_secs_f32(s.max(0.0)).unwrap_or_default()
}

#[async_trait]
impl Engine for MistralRsEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn engine_name(&self) -> &'static str {
        super::EngineKind::MistralRs.name()
    }

    async fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        self.model
            .tokenize(
                either::Either::Right(text.to_string()),
                None,
                false,
                false,
                None,
            )
            .await
            .map_err(|e| EngineError::Failed(format!("tokenize: {e}")))
    }

    async fn detokenize(&self, tokens: &[u32]) -> Result<String, EngineError> {
        self.model
            .detokenize(tokens.to_vec(), false)
            .await
            .map_err(|e| EngineError::Failed(format!("detokenize: {e}")))
    }

    async fn prefill(&self, prompt: &[u32]) -> Result<EngineUsage, EngineError> {
        // mistral.rs has no prefill-only request: sample one token from the prompt's logits
        // (no extra forward pass) and drop it. Its KV is never computed, so the cache entry
        // is exactly the prompt.
        let span = info_span!("engine.prefill", tokens = prompt.len());
        let g = self
            .run(prompt, &Sampling::greedy(1), None)
            .instrument(span)
            .await?;
        // mistral.rs answers a request that ends in its prompt step before it stamps the
        // prompt time, so its Usage says 0 s here; the request's wall time is the prefill.
        Ok(EngineUsage {
            generated: 0,
            prefill_time: g.usage.prefill_time.max(g.usage.wall),
            decode_time: Duration::ZERO,
            ..g.usage
        })
    }

    async fn generate(
        &self,
        prompt: &[u32],
        sampling: &Sampling,
    ) -> Result<Generation, EngineError> {
        let span = info_span!(
            "engine.generate",
            tokens = prompt.len(),
            max = sampling.max_tokens
        );
        self.run(prompt, sampling, None).instrument(span).await
    }

    async fn generate_streaming(
        &self,
        prompt: &[u32],
        sampling: &Sampling,
        sink: TokenSink,
    ) -> Result<Generation, EngineError> {
        let span = info_span!(
            "engine.generate",
            tokens = prompt.len(),
            max = sampling.max_tokens,
            streaming = true
        );
        self.run(prompt, sampling, Some(sink))
            .instrument(span)
            .await
    }

    fn max_concurrent(&self) -> usize {
        self.max_sequences
    }

    fn hot_prefix_len(&self, tokens: &[u32]) -> usize {
        self.held(|h| longest_match(h, tokens))
    }

    fn hot_entries(&self) -> usize {
        self.held(|h| h.keys.len())
    }

    fn hot_tokens(&self) -> usize {
        // The KV memory the cache holds, as allocated, in tokens' worth.
        self.held(|h| h.bytes) / self.info.kv_bytes_per_token.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_is_predicted_from_the_entries_held() {
        let held = PrefixCacheHeld {
            keys: vec![vec![1, 2, 3], vec![5, 6]],
            bytes: 0,
        };
        assert_eq!(predicted_reuse(&held, &[1, 2, 3, 4, 5]), 3);
        assert_eq!(predicted_reuse(&held, &[1, 2, 3, 4]), 2);
        // A prompt wholly covered still runs its last two tokens.
        assert_eq!(predicted_reuse(&held, &[1, 2, 3]), 1);
        assert_eq!(longest_match(&held, &[5, 6, 9]), 2);
        assert_eq!(longest_match(&held, &[7]), 0);
    }
}
