//! Concurrent generations compared with the same generations run one at a time, for the
//! engines' batching tests.

use std::sync::Arc;

use state_pack::engine::{Engine, Generation, Sampling};

/// Each prompt generated alone on `alone`, in order, then all at once on `together`
/// (a second engine, so that neither run sees the other's cache); checks that every request
/// got what it got alone: the same tokens and text, with its own prefill, reuse and
/// generated counts. Returns the batched results; the caller checks, with its engine's
/// `peak_concurrency`, that they overlapped.
pub async fn batched_match_sequential<E: Engine + 'static>(
    alone: &E,
    together: Arc<E>,
    prompts: &[Vec<u32>],
    sampling: impl Fn(usize) -> Sampling,
) -> Vec<Generation> {
    let mut one_by_one = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        one_by_one.push(alone.generate(p, &sampling(i)).await.unwrap());
    }
    let runs: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (e, p, s) = (Arc::clone(&together), p.clone(), sampling(i));
            tokio::spawn(async move { e.generate(&p, &s).await })
        })
        .collect();
    let mut batched = Vec::new();
    for r in runs {
        batched.push(r.await.unwrap().unwrap());
    }
    for (i, (a, b)) in one_by_one.iter().zip(&batched).enumerate() {
        assert_eq!(
            a.tokens, b.tokens,
            "request {i}: {:?} vs {:?}",
            a.text, b.text
        );
        assert_eq!(a.text, b.text);
        assert_eq!(b.usage.prefilled + b.usage.reused, prompts[i].len());
        assert_eq!(b.usage.generated, b.tokens.len());
    }
    batched
}
