//! [`LlamaCppEngine`]: a local GGUF model on the CPU through llama.cpp (the `llama-cpp-2`
//! crate, cargo feature `llamacpp`).
//!
//! One llama.cpp context runs on a dedicated thread (a context borrows its model and is not
//! `Send`); requests reach it over a channel, and generations that overlap in time are
//! batched together, one per slot (continuous batching; see `worker`). The context's KV cache is
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

mod slots;
mod vocab;
mod worker;

pub use self::vocab::LlamaCppVocab;

use self::slots::Slots;
use self::worker::Worker;
use super::gguf::ModelFile;
use super::load_err;
use super::sampler::SeededSampler;
use super::{
    Engine, EngineError, EngineUsage, ExportedKv, FinishReason, Generation, Grammar, KvDType,
    ModelInfo, PromptKvRequest, Sampling, SamplingMode, TokenSink,
};

/// How a [`LlamaCppEngine`] is set up.
#[derive(Debug, Clone)]
pub struct LlamaCppOptions {
    /// Token sequences whose KV is kept (one sequence id each). `0` keeps nothing: every
    /// prompt is prefilled in full (the naive baseline of `state-pack bench`).
    pub slots: usize,
    /// CPU threads for llama.cpp; `0` means every core.
    pub threads: usize,
    /// KV cells shared by all slots; `0` means [`kv_budget_bytes`](Self::kv_budget_bytes)
    /// worth of them, or without a budget the model's training context capped at 8,192. One
    /// sequence holds at most the training context whatever the pool.
    pub context: usize,
    /// The KV memory all hot states share, in bytes (`0`: see [`context`](Self::context)):
    /// the pool gets as many cells as fit (f16 keys and values), at least one batch. When
    /// it is full the least recently used state no running generation needs is dropped.
    pub kv_budget_bytes: u64,
    /// Tokens run through the model per `llama_decode` call while prefilling.
    pub batch: usize,
    /// Flash attention: `None` lets llama.cpp decide (it enables it on CPU), `Some(on)`
    /// forces it. Without it attention spans every used cell of the shared pool, so steps
    /// slow down as other sequences stay hot; `docs/PERFORMANCE.md` has the figures.
    pub flash_attention: Option<bool>,
    /// Run the context on one ggml CPU thread pool made with it and kept for its life, as
    /// llama-server does, paused while no generation runs. Off (the default), ggml makes a
    /// pool for every `llama_decode` and joins it after. On 2 cores it made no difference to
    /// a step and slowed a restore by a few ms (`docs/PERFORMANCE.md`, section 8.3); it is
    /// meant for many-core hosts, where it is not yet measured.
    pub thread_pool: bool,
    /// The chat template; `None` recognises it from the model file.
    pub chat_template: Option<crate::template::ChatTemplate>,
    /// Where to run: the CPU (no layer offloaded), or every layer on a CUDA GPU, which
    /// needs llama.cpp's libraries built with its CUDA backend (`benches/gpu/host.sh`).
    pub device: super::Device,
}

impl Default for LlamaCppOptions {
    fn default() -> Self {
        Self {
            slots: 8,
            threads: 0,
            context: 0,
            kv_budget_bytes: 0,
            batch: super::DEFAULT_LLAMACPP_BATCH,
            flash_attention: None,
            thread_pool: false,
            chat_template: None,
            device: super::Device::Cpu,
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

/// A ggml CPU thread pool (`ggml_threadpool_new`), freed on drop.
struct ThreadPool(llama_cpp_sys_2::ggml_threadpool_t);

impl ThreadPool {
    /// `threads` threads with ggml's defaults (polling level 50, as llama-server's); `None`
    /// (logged) when ggml cannot make them.
    fn new(threads: usize) -> Option<Self> {
        // SAFETY: plain C calls; the parameters are ggml's own defaults for `threads`.
        let pool = unsafe {
            let mut params = llama_cpp_sys_2::ggml_threadpool_params_default(threads as i32);
            llama_cpp_sys_2::ggml_threadpool_new(&mut params)
        };
        if pool.is_null() {
            warn!(
                threads,
                "cannot make a CPU thread pool; llama.cpp makes one per decode"
            );
            return None;
        }
        Some(Self(pool))
    }

    /// Puts the threads to sleep until the next graph, which wakes them (ggml resumes a
    /// paused pool when it hands it work). Otherwise they poll for work for a while after
    /// each graph, as llama-server's do: on a small machine that takes a core from
    /// whatever runs between two generations (a restore's blob read, the receipt's SQLite
    /// write).
    fn pause(&self) {
        // SAFETY: a live pool (freed only on drop); ggml takes the pool's mutex.
        unsafe { llama_cpp_sys_2::ggml_threadpool_pause(self.0) }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        // SAFETY: made by ggml_threadpool_new, freed once, after the context using it.
        unsafe { llama_cpp_sys_2::ggml_threadpool_free(self.0) }
    }
}

enum Job {
    Generate {
        prompt: Vec<u32>,
        sampling: Sampling,
        sink: Option<TokenSink>,
        export: Option<PromptKvRequest>,
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
    /// `None` only while dropping.
    jobs: Option<mpsc::Sender<Job>>,
    /// The engine thread, joined on drop.
    thread: Option<std::thread::JoinHandle<()>>,
    reuse: bool,
}

impl Drop for LlamaCppEngine {
    /// Closes the job channel and waits for the engine thread to free its context. Without
    /// the wait, a process that drops its engine and exits races the thread's cleanup
    /// against the CUDA runtime's own teardown at exit, and llama.cpp aborts on
    /// "CUDA error: driver shutting down" (seen on an H100).
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                warn!("the llama.cpp engine thread panicked");
            }
        }
    }
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
        let file = ModelFile::open(path)?;
        let template = file.chat_template(path, options.chat_template)?;
        let ModelFile {
            fingerprint, name, ..
        } = file;
        super::fatal_signal::install();
        let backend = backend()?;
        let params = match options.device {
            super::Device::Cpu => LlamaModelParams::default().with_n_gpu_layers(0),
            super::Device::Remote => return Err(load_err(
                path,
                "llama.cpp runs the model in this process: a remote server is the remote engine's",
            )),
            super::Device::Cuda(n) => {
                if !backend.supports_gpu_offload() {
                    return Err(load_err(
                        path,
                        format!("{} was asked for, but this llama.cpp build has no GPU backend: build its libraries with -DGGML_CUDA=ON (benches/gpu/host.sh) and run with them", options.device),
                    ));
                }
                LlamaModelParams::default()
                    .with_n_gpu_layers(u32::MAX)
                    .with_split_mode(llama_cpp_2::model::params::LlamaSplitMode::None)
                    .with_main_gpu(i32::try_from(n).map_err(|e| load_err(path, e))?)
            }
        };
        let model =
            LlamaModel::load_from_file(backend, path, &params).map_err(|e| load_err(path, e))?;
        let model = Arc::new(model);
        let trained = model.n_ctx_train() as usize;
        let kv_heads = model.n_head_kv() as usize;
        let heads = model.n_head().max(1) as usize;
        let head_dim = model.n_embd() as usize / heads;
        // f16 keys and values.
        let kv_bytes_per_token = model.n_layer() as usize * 2 * kv_heads * head_dim * 2;
        let n_ctx = match (options.context, options.kv_budget_bytes) {
            (0, 0) => trained.clamp(1, 8192),
            (0, budget) => {
                let cells = budget / kv_bytes_per_token.max(1) as u64;
                let least = (options.batch + options.slots.max(1)) as u64;
                if cells < least {
                    return Err(load_err(
                        path,
                        format!(
                            "a KV budget of {budget} bytes holds {cells} tokens of this model ({kv_bytes_per_token} bytes each); it needs at least {least}"
                        ),
                    ));
                }
                cells.min(u32::MAX as u64) as usize
            }
            (n, _) => n,
        };
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let batch = options.batch.clamp(1, n_ctx);
        let thread_pool = options.thread_pool;

        let slots_n = options.slots.max(1);
        let slots = Arc::new(Mutex::new(Slots::new(slots_n)));
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), EngineError>>();
        let worker = Worker {
            model: Arc::clone(&model),
            slots: Arc::clone(&slots),
            reuse: options.slots > 0,
            cells: n_ctx,
            batch,
            tok_env_cache: OnceLock::new(),
            split_prompts: options.device == super::Device::Cpu,
            prompt_turn: std::cell::Cell::new(false),
            decode_from: std::cell::Cell::new(0),
        };
        let flash = match options.flash_attention {
            None => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
            Some(true) => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            Some(false) => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        };
        let ctx_params = LlamaContextParams::default()
            .with_flash_attention_policy(flash)
            .with_n_ctx(NonZeroU32::new(n_ctx as u32))
            // A full prompt chunk plus one decoding token of every other slot.
            .with_n_batch((batch + slots_n) as u32)
            .with_n_ubatch((batch + slots_n) as u32)
            .with_n_seq_max(slots_n as u32 + 1)
            .with_kv_unified(true)
            .with_n_threads(threads as i32)
            .with_n_threads_batch(threads as i32);
        let thread_path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("llama.cpp".into())
            .spawn(move || {
                // Threads that live as long as the context, as llama-server's do: without
                // them every llama_decode makes its CPU threads and joins them again.
                let pool = thread_pool.then(|| ThreadPool::new(threads)).flatten();
                let mut ctx = match worker.model.new_context(backend, ctx_params) {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        let _ = ready_tx.send(Err(load_err(&thread_path, e)));
                        return;
                    }
                };
                if let Some(pool) = &pool {
                    // SAFETY: the pool outlives the context: it was made first, so it is
                    // dropped after it on every path.
                    unsafe { ctx.attach_threadpool(pool.0, std::ptr::null_mut()) };
                }
                // One small batch through every kernel a prefill uses, before the engine
                // is handed out: a CPU that cannot run this build fails here, at load, with
                // the fatal-signal line, not in the middle of a run.
                if let Err(e) = worker.warm_up(&mut ctx) {
                    let _ = ready_tx.send(Err(load_err(&thread_path, e)));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                worker.serve(ctx, rx, pool.as_ref());
                drop(pool);
            })
            .map_err(|e| load_err(path, format!("cannot start the engine thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| load_err(path, "the engine thread stopped while starting"))??;
        tracing::info!(
            model = %name,
            load_ms = started.elapsed().as_millis() as u64,
            kv_cells = n_ctx,
            slots = options.slots,
            threads,
            "loaded model (llama.cpp)"
        );
        Ok(Self {
            info: ModelInfo {
                name,
                path: path.to_path_buf(),
                fingerprint,
                context_window: n_ctx.min(trained.max(1)),
                kv_bytes_per_token,
                template,
                // llama.cpp's default K and V cache type.
                kv_dtype: KvDType::Float16,
                device: options.device,
            },
            model,
            slots,
            jobs: Some(jobs),
            thread: Some(thread),
            reuse: options.slots > 0,
        })
    }

    async fn call<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, EngineError>>) -> Job,
    ) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .as_ref()
            .ok_or_else(|| EngineError::Failed("the llama.cpp engine is shutting down".into()))?
            .send(job(tx))
            .map_err(|_| EngineError::Failed("the llama.cpp engine thread has stopped".into()))?;
        rx.await
            .map_err(|_| EngineError::Failed("the llama.cpp engine thread has stopped".into()))?
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<(), EngineError> {
        vocab::check_tokens(&self.model, tokens)
    }
}

fn to_llama(tokens: &[u32]) -> Vec<LlamaToken> {
    // Ids were checked against the vocabulary size, which fits an i32.
    tokens.iter().map(|&t| LlamaToken(t as i32)).collect()
}

impl LlamaCppEngine {
    /// The most generations that have run at once in this engine (batched in one decode).
    pub fn peak_concurrency(&self) -> usize {
        lock(&self.slots).peak_busy()
    }

    /// The most generations that have been decoding at once in this engine (on the CPU, from
    /// 64 of them on, they take turns in calls of at most 63).
    pub fn peak_decoding(&self) -> usize {
        lock(&self.slots).peak_decoding
    }

    /// The most decode tokens one `llama_decode` call of this engine has run.
    pub fn peak_decode_batch(&self) -> usize {
        lock(&self.slots).peak_decode_batch
    }

    async fn generate_into(
        &self,
        prompt: &[u32],
        sampling: &Sampling,
        sink: Option<TokenSink>,
        export: Option<PromptKvRequest>,
    ) -> Result<Generation, EngineError> {
        sampling.check(prompt, self.info.context_window)?;
        self.check_tokens(prompt)?;
        let (prompt, sampling) = (prompt.to_vec(), sampling.clone());
        self.call(|reply| Job::Generate {
            prompt,
            sampling,
            sink,
            export,
            reply,
        })
        .await
    }
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
        Ok(vocab::tokenize(&self.model, text))
    }

    async fn detokenize(&self, tokens: &[u32]) -> Result<String, EngineError> {
        vocab::detokenize(&self.model, tokens)
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
        self.generate_into(prompt, sampling, None, None).await
    }

    async fn generate_streaming(
        &self,
        prompt: &[u32],
        sampling: &Sampling,
        sink: TokenSink,
    ) -> Result<Generation, EngineError> {
        self.generate_into(prompt, sampling, Some(sink), None).await
    }

    async fn generate_exporting(
        &self,
        prompt: &[u32],
        sampling: &Sampling,
        sink: Option<TokenSink>,
        export: PromptKvRequest,
    ) -> Result<Generation, EngineError> {
        // The worker exports right after the prompt's last chunk, before the first decode.
        self.generate_into(prompt, sampling, sink, Some(export))
            .await
    }

    fn hot_prefix_len(&self, tokens: &[u32]) -> usize {
        lock(&self.slots).longest_match(tokens).1
    }

    fn max_concurrent(&self) -> usize {
        // One generation per slot; the naive baseline (no slots kept) runs one at a time.
        if self.reuse {
            lock(&self.slots).tokens.len()
        } else {
            1
        }
    }

    fn hot_entries(&self) -> usize {
        lock(&self.slots)
            .tokens
            .iter()
            .filter(|t| !t.is_empty())
            .count()
    }

    fn hot_tokens(&self) -> usize {
        // Slots share the cells of a copied prefix (the cache is unified).
        let slots = lock(&self.slots);
        let held: Vec<&[u32]> = slots.tokens.iter().map(Vec::as_slice).collect();
        super::distinct_prefix_tokens(&held)
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
