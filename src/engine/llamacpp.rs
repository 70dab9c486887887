//! [`LlamaCppEngine`]: a local GGUF model on the CPU through llama.cpp (the `llama-cpp-2`
//! crate, cargo feature `llamacpp`).
//!
//! One llama.cpp context runs on a dedicated thread (a context borrows its model and is not
//! `Send`); requests reach it over a channel, one at a time. The context's KV cache is
//! *unified*: every sequence id shares one pool of cells, so copying a prefix from one
//! sequence to another only tags cells, it copies no tensors.
//!
//! Each of `slots` sequence ids holds one token sequence whose KV is in the cache. A prompt
//! goes to the slot holding its longest prefix: if that slot's tokens are all a prefix of
//! the prompt it is extended in place, otherwise the shared prefix is copied into the least
//! recently used slot and the prompt continues there, so a branch never destroys the
//! state it branches from. Only the tokens after the shared prefix are run through the
//! model. When the cell pool is full the least recently used slots are dropped and the
//! request retried. One more sequence id is scratch space for [`Engine::export_kv`].
//!
//! KV can leave and re-enter the cache as bytes (`llama_state_seq_get_data` /
//! `set_data`): [`Engine::export_kv`] and [`Engine::import_kv`]. The pack stores those
//! bytes as checksummed blobs (see `crate::kv_blob`), so a state survives a restart.
//!
//! Every figure in [`EngineUsage`] is what this engine did: reused tokens are the shared
//! prefix it did not run, times are measured around llama.cpp's own calls.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::DecodeError;
use llama_cpp_2::LlamaStateSeqFlags;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::TokEnv;
use llguidance::{Matcher, ParserFactory};
use tokio::sync::oneshot;
use tracing::{debug, info_span, warn, Instrument};

use super::gguf::ModelFile;
use super::sampler::SeededSampler;
use super::{common_prefix, load_err};
use super::{
    Engine, EngineError, EngineUsage, FinishReason, Generation, Grammar, ModelInfo, Sampling,
    SamplingMode,
};

/// How a [`LlamaCppEngine`] is set up.
#[derive(Debug, Clone)]
pub struct LlamaCppOptions {
    /// Token sequences whose KV is kept (one sequence id each). `0` keeps nothing: every
    /// prompt is prefilled in full (the naive baseline of `state-pack bench`).
    pub slots: usize,
    /// CPU threads for llama.cpp; `0` means every core.
    pub threads: usize,
    /// KV cells shared by all slots (the most tokens one sequence may hold); `0` means the
    /// model's training context, capped at 8,192.
    pub context: usize,
    /// Tokens run through the model per `llama_decode` call while prefilling.
    pub batch: usize,
    /// Flash attention: `None` lets llama.cpp decide (it enables it on CPU), `Some(on)`
    /// forces it. Without it attention spans every used cell of the shared pool, so steps
    /// slow down as other sequences stay hot; `docs/PERFORMANCE.md` has the figures.
    pub flash_attention: Option<bool>,
}

impl Default for LlamaCppOptions {
    fn default() -> Self {
        Self {
            slots: 8,
            threads: 0,
            context: 0,
            batch: super::DEFAULT_LLAMACPP_BATCH,
            flash_attention: None,
        }
    }
}

/// llama.cpp's backend may be initialized once per process.
fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Failed(format!("llama.cpp backend: {e}")))
}

/// What each slot's sequence holds, shared with the engine handle so that
/// [`Engine::hot_prefix_len`] needs no round trip to the worker.
#[derive(Debug, Default)]
struct Slots {
    /// Tokens whose KV each slot holds (empty: free).
    tokens: Vec<Vec<u32>>,
    /// Last use of each slot (a counter), for least-recently-used eviction.
    used: Vec<u64>,
    clock: u64,
}

impl Slots {
    fn new(n: usize) -> Self {
        Self {
            tokens: vec![Vec::new(); n],
            used: vec![0; n],
            clock: 0,
        }
    }

    fn longest_match(&self, tokens: &[u32]) -> (usize, usize) {
        self.tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (i, common_prefix(t, tokens)))
            .max_by_key(|&(i, n)| (n, self.used[i]))
            .unwrap_or((0, 0))
    }

    fn touch(&mut self, slot: usize) {
        self.clock += 1;
        self.used[slot] = self.clock;
    }

    /// A free slot, else the least recently used one, never `keep`.
    fn victim(&self, keep: Option<usize>) -> Option<usize> {
        (0..self.tokens.len())
            .filter(|&i| Some(i) != keep)
            .min_by_key(|&i| (!self.tokens[i].is_empty(), self.used[i]))
    }
}

enum Job {
    Generate {
        prompt: Vec<u32>,
        sampling: Sampling,
        reply: oneshot::Sender<Result<Generation, EngineError>>,
    },
    Export {
        tokens: Vec<u32>,
        from: usize,
        reply: oneshot::Sender<Result<Option<Vec<u8>>, EngineError>>,
    },
    Import {
        tokens: Vec<u32>,
        chunks: Vec<Vec<u8>>,
        reply: oneshot::Sender<Result<bool, EngineError>>,
    },
}

/// A local GGUF model run by llama.cpp on the CPU.
pub struct LlamaCppEngine {
    info: ModelInfo,
    model: Arc<LlamaModel>,
    slots: Arc<Mutex<Slots>>,
    jobs: mpsc::Sender<Job>,
    reuse: bool,
}

fn lock(slots: &Mutex<Slots>) -> std::sync::MutexGuard<'_, Slots> {
    // Plain data; a panic elsewhere cannot leave it half-updated.
    slots.lock().unwrap_or_else(|p| p.into_inner())
}

impl LlamaCppEngine {
    /// Loads the GGUF file at `path` and starts the engine thread.
    ///
    /// Fails with [`EngineError::Load`] if the file is missing, unreadable, not GGUF, or a
    /// model llama.cpp cannot run.
    pub async fn load(path: &Path, options: LlamaCppOptions) -> Result<Self, EngineError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::load_blocking(&path, options))
            .await
            .map_err(|e| EngineError::Failed(format!("engine loader: {e}")))?
    }

    fn load_blocking(path: &Path, options: LlamaCppOptions) -> Result<Self, EngineError> {
        let started = Instant::now();
        let ModelFile {
            fingerprint, name, ..
        } = ModelFile::open(path)?;
        super::fatal_signal::install();
        let backend = backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .map_err(|e| load_err(path, e))?;
        let model = Arc::new(model);
        let trained = model.n_ctx_train() as usize;
        let n_ctx = match options.context {
            0 => trained.clamp(1, 8192),
            n => n,
        };
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let kv_heads = model.n_head_kv() as usize;
        let heads = model.n_head().max(1) as usize;
        let head_dim = model.n_embd() as usize / heads;
        // f16 keys and values.
        let kv_bytes_per_token = model.n_layer() as usize * 2 * kv_heads * head_dim * 2;
        let batch = options.batch.clamp(1, n_ctx);

        let slots_n = options.slots.max(1);
        let slots = Arc::new(Mutex::new(Slots::new(slots_n)));
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), EngineError>>();
        let worker = Worker {
            model: Arc::clone(&model),
            slots: Arc::clone(&slots),
            reuse: options.slots > 0,
            batch,
            tok_env_cache: OnceLock::new(),
        };
        let flash = match options.flash_attention {
            None => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
            Some(true) => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            Some(false) => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        };
        let ctx_params = LlamaContextParams::default()
            .with_flash_attention_policy(flash)
            .with_n_ctx(NonZeroU32::new(n_ctx as u32))
            .with_n_batch(batch as u32)
            .with_n_ubatch(batch as u32)
            .with_n_seq_max(slots_n as u32 + 1)
            .with_kv_unified(true)
            .with_n_threads(threads as i32)
            .with_n_threads_batch(threads as i32);
        let thread_path = path.to_path_buf();
        std::thread::Builder::new()
            .name("llama.cpp".into())
            .spawn(move || {
                let mut ctx = match worker.model.new_context(backend, ctx_params) {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        let _ = ready_tx.send(Err(load_err(&thread_path, e)));
                        return;
                    }
                };
                // One small batch through every kernel a prefill uses, before the engine
                // is handed out: a CPU that cannot run this build fails here, at load, with
                // the fatal-signal line, not in the middle of a run.
                if let Err(e) = worker.warm_up(&mut ctx) {
                    let _ = ready_tx.send(Err(load_err(&thread_path, e)));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                worker.serve(ctx, rx);
            })
            .map_err(|e| load_err(path, format!("cannot start the engine thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| load_err(path, "the engine thread stopped while starting"))??;
        tracing::info!(
            model = %name,
            load_ms = started.elapsed().as_millis() as u64,
            context_window = n_ctx,
            slots = options.slots,
            threads,
            "loaded model (llama.cpp)"
        );
        Ok(Self {
            info: ModelInfo {
                name,
                path: path.to_path_buf(),
                fingerprint,
                context_window: n_ctx,
                kv_bytes_per_token,
            },
            model,
            slots,
            jobs,
            reuse: options.slots > 0,
        })
    }

    async fn call<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, EngineError>>) -> Job,
    ) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(job(tx))
            .map_err(|_| EngineError::Failed("the llama.cpp engine thread has stopped".into()))?;
        rx.await
            .map_err(|_| EngineError::Failed("the llama.cpp engine thread has stopped".into()))?
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<(), EngineError> {
        let n_vocab = self.model.n_vocab().max(0) as u32;
        match tokens.iter().find(|&&t| t >= n_vocab) {
            Some(t) => Err(EngineError::Rejected(format!(
                "token id {t} is outside the model's vocabulary of {n_vocab}"
            ))),
            None => Ok(()),
        }
    }
}

fn to_llama(tokens: &[u32]) -> Vec<LlamaToken> {
    // Ids were checked against the vocabulary size, which fits an i32.
    tokens.iter().map(|&t| LlamaToken(t as i32)).collect()
}

#[async_trait]
impl Engine for LlamaCppEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn engine_name(&self) -> &'static str {
        super::EngineKind::LlamaCpp.name()
    }

    async fn tokenize(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        Ok(self
            .model
            .vocab()
            .tokenize(text.as_bytes(), false, true)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect())
    }

    async fn detokenize(&self, tokens: &[u32]) -> Result<String, EngineError> {
        self.check_tokens(tokens)?;
        let bytes = self
            .model
            .vocab()
            .detokenize(&to_llama(tokens), false, true);
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn prefill(&self, prompt: &[u32]) -> Result<EngineUsage, EngineError> {
        // Run the prompt and sample nothing: a one-token greedy generation whose token is
        // dropped (sampling it costs no forward pass).
        let g = self
            .generate(prompt, &Sampling::greedy(1))
            .instrument(info_span!("engine.prefill", tokens = prompt.len()))
            .await?;
        Ok(EngineUsage {
            generated: 0,
            decode_time: Duration::ZERO,
            ..g.usage
        })
    }

    async fn generate(
        &self,
        prompt: &[u32],
        sampling: &Sampling,
    ) -> Result<Generation, EngineError> {
        sampling.check(prompt, self.info.context_window)?;
        self.check_tokens(prompt)?;
        let (prompt, sampling) = (prompt.to_vec(), sampling.clone());
        self.call(|reply| Job::Generate {
            prompt,
            sampling,
            reply,
        })
        .await
    }

    fn hot_prefix_len(&self, tokens: &[u32]) -> usize {
        lock(&self.slots).longest_match(tokens).1
    }

    fn hot_entries(&self) -> usize {
        lock(&self.slots)
            .tokens
            .iter()
            .filter(|t| !t.is_empty())
            .count()
    }

    fn kv_export(&self) -> bool {
        // An engine that keeps nothing (the naive baseline) has nothing worth saving.
        self.reuse
    }

    async fn export_kv(&self, tokens: &[u32], from: usize) -> Result<Option<Vec<u8>>, EngineError> {
        if from >= tokens.len() {
            return Ok(None);
        }
        let tokens = tokens.to_vec();
        self.call(|reply| Job::Export {
            tokens,
            from,
            reply,
        })
        .await
    }

    async fn import_kv(&self, tokens: &[u32], chunks: Vec<Vec<u8>>) -> Result<bool, EngineError> {
        if tokens.is_empty() || chunks.is_empty() || tokens.len() > self.info.context_window {
            return Ok(false);
        }
        self.check_tokens(tokens)?;
        let tokens = tokens.to_vec();
        self.call(|reply| Job::Import {
            tokens,
            chunks,
            reply,
        })
        .await
    }
}

/// The engine thread's side: owns the context.
struct Worker {
    model: Arc<LlamaModel>,
    slots: Arc<Mutex<Slots>>,
    reuse: bool,
    batch: usize,
    tok_env_cache: OnceLock<Result<TokEnv, String>>,
}

fn failed(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Failed(format!("llama.cpp {what}: {e}"))
}

impl Worker {
    fn serve(&self, mut ctx: LlamaContext<'_>, rx: mpsc::Receiver<Job>) {
        while let Ok(job) = rx.recv() {
            match job {
                Job::Generate {
                    prompt,
                    sampling,
                    reply,
                } => {
                    let _ = reply.send(self.generate(&mut ctx, &prompt, &sampling));
                }
                Job::Export {
                    tokens,
                    from,
                    reply,
                } => {
                    let _ = reply.send(self.export(&mut ctx, &tokens, from));
                }
                Job::Import {
                    tokens,
                    chunks,
                    reply,
                } => {
                    let _ = reply.send(self.import(&mut ctx, &tokens, &chunks));
                }
            }
        }
        debug!("llama.cpp engine thread stopped");
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        lock(&self.slots)
    }

    fn scratch_seq(&self) -> i32 {
        self.slots().tokens.len() as i32
    }

    /// Frees slot `s`'s cells and marks it empty.
    fn drop_slot(&self, ctx: &mut LlamaContext<'_>, s: usize) {
        let _ = ctx.kv_cache_seq_rm(s as i32, None, None);
        self.slots().tokens[s].clear();
    }

    /// Picks the slot `prompt` runs in and makes its sequence hold exactly the reused prefix;
    /// returns (slot, reused tokens).
    fn place(
        &self,
        ctx: &mut LlamaContext<'_>,
        prompt: &[u32],
    ) -> Result<(usize, usize), EngineError> {
        let (best, common) = self.slots().longest_match(prompt);
        // At least the last prompt token runs, for its logits.
        let reuse = if self.reuse {
            common.min(prompt.len() - 1)
        } else {
            0
        };
        let best_len = self.slots().tokens[best].len();
        // The best slot's tokens are all a prefix of the prompt: extend it in place.
        let in_place = reuse > 0 && common == best_len;
        let dest = if in_place || !self.reuse {
            best
        } else {
            self.slots().victim(Some(best)).unwrap_or(best)
        };
        if dest == best {
            ctx.kv_cache_seq_rm(dest as i32, Some(reuse as u32), None)
                .map_err(|e| failed("KV trim", e))?;
            self.slots().tokens[dest].truncate(reuse);
        } else {
            self.drop_slot(ctx, dest);
            if reuse > 0 {
                ctx.copy_kv_cache_seq(best as i32, dest as i32, Some(0), Some(reuse as u32))
                    .map_err(|e| failed("KV copy", e))?;
                self.slots().tokens[dest] = prompt[..reuse].to_vec();
            }
        }
        if !self.reuse {
            // Nothing kept between requests: the cache holds only this prompt.
            ctx.clear_kv_cache();
            self.slots().tokens[dest].clear();
        }
        self.slots().touch(dest);
        Ok((dest, reuse))
    }

    /// Decodes a batch of 32 tokens in the scratch sequence, then forgets it.
    fn warm_up(&self, ctx: &mut LlamaContext<'_>) -> Result<(), EngineError> {
        let n = 32.min(self.batch);
        let scratch = self.scratch_seq();
        let mut batch = LlamaBatch::new(n, 1);
        for i in 0..n {
            batch
                .add(LlamaToken(i as i32), i as i32, &[scratch], i + 1 == n)
                .map_err(|e| failed("batch", e))?;
        }
        decode_marked(ctx, &mut batch).map_err(|e| failed("warm-up decode", e))?;
        let _ = ctx.kv_cache_seq_rm(scratch, None, None);
        Ok(())
    }

    /// Runs `tokens` at positions `start..` of slot `seq`, asking for logits of the last one.
    /// When the cell pool is full, drops other slots (least recently used first) and retries.
    fn decode(
        &self,
        ctx: &mut LlamaContext<'_>,
        seq: usize,
        tokens: &[u32],
        start: usize,
    ) -> Result<(), EngineError> {
        let mut batch = LlamaBatch::new(self.batch, 1);
        let mut pos = start;
        for chunk in tokens.chunks(self.batch) {
            loop {
                batch.clear();
                for (i, &t) in chunk.iter().enumerate() {
                    let last = pos + i + 1 == start + tokens.len();
                    batch
                        .add(LlamaToken(t as i32), (pos + i) as i32, &[seq as i32], last)
                        .map_err(|e| failed("batch", e))?;
                }
                match decode_marked(ctx, &mut batch) {
                    Ok(()) => break,
                    Err(DecodeError::NoKvCacheSlot) => {
                        let victim = self.slots().victim(Some(seq));
                        match victim {
                            Some(v) if !self.slots().tokens[v].is_empty() => {
                                warn!(
                                    slot = v,
                                    "KV cache full: dropping the least recently used sequence"
                                );
                                self.drop_slot(ctx, v);
                            }
                            _ => {
                                return Err(EngineError::Rejected(
                                    "the prompt does not fit the KV cache".into(),
                                ))
                            }
                        }
                    }
                    Err(e) => return Err(failed("decode", e)),
                }
            }
            self.slots().tokens[seq].extend_from_slice(chunk);
            pos += chunk.len();
        }
        Ok(())
    }

    fn tok_env(&self) -> Result<TokEnv, EngineError> {
        self.tok_env_cache
            .get_or_init(|| {
                Ok(llama_cpp_2::sampling::LlamaSampler::llguidance_tok_env(
                    &self.model,
                ))
            })
            .clone()
            .map_err(EngineError::Failed)
    }

    fn matcher(&self, grammar: &Grammar) -> Result<Matcher, EngineError> {
        let env = self.tok_env()?;
        let factory = ParserFactory::new_simple(&env)
            .map_err(|e| EngineError::Failed(format!("grammar engine: {e}")))?;
        let top = match grammar {
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(schema.clone()),
            Grammar::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        };
        let parser = factory
            .create_parser(top)
            .map_err(|e| EngineError::Rejected(format!("invalid grammar: {e}")))?;
        Ok(Matcher::new(Ok(parser)))
    }

    fn generate(
        &self,
        ctx: &mut LlamaContext<'_>,
        prompt: &[u32],
        sampling: &Sampling,
    ) -> Result<Generation, EngineError> {
        let wall = Instant::now();
        let mut matcher = sampling
            .grammar
            .as_ref()
            .map(|g| self.matcher(g))
            .transpose()?;
        let (seq, reused) = self.place(ctx, prompt)?;
        let prefill_started = Instant::now();
        if let Err(e) = self.decode(ctx, seq, &prompt[reused..], reused) {
            self.drop_slot(ctx, seq);
            return Err(e);
        }
        let prefill_time = prefill_started.elapsed();
        let decode_started = Instant::now();
        let vocab = self.model.vocab();
        let seeded = match sampling.mode {
            SamplingMode::Greedy => None,
            SamplingMode::Seeded {
                seed,
                temperature,
                top_p,
            } => Some(SeededSampler {
                seed,
                temperature,
                top_p,
                next_position: Default::default(),
            }),
        };
        let mut out: Vec<u32> = Vec::new();
        let mut logits_at = (prompt.len() - reused) as i32 - 1;
        let finish = loop {
            let mut logits = ctx.get_logits_ith(logits_at % self.batch as i32).to_vec();
            if let Some(m) = matcher.as_mut() {
                let mask = m
                    .compute_mask_or_eos()
                    .map_err(|e| EngineError::Failed(format!("grammar: {e}")))?;
                for (id, l) in logits.iter_mut().enumerate() {
                    if !mask.is_allowed(id as u32) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            let pick = match &seeded {
                Some(s) => s.draw(&logits, prompt.len() + out.len()),
                None => argmax(&logits),
            } as u32;
            out.push(pick);
            if let Some(m) = matcher.as_mut() {
                if !m.is_stopped() {
                    m.consume_token(pick)
                        .map_err(|e| EngineError::Failed(format!("grammar: {e}")))?;
                }
            }
            if vocab.is_eog(LlamaToken(pick as i32)) {
                break FinishReason::Stop;
            }
            if out.len() >= sampling.max_tokens {
                break FinishReason::Length;
            }
            let pos = prompt.len() + out.len() - 1;
            if let Err(e) = self.decode(ctx, seq, &[pick], pos) {
                self.drop_slot(ctx, seq);
                return Err(e);
            }
            logits_at = 0;
        };
        let decode_time = decode_started.elapsed();
        let shown: &[u32] = if finish == FinishReason::Stop {
            &out[..out.len() - 1]
        } else {
            &out
        };
        let text =
            String::from_utf8_lossy(&vocab.detokenize(&to_llama(shown), false, true)).into_owned();
        Ok(Generation {
            text,
            finish,
            usage: EngineUsage {
                prompt_tokens: prompt.len(),
                prefilled: prompt.len() - reused,
                reused,
                generated: out.len(),
                prefill_time,
                decode_time,
                wall: wall.elapsed(),
            },
            tokens: out,
        })
    }

    /// The KV of positions `from..` of `tokens`, if a slot holds all of `tokens`.
    fn export(
        &self,
        ctx: &mut LlamaContext<'_>,
        tokens: &[u32],
        from: usize,
    ) -> Result<Option<Vec<u8>>, EngineError> {
        let (slot, common) = self.slots().longest_match(tokens);
        if tokens.is_empty() || common < tokens.len() || from >= tokens.len() {
            return Ok(None);
        }
        // Tag the range's cells with the scratch sequence too (no tensor is copied), then
        // serialize that sequence.
        let scratch = self.scratch_seq();
        let _ = ctx.kv_cache_seq_rm(scratch, None, None);
        ctx.copy_kv_cache_seq(
            slot as i32,
            scratch,
            Some(from as u32),
            Some(tokens.len() as u32),
        )
        .map_err(|e| failed("KV copy", e))?;
        let flags = LlamaStateSeqFlags::empty();
        let mut bytes = vec![0u8; ctx.state_seq_get_size_ext(scratch, flags)];
        let n = unsafe {
            // SAFETY: `bytes` has exactly the size llama.cpp just reported for this sequence.
            ctx.state_seq_get_data_ext(bytes.as_mut_ptr(), scratch, flags)
        };
        let _ = ctx.kv_cache_seq_rm(scratch, None, None);
        if n != bytes.len() {
            return Err(failed(
                "state export",
                format!("wrote {n} bytes, expected {}", bytes.len()),
            ));
        }
        Ok(Some(bytes))
    }

    /// Loads `chunks` (exported for consecutive ranges of `tokens`) into a free or least
    /// recently used slot.
    fn import(
        &self,
        ctx: &mut LlamaContext<'_>,
        tokens: &[u32],
        chunks: &[Vec<u8>],
    ) -> Result<bool, EngineError> {
        if !self.reuse {
            return Ok(false);
        }
        let Some(dest) = self.slots().victim(None) else {
            return Ok(false);
        };
        self.drop_slot(ctx, dest);
        let scratch = self.scratch_seq();
        let mut ok = true;
        for (i, chunk) in chunks.iter().enumerate() {
            // The first chunk goes straight into the slot; later ones into scratch, then their
            // cells are tagged with the slot too (loading into a sequence first clears it).
            let target = if i == 0 { dest as i32 } else { scratch };
            let loaded = unsafe {
                // SAFETY: the bytes are ones `export` produced for this model: the blob store
                // checked their SHA-256 and model fingerprint before handing them over, and
                // llama.cpp checks the layout (cell count, layers, types) as it reads and
                // returns 0 on any mismatch.
                ctx.state_seq_set_data_ext(chunk, target, LlamaStateSeqFlags::empty())
            };
            if !loaded {
                ok = false;
                break;
            }
            if target == scratch {
                ctx.copy_kv_cache_seq(scratch, dest as i32, None, None)
                    .map_err(|e| failed("KV copy", e))?;
                let _ = ctx.kv_cache_seq_rm(scratch, None, None);
            }
        }
        let (lo, hi) = (
            ctx.kv_cache_seq_pos_min(dest as i32),
            ctx.kv_cache_seq_pos_max(dest as i32),
        );
        if !ok || lo != 0 || hi + 1 != tokens.len() as i32 {
            warn!(
                ok,
                lo,
                hi,
                expected = tokens.len(),
                "KV blob did not restore; the state will be prefilled"
            );
            let _ = ctx.kv_cache_seq_rm(scratch, None, None);
            self.drop_slot(ctx, dest);
            return Ok(false);
        }
        let mut slots = self.slots();
        slots.tokens[dest] = tokens.to_vec();
        slots.touch(dest);
        Ok(true)
    }
}

fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best
}

/// `ctx.decode`, marked as engine work for the fatal-signal reporter
/// (`super::fatal_signal`), so that a signal raised inside llama.cpp says so.
fn decode_marked(ctx: &mut LlamaContext<'_>, batch: &mut LlamaBatch) -> Result<(), DecodeError> {
    let _call = super::fatal_signal::EngineCall::start();
    ctx.decode(batch)
}
