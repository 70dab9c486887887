//! # state-pack-core
//!
//! LLM agents re-send their whole context at every step. state-pack keeps the model's KV
//! state of everything already seen and prefills only the new tokens, by owning the token
//! chains and sending token ids to the engine so that its prefix cache matches exactly.
//!
//! - [`engine`]: the [`Engine`](engine::Engine) trait, [`MistralRsEngine`](engine::MistralRsEngine)
//!   and, behind the `llamacpp` feature, `LlamaCppEngine`; behind `testing`, a scripted engine.
//! - [`pack`]: [`StatePack`] — create / merge / infer, with measured token accounting.
//! - [`store`]: SQLite persistence of states and operations ([`Store`]), over the ledger.
//! - [`kv_blob`]: engine KV state on disk, bound to the receipts that vouch for it.
//! - [`agent`]: [`Agent`](agent::Agent), typed tools and [`AgentLoop`](agent::AgentLoop).
//! - [`template`]: [`ChatTemplate`](template::ChatTemplate), the one place that knows a model
//!   family's turn markup.
//! - [`compaction`]: when (a measured cost model, the window, a period) and how (mask,
//!   summarize) an agent's context is compacted.
//!
//! Architecture Invariant: this crate knows nothing of HTTP, graphs or the command line; the
//! ledger crate ([`ledger`]) knows nothing of it. See `ARCHITECTURE.md`.
#![warn(missing_docs)]

pub mod agent;
pub mod compaction;
pub mod engine;
pub mod kv_blob;
pub mod pack;
pub mod store;
pub mod template;

/// The receipt ledger, its own crate (`state-pack-ledger`): what an auditor builds alone.
pub use state_pack_ledger as ledger;
/// Content-addressed states: [`state_pack_ledger::hash`].
pub use state_pack_ledger::hash as state;
/// The Postgres backend of the store (`--db postgres://...`): the `state-pack-postgres` crate.
pub use state_pack_postgres as postgres;

pub use pack::{Inference, OpReport, PackError, StatePack};
pub use state::{ModelFingerprint, StateHash};
pub use store::Store;
