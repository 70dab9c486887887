//! What pack operations answer: their reports, with the figures the engine measured, and
//! their errors.

use std::time::Duration;

use serde::Serialize;

use crate::engine::{EngineError, FinishReason};
pub use crate::ledger::measured::{Measured, Tokens};
use crate::ledger::ReceiptRef;
use crate::state::{ModelFingerprint, StateHash};
use crate::store::{OpKind, StoreError};

/// Errors from pack operations. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// No state with this hash in the store.
    #[error("unknown state {0}: it is not in this database (check the hash and --db)")]
    UnknownState(StateHash),
    /// The state was made on another model.
    #[error("state {state} belongs to model {state_model}, but the engine runs {engine_model}: pass the matching --model")]
    WrongModel {
        /// The state.
        state: StateHash,
        /// Its model.
        state_model: ModelFingerprint,
        /// The engine's.
        engine_model: ModelFingerprint,
    },
    /// A base text that tokenizes to nothing.
    #[error("empty base text: a state needs at least one token")]
    EmptyBase,
    /// A delta that tokenizes to nothing.
    #[error("empty delta: merge and infer append at least one token")]
    EmptyDelta,
    /// The result would not fit the model's context window.
    #[error("{needed} tokens would exceed the model's context window of {window}: compact the state or start from a shorter base")]
    ContextOverflow {
        /// Tokens the operation needs (including room to generate).
        needed: usize,
        /// The window.
        window: usize,
    },
    /// Parameters that make no sense (a compaction policy, a strategy).
    #[error("invalid parameters: {0}")]
    InvalidParameters(String),
    /// A caller's view of a state disagrees with the store (a bug in the caller; nothing
    /// was written).
    #[error("inconsistent state {state}: {reason}")]
    Inconsistent {
        /// The state.
        state: StateHash,
        /// What disagrees.
        reason: String,
    },
    /// A conversation the model's chat template cannot express.
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Time spent in one operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Engine prefill time, as the engine measured it.
    pub prefill: Duration,
    /// Engine decode time, as the engine measured it.
    pub decode: Duration,
    /// Time spent reading a KV blob and loading it into the engine.
    pub restore: Duration,
    /// Time spent exporting the output state's KV from the engine and writing its blob.
    /// Part of `total`; not in the receipt, which is signed before the blob is written.
    pub save: Duration,
    /// The pack's own work: hashing and SQLite reads and writes.
    pub overhead: Duration,
    /// Wall time of the whole operation.
    pub total: Duration,
}

/// What one operation did.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    /// Operation number in the store's operations table.
    pub seq: u64,
    /// The signed receipt written with it.
    pub receipt: ReceiptRef,
    /// The operation.
    pub op: OpKind,
    /// Input state.
    pub input: Option<StateHash>,
    /// Output state.
    pub output: StateHash,
    /// Whether the input state was hot (see [`StateView::hot`]) when the operation started.
    pub input_was_hot: bool,
    /// Whether the engine was called at all (not when the output was already hot, nor for
    /// a replay).
    pub engine_called: bool,
    /// For an infer answered from the store: the receipt of the infer it repeats.
    pub replay_of: Option<u64>,
    /// Token counts.
    pub tokens: Tokens,
    /// Timings.
    pub timings: Timings,
}

/// The result of [`StatePack::infer`].
#[derive(Debug, Clone, Serialize)]
pub struct Inference {
    /// The generated text (without an end-of-turn token).
    pub text: String,
    /// The generated token ids, as sampled, including an end-of-turn token if one was.
    pub generated: Vec<u32>,
    /// Why generation stopped.
    pub finish: FinishReason,
    /// The operation.
    pub report: OpReport,
}

/// A state as seen from outside.
#[derive(Debug, Clone, Serialize)]
pub struct StateView {
    /// Its hash.
    pub hash: StateHash,
    /// Its length in tokens.
    pub tokens: usize,
    /// Whether the engine holds its KV now: every token, or every token but the last (a state
    /// made by `infer` ends in a sampled token that was never run through the model; extending
    /// it prefills that one token with the delta).
    pub hot: bool,
    /// KV bytes the state occupies in the engine when hot.
    pub kv_bytes: usize,
    /// The state it was made from.
    pub parent: Option<StateHash>,
    /// The operation that made it.
    pub op: OpKind,
}
