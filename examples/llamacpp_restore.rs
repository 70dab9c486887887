//! llama.cpp engine and KV blobs: a state survives a restart without being prefilled again.
//!
//! ```sh
//! . .ci/llamacpp-env && cargo run --release --features llamacpp --example llamacpp_restore
//! ```
//!
//! Creates a base state and one step on a llama.cpp engine (each state's KV is written to
//! `<db>.kv/`), then drops the engine, loads a fresh one — as a restarted process would —
//! and continues the step's state: its KV comes from the blobs, only the new turn is
//! prefilled, and the receipt records how many tokens were restored.

use std::sync::Arc;

use state_pack::engine::{LlamaCppEngine, LlamaCppOptions, Sampling};
use state_pack::ledger::Signer;
use state_pack::model::{cache_dir, DEFAULT_MODEL};
use state_pack::{StatePack, Store};

const BASE: &str = "<|im_start|>system\nYou are a terse assistant for a law firm.<|im_end|>\n";

fn turn(user: &str) -> String {
    format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = DEFAULT_MODEL.ensure(&cache_dir(None))?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("agent.db");
    let key = Signer::generate()?;

    let step = {
        let engine = LlamaCppEngine::load(&model, LlamaCppOptions::default()).await?;
        let pack = StatePack::new(Arc::new(engine), Store::open(&db, key.clone())?);
        let base = pack.create(BASE).await?;
        let step = pack
            .infer(
                &base.output,
                &turn("Which clause caps liability?"),
                &Sampling::greedy(8),
            )
            .await?;
        println!(
            "first process: base prefilled {}, step prefilled {} reused {} -> {:?}",
            base.tokens.prefilled,
            step.report.tokens.prefilled,
            step.report.tokens.reused,
            step.text
        );
        println!(
            "KV blobs in {}",
            pack.kv_blobs().map_or("(none)".into(), |b| b.location())
        );
        pack.close()?;
        step.report.output
    };

    // A fresh engine holds nothing: the state comes back from its blobs.
    let engine = LlamaCppEngine::load(&model, LlamaCppOptions::default()).await?;
    let pack = StatePack::new(Arc::new(engine), Store::open(&db, key)?);
    let next = pack
        .infer(&step, &turn("And the notice period?"), &Sampling::greedy(8))
        .await?;
    let t = &next.report.tokens;
    println!(
        "fresh engine: restored {} tokens from blobs in {:.1} ms, prefilled {} -> {:?}",
        t.restored,
        next.report.timings.restore.as_secs_f64() * 1e3,
        t.prefilled,
        next.text
    );
    pack.close()?;
    Ok(())
}
