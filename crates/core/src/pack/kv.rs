//! KV blobs in the pack: exporting a state's KV before its receipt is signed, writing the
//! blob after, and loading a blob back only when the signed log vouches for its bytes.
//!
//! The blob directory is untrusted. A blob's own header carries a SHA-256 of its bytes, but
//! anyone who can write `<db>.kv/` can write a matching header; so each operation that makes
//! a blob puts the SHA-256 of the engine's bytes in its signed receipt (`kv`), and a restore
//! checks every blob of the chain against the receipt of the operation that made its state
//! (signature and key schedule included). A blob nothing vouches for is deleted, with a
//! warning, and the state is prefilled instead.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::{Restored, StatePack};
use crate::engine::{EngineError, ExportedKv, PromptKvRequest};
use crate::ledger::receipt::ReceiptKv;
use crate::state::StateHash;

/// A state's KV exported from the engine, not yet on disk.
pub(super) struct PreparedKv {
    parent: Option<StateHash>,
    start: usize,
    end: usize,
    raw: Vec<u8>,
    sha256: String,
}

impl PreparedKv {
    /// `raw`, the KV of positions `start..end` (after `parent`'s blob), with the SHA-256
    /// the receipt signs.
    fn hashed(parent: Option<StateHash>, start: usize, end: usize, raw: Vec<u8>) -> Self {
        let sha256 = hex::encode(Sha256::digest(&raw));
        Self {
            parent,
            start,
            end,
            raw,
            sha256,
        }
    }

    /// What the operation's receipt says about this blob.
    pub(super) fn receipt(&self) -> ReceiptKv {
        ReceiptKv {
            sha256: self.sha256.clone(),
            start: self.start as u64,
            end: self.end as u64,
            parent: self.parent,
        }
    }
}

/// An infer's prompt KV, asked of the engine with the generation
/// ([`crate::engine::Engine::generate_exporting`]): the engine exports it as soon as the
/// prompt is in and [`hash`](Self::hash) hashes it while the engine decodes, so the step
/// does not wait for the SHA-256 after its last token. The blob then ends where the prompt
/// does; a restore prefills the generated tail.
pub(super) struct PromptExport {
    reply: tokio::sync::oneshot::Receiver<Result<Option<ExportedKv>, EngineError>>,
    parent: Option<StateHash>,
    start: usize,
    end: usize,
}

/// The result of a [`PromptExport`]: the blob ready for the receipt, and when it was.
pub(super) struct EarlyKv {
    pub(super) prepared: PreparedKv,
    /// What the operation waited for it: the engine's export (between its prefill and its
    /// decode), and the hashing that outlasted the generation
    /// ([`waited_from`](Self::waited_from)).
    pub(super) save: Duration,
    ready: Instant,
}

impl EarlyKv {
    /// Adds to [`save`](Self::save) the hashing still running when the generation ended at
    /// `generated`.
    pub(super) fn waited_from(mut self, generated: Instant) -> Self {
        self.save += self.ready.saturating_duration_since(generated);
        self
    }
}

impl PromptExport {
    /// Waits for the engine's export and hashes it on a blocking thread. `None` when the
    /// engine exported nothing or failed (logged): a missing blob only costs a prefill later.
    pub(super) async fn hash(self) -> Option<EarlyKv> {
        let exported = match self.reply.await {
            Ok(Ok(Some(exported))) => exported,
            // No export, or the generation failed before its prompt was in.
            Ok(Ok(None)) | Err(_) => return None,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot export the prompt's KV");
                return None;
            }
        };
        let ExportedKv { raw, time } = exported;
        let hashing = Instant::now();
        let (parent, start, end) = (self.parent, self.start, self.end);
        let hashed =
            tokio::task::spawn_blocking(move || PreparedKv::hashed(parent, start, end, raw)).await;
        let prepared = match hashed {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "KV hashing failed");
                return None;
            }
        };
        debug!(
            bytes = prepared.raw.len(),
            start,
            end,
            export_us = time.as_micros() as u64,
            sha256_us = hashing.elapsed().as_micros() as u64,
            "exported the prompt's KV"
        );
        Some(EarlyKv {
            prepared,
            save: time,
            ready: Instant::now(),
        })
    }
}

impl StatePack {
    /// The request for the KV of an infer's prompt (`input`'s tokens, `prompt_len` with the
    /// delta) to pass to the engine with its generation, if blobs are kept: from where the
    /// input state's blob ends, or from 0 when it has none.
    pub(super) fn prompt_export(
        &self,
        input: &StateHash,
        prompt_len: usize,
    ) -> Option<(PromptKvRequest, PromptExport)> {
        let blobs = self.blobs.as_ref()?;
        let (parent, start) = match blobs.end_of(input) {
            Some(e) if e < prompt_len => (Some(*input), e),
            _ => (None, 0),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        Some((
            PromptKvRequest {
                from: start,
                reply: tx,
            },
            PromptExport {
                reply: rx,
                parent,
                start,
                end: prompt_len,
            },
        ))
    }

    /// The KV of state `hash` (tokens `tokens`), if blobs are kept, the engine holds the
    /// state and no blob exists yet. When `parent` (a state whose tokens begin `tokens`) has
    /// a blob, only the positions after it are exported. Failures are logged, never
    /// returned: a missing blob only costs a prefill later.
    pub(super) async fn export_kv(
        &self,
        hash: &StateHash,
        tokens: &[u32],
        parent: Option<&StateHash>,
    ) -> Option<PreparedKv> {
        let blobs = self.blobs.as_ref()?;
        if blobs.contains(hash) {
            return None;
        }
        let end = self.engine.hot_prefix_len(tokens);
        if end == 0 || end + 1 < tokens.len() {
            return None;
        }
        let (parent, start) = match parent.and_then(|p| Some((p, blobs.end_of(p)?))) {
            Some((p, e)) if e < end => (Some(*p), e),
            _ => (None, 0),
        };
        let exporting = Instant::now();
        match self.engine.export_kv(&tokens[..end], start).await {
            Ok(Some(raw)) => {
                let exported = exporting.elapsed();
                let hashing = Instant::now();
                let prepared = PreparedKv::hashed(parent, start, end, raw);
                debug!(
                    state = %hash.short(),
                    bytes = prepared.raw.len(),
                    export_us = exported.as_micros() as u64,
                    sha256_us = hashing.elapsed().as_micros() as u64,
                    "exported KV"
                );
                Some(prepared)
            }
            Ok(None) => None,
            Err(e) => {
                warn!(state = %hash.short(), error = %e, "cannot export KV");
                None
            }
        }
    }

    /// Queues `kv` as the blob of state `hash`, once its receipt is committed: the store's
    /// writer thread puts it on disk while the caller goes on (see [`crate::kv_blob`]).
    pub(super) async fn write_kv(&self, hash: &StateHash, kv: PreparedKv) {
        let Some(blobs) = self.blobs.clone() else {
            return;
        };
        let model = self.engine.info().fingerprint;
        let key = *hash;
        let put = move || {
            let range = kv.start..kv.end;
            blobs.put_behind(&key, &model, kv.parent.as_ref(), range, kv.raw, kv.sha256)
        };
        // Off the runtime's threads: queuing blocks while the writer is behind.
        match tokio::task::spawn_blocking(put).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(state = %hash.short(), error = %e, "cannot write KV blob"),
            Err(e) => warn!(error = %e, "KV blob writer failed"),
        }
    }

    /// Loads the KV blobs of `state` (whose tokens are `tokens`) into the engine if the
    /// engine does not hold the state, its blob chain exists and the log vouches for every
    /// blob in it. Never fails: a missing, unreadable, corrupt or unvouched blob (the last
    /// two are deleted) means the state is prefilled as usual.
    pub(super) async fn restore_kv(&self, state: &StateHash, tokens: &[u32]) -> Restored {
        let none = Restored::default();
        let Some(blobs) = self.blobs.clone() else {
            return none;
        };
        if tokens.is_empty() || self.is_hot(tokens) || !blobs.contains(state) {
            return none;
        }
        let started = Instant::now();
        let model = self.engine.info().fingerprint;
        let key = *state;
        let read = tokio::task::spawn_blocking(move || blobs.chain(&key, &model)).await;
        let chain = match read {
            Ok(Ok(Some(chain))) => chain,
            Ok(Ok(None)) => return none,
            Ok(Err(e)) => {
                warn!(state = %state.short(), error = %e, "KV blob unusable: deleting the state's blob and prefilling it");
                self.forget_blob(state);
                return none;
            }
            Err(e) => {
                warn!(error = %e, "KV blob reader failed");
                return none;
            }
        };
        // The chain runs from its root to `state`: each blob's parent is the state of the one
        // before it, so blob i belongs to blob i + 1's parent, and the last to `state`.
        let owners: Option<Vec<StateHash>> = chain
            .iter()
            .skip(1)
            .map(|b| b.parent)
            .chain([Some(*state)])
            .collect();
        let Some(owners) = owners else {
            warn!(state = %state.short(), "KV blob chain is broken; prefilling");
            return none;
        };
        let vouched = match self.store().vouched_kv(&owners) {
            Ok(v) => v,
            Err(e) => {
                warn!(state = %state.short(), error = %e, "cannot check the KV blobs against the log; prefilling");
                return none;
            }
        };
        // From `state` back to the root, as the chain was read.
        for ((blob, owner), vouched) in chain.iter().zip(&owners).zip(vouched).rev() {
            let seen = ReceiptKv {
                sha256: blob.sha256.clone(),
                start: blob.start as u64,
                end: blob.end as u64,
                parent: blob.parent,
            };
            if vouched.as_ref() != Some(&seen) {
                warn!(
                    state = %owner.short(),
                    vouched = vouched.is_some(),
                    "KV blob not vouched for by the signed log: deleting it and prefilling"
                );
                self.forget_blob(owner);
                return none;
            }
        }
        let end = chain.last().map_or(0, |b| b.end);
        if end == 0 || end > tokens.len() {
            warn!(state = %state.short(), end, "KV blob does not fit its state; prefilling");
            return none;
        }
        let parts = chain.len();
        let chunks = chain.into_iter().map(|b| b.raw).collect();
        match self.engine.import_kv(&tokens[..end], chunks).await {
            Ok(true) => {
                let restored = Restored {
                    tokens: end,
                    time: started.elapsed(),
                };
                debug!(state = %state.short(), tokens = end, parts, ms = restored.time.as_millis() as u64, "state restored from its KV blobs");
                restored
            }
            Ok(false) => none,
            Err(e) => {
                warn!(state = %state.short(), error = %e, "engine could not load the KV blobs; prefilling");
                none
            }
        }
    }

    fn forget_blob(&self, state: &StateHash) {
        if let Some(b) = &self.blobs {
            let _ = b.remove(state);
        }
    }
}
