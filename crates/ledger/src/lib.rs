//! # state-pack-ledger
//!
//! The receipt ledger of state-pack: every operation signed, hash-linked and checkpointed in
//! SQLite, so anyone can later prove, offline, what an agent saw, said and cost. This crate is
//! everything an auditor needs and nothing more: no async runtime, no engine, no HTTP.
//!
//! - [`hash`]: content-addressed states ([`StateHash`]), deltas and model fingerprints.
//! - [`codec`]: the stored form of token ids.
//! - [`db`]: a database opened for its ledger ([`LedgerDb`]).
//! - [`receipt`]: the receipt, its canonical bytes (RFC 8785), hash and signature.
//! - [`keys`]: Ed25519 signing keys in owner-only files, and public keys to verify with.
//! - [`checkpoint`]: RFC 6962 Merkle trees over receipts, signed checkpoints, inclusion proofs.
//! - [`log`]: appending inside the caller's transactions, key rotation, reads.
//! - [`note`]: C2SP signed notes, tlog checkpoints in them and witnesses' cosignatures.
//! - [`stored`]: the tree and the checkpoint notes in SQLite, consistency proofs, tile export.
//! - [`tiles`]: the tree and the receipts as C2SP tlog-tiles, for static publication.
//! - [`tlog`]: the stored RFC 6962 tree: roots, inclusion and consistency proofs in O(log n).
//! - [`schema`]: the database schema and its migrations.
//! - [`verify`]: the auditor's check, over the stored bytes only.
//! - [`witness`]: a witness that cosigns checkpoints consistent with what it saw before.
//! - `cli` (feature `cli`): the `verify`, `receipts`, `keys` and `witness` subcommands, shared by the
//!   `state-pack` binary and this crate's own `state-pack-ledger`.
//!
//! The format is specified in `docs/RECEIPTS.md`. The ledger knows nothing of models: a model
//! is a fingerprint in a receipt, like any other hash.
#![warn(missing_docs)]

pub mod checkpoint;
#[cfg(feature = "cli")]
pub mod cli;
pub mod codec;
pub mod db;
pub mod hash;
pub mod keys;
pub mod log;
pub mod measured;
pub mod note;
pub mod receipt;
pub mod schema;
pub mod sql;
pub mod stored;
pub mod tiles;
pub mod tlog;
pub mod verify;
pub mod witness;

pub use checkpoint::{Checkpoint, ReceiptProof, SignedCheckpoint};
pub use db::{DbError, LedgerDb};
pub use hash::{DeltaHash, ModelFingerprint, StateHash};
pub use keys::{default_key_path, KeyError, PublicKey, Signer};
pub use log::{Ledger, LedgerError, ReceiptRef, DEFAULT_CHECKPOINT_EVERY};
pub use measured::Measured;
pub use receipt::{KeyId, LogId, Receipt, ReceiptHash, ReceiptOp, ReceiptRemote};
pub use verify::{verify_file, TrustedCheckpoint, VerifyOptions, VerifyReport};
