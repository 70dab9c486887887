//! The receipt ledger: every operation signed, hash-linked and checkpointed in SQLite, so
//! anyone can later prove, offline, what an agent saw, said and cost.
//!
//! - [`receipt`]: the receipt, its canonical bytes (RFC 8785), hash and signature.
//! - [`keys`]: Ed25519 signing keys in owner-only files, and public keys to verify with.
//! - [`checkpoint`]: RFC 6962 Merkle trees over receipts, signed checkpoints, inclusion proofs.
//! - [`log`]: appending inside the store's transactions, key rotation, reads.
//! - [`verify`]: the auditor's check, over the stored bytes only.
//!
//! The format is specified in `docs/RECEIPTS.md`. The ledger knows nothing of models: a model
//! is a fingerprint in a receipt, like any other hash.

pub mod checkpoint;
pub mod keys;
pub mod log;
pub mod receipt;
pub mod verify;

pub use checkpoint::{Checkpoint, ReceiptProof, SignedCheckpoint};
pub use keys::{default_key_path, KeyError, PublicKey, Signer};
pub use log::{Ledger, LedgerError, ReceiptRef, DEFAULT_CHECKPOINT_EVERY};
pub use receipt::{KeyId, LogId, Receipt, ReceiptHash, ReceiptOp};
pub use verify::{verify_file, TrustedCheckpoint, VerifyOptions, VerifyReport};
