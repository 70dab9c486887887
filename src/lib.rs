//! # state-pack
//!
//! LLM agents re-send their whole context at every step. state-pack keeps the model's KV
//! state of everything already seen and prefills only the new tokens, by owning the token
//! chains and sending token ids to mistral.rs so that its prefix cache matches exactly.
//!
//! - [`state`]: content-addressed states ([`StateHash`]).
//! - [`engine`]: the [`Engine`](engine::Engine) trait and [`MistralRsEngine`](engine::MistralRsEngine).
//! - [`pack`]: [`StatePack`] — create / merge / infer, with measured token accounting.
//! - [`store`]: SQLite persistence ([`Store`]).
//! - [`ledger`]: signed, hash-linked receipts of every operation, checkpoints and `verify`.
//! - [`model`]: the pinned default model, fetched with pip.
//! - [`agent`]: [`Agent`](agent::Agent), typed tools and [`AgentLoop`](agent::AgentLoop).
//! - [`compaction`]: when (a measured cost model, the window, a period) and how (mask,
//!   summarize) an agent's context is compacted.
//! - [`graph`]: LangGraph-style [`StateGraph`](graph::StateGraph)s of nodes and agents, with
//!   checkpoints, interrupts, resume and time travel in the same SQLite database.
//! - [`demo`] and [`bench`]: the built-in legal-research agent loop and its naive-vs-reused
//!   benchmark, behind `state-pack run` and `state-pack bench`.
//!
//! See `ARCHITECTURE.md` for the bird's-eye view and its invariants.
#![warn(missing_docs)]

pub mod agent;
pub mod bench;
pub mod compaction;
pub mod demo;
pub mod engine;
pub mod graph;
pub mod kv_blob;
pub mod model;
pub mod pack;
pub mod server;
pub mod store;

/// The receipt ledger, its own crate (`state-pack-ledger`): what an auditor builds alone.
pub use state_pack_ledger as ledger;
/// Content-addressed states: [`state_pack_ledger::hash`].
pub use state_pack_ledger::hash as state;

pub use pack::{Inference, OpReport, PackError, StatePack};
pub use state::{ModelFingerprint, StateHash};
pub use store::Store;
