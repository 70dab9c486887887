//! [`StatePack`]: immutable token states over one engine, persisted in SQLite.
//!
//! Every operation (create, merge, infer, compact) makes a new state and reports what the engine really did for it: tokens
//! prefilled, tokens reused from the engine's prefix cache, tokens generated, and how long the
//! engine and the pack itself took. Nothing here estimates a saving; the numbers come from the
//! engine's own counters and clocks.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info_span, warn, Instrument};

use crate::engine::{Engine, EngineUsage, FinishReason, Sampling, TokenSink};
use crate::kv_blob::{KvBlobStore, DEFAULT_BUDGET_BYTES};
use crate::ledger::{self, receipt::ReceiptKv};
use crate::state::{DeltaHash, StateHash};
mod base;
mod continuation;
mod flight;
mod kv;
mod replay;
mod report;

pub use self::continuation::Continuation;
pub use self::report::{Inference, Measured, OpReport, PackError, StateView, Timings, Tokens};
use crate::store::{OpKind, OperationRecord, OperationTotals, Store, StoredState};

/// Immutable token states over one engine, persisted in a [`Store`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use state_pack_core::engine::{MistralRsEngine, MistralRsOptions, Sampling};
/// use state_pack_core::ledger::{default_key_path, Signer};
/// use state_pack_core::{StatePack, Store};
///
/// // A local GGUF (`state-pack model fetch` puts the default one in the cache).
/// let path = std::path::Path::new("SmolLM2-135M-Instruct-Q4_1.gguf");
/// let engine = MistralRsEngine::load(path, MistralRsOptions::default()).await?;
/// let (key, _) = Signer::load_or_create(&default_key_path())?;
/// let pack = StatePack::new(Arc::new(engine), Store::open("agent.db".as_ref(), key)?);
/// let base = pack.create("<|im_start|>system\nYou are terse.<|im_end|>\n").await?;
/// let step = pack
///     .infer(&base.output, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", &Sampling::greedy(8))
///     .await?;
/// println!("{} (prefilled {}, reused {})", step.text, step.report.tokens.prefilled, step.report.tokens.reused);
/// # Ok(()) }
/// ```
pub struct StatePack {
    engine: Arc<dyn Engine>,
    store: Mutex<Store>,
    blobs: Option<KvBlobStore>,
    /// Identical operations in flight (single flight).
    flights: flight::Flights,
}

struct Outcome {
    usage: EngineUsage,
    engine_called: bool,
    /// KV loaded from a blob before the engine ran: tokens, and time it took.
    restored: Restored,
    /// The output state's blob, exported and hashed while the engine generated (infer).
    kv: Option<kv::EarlyKv>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Restored {
    tokens: usize,
    time: Duration,
}

impl StatePack {
    /// A pack over `engine`, persisting into `store`.
    ///
    /// When the engine can export KV ([`Engine::kv_export`]) and the store is on disk, every
    /// state the engine computes is also written as a KV blob to `<database>.kv/` (see
    /// [`crate::kv_blob`]), and a state the engine no longer holds is loaded from its blob
    /// instead of being prefilled again; [`with_kv_blobs`](Self::with_kv_blobs) changes that.
    pub fn new(engine: Arc<dyn Engine>, store: Store) -> Self {
        let blobs = match store.path() {
            Some(db) if engine.kv_export() => {
                let dir = KvBlobStore::dir_for_database(db);
                KvBlobStore::open(&dir, DEFAULT_BUDGET_BYTES)
                    .map_err(|e| warn!(error = %e, "KV blobs disabled"))
                    .ok()
            }
            _ => None,
        };
        Self {
            engine,
            store: Mutex::new(store),
            blobs,
            flights: flight::Flights::default(),
        }
    }

    /// The same pack with KV blobs kept in `blobs`, or with none (`None`: states the engine
    /// no longer holds are prefilled again).
    pub fn with_kv_blobs(mut self, blobs: Option<KvBlobStore>) -> Self {
        self.blobs = blobs.filter(|_| self.engine.kv_export());
        self
    }

    /// Where KV blobs are kept, if they are.
    pub fn kv_blobs(&self) -> Option<&KvBlobStore> {
        self.blobs.as_ref()
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back), so a poisoned lock is still safe to use.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Totals over every operation in the store (this process's and earlier ones').
    pub fn totals(&self) -> Result<OperationTotals, PackError> {
        Ok(self.store().totals()?)
    }

    /// The output state of the latest recorded operation.
    pub fn latest_state(&self) -> Result<Option<StateHash>, PackError> {
        Ok(self.store().latest_output()?)
    }

    /// The database file, if the store is on disk.
    pub fn db_path(&self) -> Option<std::path::PathBuf> {
        self.store().path().map(|p| p.to_path_buf())
    }

    /// A new connection to the pack's database, for a part that keeps its own (graph
    /// checkpoints); `None` when the store is in memory.
    pub fn connect_again(
        &self,
    ) -> Option<Result<crate::ledger::sql::Db, crate::store::StoreError>> {
        self.store().connect_again()
    }

    /// Runs `f` on the store (for the ledger: checkpoints, key rotation, receipts). Pack
    /// operations wait while it runs.
    pub fn with_store<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        f(&mut self.store())
    }

    /// Clean shutdown: waits for the KV blobs still queued, and writes a signed checkpoint
    /// covering every receipt so far.
    pub fn close(&self) -> Result<(), PackError> {
        if let Some(blobs) = &self.blobs {
            blobs.flush();
        }
        self.store().checkpoint()?;
        Ok(())
    }

    fn load(&self, hash: &StateHash) -> Result<StoredState, PackError> {
        let s = self
            .store()
            .state(hash)?
            .ok_or(PackError::UnknownState(*hash))?;
        let engine_model = self.engine.info().fingerprint;
        if s.model != engine_model {
            return Err(PackError::WrongModel {
                state: *hash,
                state_model: s.model,
                engine_model,
            });
        }
        Ok(s)
    }

    /// The tokens of state `hash`.
    pub fn tokens(&self, hash: &StateHash) -> Result<Vec<u32>, PackError> {
        Ok(self.load(hash)?.tokens)
    }

    /// What is known of state `hash`.
    pub fn state(&self, hash: &StateHash) -> Result<StateView, PackError> {
        let s = self.load(hash)?;
        Ok(StateView {
            hash: s.hash,
            tokens: s.tokens.len(),
            hot: self.is_hot(&s.tokens),
            kv_bytes: s.tokens.len() * self.engine.info().kv_bytes_per_token,
            parent: s.parent,
            op: s.op,
        })
    }

    /// The engine holds the KV of all of `tokens` but at most the last.
    fn is_hot(&self, tokens: &[u32]) -> bool {
        !tokens.is_empty() && self.engine.hot_prefix_len(tokens) + 1 >= tokens.len()
    }

    /// The engine holds the KV of every one of `tokens`: nothing to prefill.
    fn is_fully_cached(&self, tokens: &[u32]) -> bool {
        !tokens.is_empty() && self.engine.hot_prefix_len(tokens) == tokens.len()
    }

    fn check_window(&self, needed: usize) -> Result<(), PackError> {
        let window = self.engine.info().context_window;
        if needed > window {
            return Err(PackError::ContextOverflow { needed, window });
        }
        Ok(())
    }

    /// Makes the engine hold `tokens`, unless it already does. `source` is a state whose
    /// tokens begin `tokens` (the input state, or for create and compact the output state
    /// itself): if the engine does not hold it but its KV blob exists, the blob is loaded
    /// first and only the rest is prefilled.
    async fn make_hot(
        &self,
        tokens: &[u32],
        source: (&StateHash, usize),
    ) -> Result<Outcome, PackError> {
        let restored = self.restore_kv(source.0, &tokens[..source.1]).await;
        if self.is_fully_cached(tokens) {
            return Ok(Outcome {
                usage: EngineUsage {
                    prompt_tokens: 0,
                    reused: tokens.len(),
                    ..EngineUsage::default()
                },
                engine_called: false,
                restored,
                kv: None,
            });
        }
        Ok(Outcome {
            usage: self.engine.prefill(tokens).await?,
            engine_called: true,
            restored,
            kv: None,
        })
    }

    /// `state ++ delta_text`: the delta is tokenized on its own and appended, never
    /// re-rendered together with the old tokens, so the engine prefills only the delta.
    pub async fn merge(&self, state: &StateHash, delta_text: &str) -> Result<OpReport, PackError> {
        let delta = self.engine.tokenize(delta_text).await?;
        self.merge_tokens(state, &delta).await
    }

    /// [`merge`](Self::merge) with an already tokenized delta.
    pub async fn merge_tokens(
        &self,
        state: &StateHash,
        delta: &[u32],
    ) -> Result<OpReport, PackError> {
        let span = info_span!("pack.merge", state = %state.short(), delta = delta.len());
        async {
            let started = Instant::now();
            let Extension {
                tokens,
                input_was_hot,
                overhead,
            } = self.extend(state, delta, 1, started)?;
            let parent_len = tokens.len() - delta.len();
            let outcome = self.make_hot(&tokens, (state, parent_len)).await?;
            self.commit(Pending {
                op: OpKind::Merge,
                input: Some(*state),
                input_was_hot,
                tokens,
                delta: delta.len(),
                delta_hash: DeltaHash::of(&self.engine.info().fingerprint, delta),
                outcome,
                output_text: None,
                policy: None,
                sampling: None,
                replay_of: None,
                started,
                overhead,
            })
            .await
        }
        .instrument(span)
        .await
    }

    /// `state ++ delta_text ++ generated`: prefills the delta (the whole state too, if the
    /// engine no longer holds it) and generates under `sampling`.
    pub async fn infer(
        &self,
        state: &StateHash,
        delta_text: &str,
        sampling: &Sampling,
    ) -> Result<Inference, PackError> {
        let delta = self.engine.tokenize(delta_text).await?;
        self.infer_tokens(state, &delta, sampling).await
    }

    /// [`infer`](Self::infer) with an already tokenized delta.
    pub async fn infer_tokens(
        &self,
        state: &StateHash,
        delta: &[u32],
        sampling: &Sampling,
    ) -> Result<Inference, PackError> {
        self.infer_into(state, delta, sampling, None).await
    }

    /// [`infer_tokens`](Self::infer_tokens), sending each generated id to `sink` as the
    /// engine samples it ([`Engine::generate_streaming`]).
    pub async fn infer_tokens_streaming(
        &self,
        state: &StateHash,
        delta: &[u32],
        sampling: &Sampling,
        sink: TokenSink,
    ) -> Result<Inference, PackError> {
        self.infer_into(state, delta, sampling, Some(sink)).await
    }

    async fn infer_into(
        &self,
        state: &StateHash,
        delta: &[u32],
        sampling: &Sampling,
        sink: Option<TokenSink>,
    ) -> Result<Inference, PackError> {
        let span = info_span!("pack.infer", state = %state.short(), delta = delta.len());
        async {
            let started = Instant::now();
            let Extension {
                mut tokens,
                input_was_hot,
                overhead,
            } = self.extend(state, delta, sampling.max_tokens, started)?;
            let restored = self
                .restore_kv(state, &tokens[..tokens.len() - delta.len()])
                .await;
            let (generation, kv) = match self.prompt_export(state, tokens.len()) {
                // The prompt's KV is hashed while the engine decodes.
                Some((request, export)) => {
                    let generate = async {
                        let generation = self
                            .engine
                            .generate_exporting(&tokens, sampling, sink, request)
                            .await;
                        (generation, Instant::now())
                    };
                    let ((generation, generated), kv) = tokio::join!(generate, export.hash());
                    (generation?, kv.map(|kv| kv.waited_from(generated)))
                }
                None => match sink {
                    Some(sink) => (
                        self.engine
                            .generate_streaming(&tokens, sampling, sink)
                            .await?,
                        None,
                    ),
                    None => (self.engine.generate(&tokens, sampling).await?, None),
                },
            };
            tokens.extend_from_slice(&generation.tokens);
            let outcome = Outcome {
                usage: generation.usage,
                engine_called: true,
                restored,
                kv,
            };
            let report = self
                .commit(Pending {
                    op: OpKind::Infer,
                    input: Some(*state),
                    input_was_hot,
                    tokens,
                    delta: delta.len(),
                    delta_hash: DeltaHash::of(&self.engine.info().fingerprint, delta),
                    outcome,
                    output_text: Some(generation.text.clone()),
                    policy: None,
                    sampling: Some((sampling_record(sampling)?, generation.finish)),
                    replay_of: None,
                    started,
                    overhead,
                })
                .await?;
            Ok(Inference {
                text: generation.text,
                generated: generation.tokens,
                finish: generation.finish,
                report,
            })
        }
        .instrument(span)
        .await
    }

    /// `state ++ delta`, checked: the delta is not empty, the state exists on this model, and
    /// `room` more tokens still fit the context window.
    fn extend(
        &self,
        state: &StateHash,
        delta: &[u32],
        room: usize,
        started: Instant,
    ) -> Result<Extension, PackError> {
        if delta.is_empty() {
            return Err(PackError::EmptyDelta);
        }
        let parent = self.load(state)?;
        let overhead = started.elapsed();
        let input_was_hot = self.is_hot(&parent.tokens);
        let mut tokens = parent.tokens;
        tokens.extend_from_slice(delta);
        self.check_window(tokens.len() + room)?;
        Ok(Extension {
            tokens,
            input_was_hot,
            overhead,
        })
    }

    /// [`record`](Self::record), with the output state's KV blob if the engine computed it:
    /// the KV is exported first so that its SHA-256 is in the signed receipt (an infer's was
    /// exported with its prompt and hashed during the decode), and written after the receipt
    /// is committed (see [`kv`]).
    async fn commit(&self, mut p: Pending) -> Result<OpReport, PackError> {
        let started = Instant::now();
        let hash = StateHash::of(&self.engine.info().fingerprint, &p.tokens);
        let (prepared, export) = if let Some(early) = p.outcome.kv.take() {
            // Exported before the decode and hashed during it: the step waited for the
            // export, and for the hash only where it outlasted the generation.
            let fresh = self.blobs.as_ref().is_some_and(|b| !b.contains(&hash));
            (fresh.then_some(early.prepared), early.save)
        } else if p.outcome.engine_called {
            // Merge and infer extend their input: its blob holds the start of this one.
            let parent = match p.op {
                OpKind::Merge | OpKind::Infer => p.input,
                _ => None,
            };
            let prepared = self.export_kv(&hash, &p.tokens, parent.as_ref()).await;
            // Nothing exported (no blobs kept, or one exists): nothing saved.
            let export = match prepared {
                Some(_) => started.elapsed(),
                None => Duration::ZERO,
            };
            (prepared, export)
        } else {
            (None, Duration::ZERO)
        };
        let (mut report, _) =
            self.record(p, hash, prepared.as_ref().map(kv::PreparedKv::receipt))?;
        let mut queued = Duration::ZERO;
        if let Some(prepared) = prepared {
            let started = Instant::now();
            self.write_kv(&report.output, prepared).await;
            // The caller waited for the blob's queuing too: it belongs in the operation's
            // time. The export ran before `record`, so `total` holds it already.
            queued = started.elapsed();
            report.timings.total += queued;
        }
        report.timings.save = export + queued;
        Ok(report)
    }

    /// Hashes and stores the output state with its operation, and builds the report; gives
    /// back the output state's tokens.
    fn record(
        &self,
        p: Pending,
        hash: StateHash,
        kv: Option<ReceiptKv>,
    ) -> Result<(OpReport, Vec<u32>), PackError> {
        let pack_work = Instant::now();
        let model = self.engine.info().fingerprint;
        let usage = p.outcome.usage;
        // Never claim more restored tokens than the engine reused.
        let restored = p.outcome.restored.tokens.min(usage.reused);
        let restore = if restored > 0 {
            p.outcome.restored.time
        } else {
            Duration::ZERO
        };
        let remote = self.engine.remote();
        let measured = Measured {
            tokens: Tokens {
                delta: p.delta as u64,
                state: p.tokens.len() as u64,
                prefilled: usage.prefilled as u64,
                reused: usage.reused as u64,
                generated: usage.generated as u64,
                restored: restored as u64,
                unreported: usage.unreported as u64,
            },
            // The stored total cannot include its own write; the report's does.
            timings: ledger::measured::Timings::new(
                usage.prefill_time,
                usage.decode_time,
                p.started.elapsed(),
                (restored > 0).then_some(restore),
            ),
        };
        let stored = StoredState {
            hash,
            model,
            parent: p.input,
            op: p.op,
            tokens: p.tokens,
        };
        let record = OperationRecord {
            // What a remote server held is its business, not the pack's to claim.
            input_was_hot: p
                .input
                .filter(|_| remote.is_none())
                .map(|_| p.input_was_hot),
            policy: p.policy,
            prompt_tokens: usage.prompt_tokens,
            output_text: p.output_text,
            sampling: p.sampling.as_ref().map(|(s, _)| s.clone()),
            finish: p.sampling.as_ref().map(|(_, f)| *f),
            replay_of: p.replay_of,
            kv,
            remote: remote.map(|r| ledger::ReceiptRemote {
                retokenized: usage.retokenized,
                ..r
            }),
            ..OperationRecord::new(p.op, p.input, hash, p.delta_hash, measured)
        };
        let recorded = self.store().record(&stored, &record)?;
        let report = OpReport {
            seq: recorded.operation,
            receipt: recorded.receipt,
            op: p.op,
            input: p.input,
            output: hash,
            input_was_hot: p.input_was_hot,
            engine_called: p.outcome.engine_called,
            replay_of: p.replay_of,
            tokens: measured.tokens,
            timings: Timings {
                prefill: usage.prefill_time,
                decode: usage.decode_time,
                restore,
                save: Duration::ZERO,
                overhead: p.overhead + pack_work.elapsed(),
                total: p.started.elapsed(),
            },
        };
        Ok((report, stored.tokens))
    }
}

/// Sampling parameters as recorded in receipts and keying replays.
fn sampling_record(sampling: &Sampling) -> Result<serde_json::Value, PackError> {
    serde_json::to_value(sampling).map_err(|e| PackError::InvalidParameters(e.to_string()))
}

/// A parent state's tokens with a delta appended, before the engine runs.
struct Extension {
    tokens: Vec<u32>,
    input_was_hot: bool,
    /// Pack work so far (loading the parent).
    overhead: Duration,
}

/// An operation whose engine work is done, waiting to be hashed and stored.
struct Pending {
    op: OpKind,
    input: Option<StateHash>,
    input_was_hot: bool,
    tokens: Vec<u32>,
    delta: usize,
    delta_hash: DeltaHash,
    outcome: Outcome,
    output_text: Option<String>,
    /// Compaction parameters (compact only).
    policy: Option<serde_json::Value>,
    /// Sampling parameters and why generation stopped (infer only).
    sampling: Option<(serde_json::Value, FinishReason)>,
    /// The receipt a replayed infer repeats.
    replay_of: Option<u64>,
    started: Instant,
    /// Pack work before the commit (loading the input state).
    overhead: Duration,
}
