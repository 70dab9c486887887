//! The store's records: states, operations as the pack records them, and its errors.

use crate::ledger::sql::SqlError;
use serde::Serialize;

use crate::engine::FinishReason;
use crate::ledger::measured::Measured;
use crate::ledger::receipt::{ReceiptKv, ReceiptOp};
use crate::ledger::{DbError, LedgerError, ReceiptRef};
use crate::state::{DeltaHash, ModelFingerprint, StateHash};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, was written by a newer build, or its ledger
    /// refused to attach.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A stored row is not what the schema promises.
    #[error("corrupt row in {table}: {reason}")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The receipt ledger refused or failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Any other database error.
    #[error("database error: {0}")]
    Sql(#[from] SqlError),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sql(e.into())
    }
}

/// The operation kinds of the pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// A new base state from text.
    Create,
    /// A state extended by a delta.
    Merge,
    /// A state extended by a delta and generated tokens.
    Infer,
    /// A shorter base replacing a long state.
    Compact,
}

impl OpKind {
    /// The name stored in SQLite.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Create => "create",
            OpKind::Merge => "merge",
            OpKind::Infer => "infer",
            OpKind::Compact => "compact",
        }
    }

    pub(super) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "create" => OpKind::Create,
            "merge" => OpKind::Merge,
            "infer" => OpKind::Infer,
            "compact" => OpKind::Compact,
            _ => return None,
        })
    }

    pub(super) fn receipt_op(self) -> ReceiptOp {
        match self {
            OpKind::Create => ReceiptOp::Create,
            OpKind::Merge => ReceiptOp::Merge,
            OpKind::Infer => ReceiptOp::Infer,
            OpKind::Compact => ReceiptOp::Compact,
        }
    }
}

/// A state as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredState {
    /// Its hash.
    pub hash: StateHash,
    /// The model its tokens belong to.
    pub model: ModelFingerprint,
    /// The state it was made from, if any.
    pub parent: Option<StateHash>,
    /// The operation that made it.
    pub op: OpKind,
    /// Its tokens.
    pub tokens: Vec<u32>,
}

/// One operation to record, with the measured figures.
#[derive(Debug, Clone)]
pub struct OperationRecord {
    /// What was done.
    pub op: OpKind,
    /// The input state.
    pub input: Option<StateHash>,
    /// The output state.
    pub output: StateHash,
    /// Hash of the tokens appended by the caller (the delta; for create, the base).
    pub delta_hash: DeltaHash,
    /// Whether the engine held the input state when the operation started.
    pub input_was_hot: Option<bool>,
    /// Policy and strategy parameters (compact only), recorded in the receipt.
    pub policy: Option<serde_json::Value>,
    /// Tokens sent to the engine (0 when the engine was not needed).
    pub prompt_tokens: usize,
    /// Token counts and times, signed into the receipt as they are.
    pub measured: Measured,
    /// The KV blob written for the output state, signed into the receipt.
    pub kv: Option<ReceiptKv>,
    /// Generated text (infer only).
    pub output_text: Option<String>,
    /// Sampling parameters (infer only), recorded in the receipt and keying replays.
    pub sampling: Option<serde_json::Value>,
    /// Why generation stopped (infer only).
    pub finish: Option<FinishReason>,
    /// The receipt of the infer whose result this one repeats (an infer answered from the
    /// store without running the engine).
    pub replay_of: Option<u64>,
    /// The inference server that ran the operation (a remote engine), signed into the
    /// receipt.
    pub remote: Option<state_pack_ledger::ReceiptRemote>,
}

impl OperationRecord {
    /// An operation with its measured figures and nothing optional set (no policy, sampling,
    /// output text, replay or KV blob; the input's hotness unknown).
    pub fn new(
        op: OpKind,
        input: Option<StateHash>,
        output: StateHash,
        delta_hash: DeltaHash,
        measured: Measured,
    ) -> Self {
        Self {
            op,
            input,
            output,
            delta_hash,
            input_was_hot: None,
            policy: None,
            prompt_tokens: 0,
            measured,
            kv: None,
            output_text: None,
            remote: None,
            sampling: None,
            finish: None,
            replay_of: None,
        }
    }
}

/// A recorded infer that a deterministic request with the same key can repeat.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedInfer {
    /// Its receipt.
    pub receipt_seq: u64,
    /// The state it made.
    pub output: StateHash,
    /// The text it generated.
    pub text: String,
    /// Why generation stopped.
    pub finish: FinishReason,
}

/// Totals over all operations in a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OperationTotals {
    /// Operations recorded.
    pub operations: u64,
    /// Tokens prefilled.
    pub prefilled: u64,
    /// Tokens reused.
    pub reused: u64,
    /// Tokens generated.
    pub generated: u64,
}

/// Where an operation was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Recorded {
    /// Its row in the operations table.
    pub operation: u64,
    /// Its receipt.
    pub receipt: ReceiptRef,
}
