//! # state-pack
//!
//! LLM agents re-send their whole context at every step. state-pack keeps the model's KV
//! state of everything already seen and prefills only the new tokens, compacts the context
//! before it grows out of hand, and writes a signed, hash-linked receipt of every operation.
//!
//! This is the application crate: the `state-pack` binary and what only it needs — the
//! pinned default model and its pip fetch ([`model`]), the built-in demo loop ([`demo`]),
//! the naive-vs-reused benchmark ([`bench`]), the HTTP load test ([`load`]) and the two
//! example workloads whose code lives in `examples/` ([`legal`], [`research`]). The library
//! it is built on is re-exported under the paths it always had:
//!
//! - [`engine`], [`pack`], [`store`], [`kv_blob`], [`agent`], [`compaction`], [`template`]: the core
//!   crate, `state-pack-core`.
//! - [`graph`]: LangGraph-style workflows, `state-pack-graph`.
//! - [`server`]: `state-pack serve`, `state-pack-server`.
//! - [`ledger`] and [`state`]: receipts, checkpoints, `verify` and state hashing,
//!   `state-pack-ledger` (what an auditor builds alone).
//!
//! See `ARCHITECTURE.md` for the crate graph and its invariants.
#![warn(missing_docs)]

// The example workloads below are the files in `examples/`, which name this crate
// `state_pack` as any user's code would.
extern crate self as state_pack;

pub mod bench;
pub mod demo;
pub mod load;
pub mod model;

/// The legal-research agent (`examples/legal_agent/legal.rs`): clause lookup over a bundled
/// corpus and a calculator. The agent behind `state-pack run`, `agent` and `bench`.
#[path = "../examples/legal_agent/legal.rs"]
pub mod legal;

/// The research graph (`examples/research_graph/research.rs`): a researcher agent and a
/// reviewer agent with a retry loop, behind `state-pack graph`.
#[path = "../examples/research_graph/research.rs"]
pub mod research;

pub use state_pack_core::{
    agent, compaction, engine, kv_blob, ledger, pack, postgres, state, store, template,
};
pub use state_pack_core::{
    Inference, ModelFingerprint, OpReport, PackError, StateHash, StatePack, Store,
};
/// LangGraph-style workflows: the `state-pack-graph` crate.
pub use state_pack_graph as graph;
/// The remote engine (an inference server in another process): the `state-pack-remote`
/// crate, in builds with the `llamacpp` feature (it reads the vocabulary with llama.cpp).
#[cfg(feature = "llamacpp")]
pub use state_pack_remote as remote;
/// The HTTP server: the `state-pack-server` crate.
pub use state_pack_server as server;
