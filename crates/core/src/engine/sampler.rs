//! Seeded sampling that mistral.rs does not offer per request.
//!
//! mistral.rs seeds one RNG per engine, so a draw depends on every request served before it.
//! This logits processor makes the draw itself — temperature, nucleus, a uniform number from
//! `(seed, position)` — and hands mistral.rs logits with a single finite entry, which its greedy
//! sampler then picks. The same seed and prefix give the same token in any process.
//!
//! The position is counted from the prompt length, not taken from the `context` mistral.rs
//! passes: on a prefix-cache hit that context holds only the uncached tokens, so its length
//! would differ between a hot and a cold run of the same prompt.

use std::sync::atomic::AtomicUsize;
#[cfg(feature = "mistralrs")]
use std::sync::atomic::Ordering;

#[cfg(feature = "mistralrs")]
use mistralrs::{CustomLogitsProcessor, DType, Result as CandleResult, Tensor};

pub(crate) struct SeededSampler {
    pub seed: u64,
    pub temperature: f32,
    pub top_p: f32,
    /// Position of the next token to draw: the prompt length, then one more per draw
    /// (mistral.rs's logits processor counts here; llama.cpp passes positions itself).
    #[cfg_attr(not(feature = "mistralrs"), allow(dead_code))]
    pub next_position: AtomicUsize,
}

/// SplitMix64: a tiny, well-mixed hash from (seed, position) to 64 random bits.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl SeededSampler {
    /// Index drawn from `logits` for the token at `position`.
    pub fn draw(&self, logits: &[f32], position: usize) -> usize {
        let t = self.temperature.max(1e-4);
        let max = logits
            .iter()
            .copied()
            .filter(|l| l.is_finite())
            .fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(usize, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, l)| (i, ((l - max) / t).exp()))
            .collect();
        if probs.is_empty() {
            return 0;
        }
        // Stable order (probability, then index) so ties never depend on the sort algorithm.
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: f32 = probs.iter().map(|p| p.1).sum();
        let keep_mass = self.top_p.clamp(f32::MIN_POSITIVE, 1.0) * total;
        let mut kept = 0.0;
        let mut n = 0;
        for p in &probs {
            kept += p.1;
            n += 1;
            if kept >= keep_mass {
                break;
            }
        }
        let bits = splitmix64(self.seed ^ splitmix64(position as u64));
        // 24 high bits -> uniform in [0, 1).
        let u = (bits >> 40) as f32 / (1u64 << 24) as f32 * kept;
        let mut acc = 0.0;
        for p in &probs[..n] {
            acc += p.1;
            if u < acc {
                return p.0;
            }
        }
        probs[n - 1].0
    }
}

#[cfg(feature = "mistralrs")]
impl CustomLogitsProcessor for SeededSampler {
    fn apply(&self, logits: &Tensor, _context: &[u32]) -> CandleResult<Tensor> {
        let values: Vec<f32> = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        // One call per sampled token, in order (one sequence, no speculative decoding).
        let position = self.next_position.fetch_add(1, Ordering::Relaxed);
        let pick = self.draw(&values, position);
        let mut out = vec![f32::NEG_INFINITY; values.len()];
        out[pick] = 0.0;
        Tensor::from_vec(out, logits.shape(), logits.device())?.to_dtype(logits.dtype())
    }
}

/// A logits processor that changes nothing and forwards each token mistral.rs samples to a
/// [`TokenSink`](super::TokenSink): at every sampling call the context ends with the token
/// sampled at the previous call. A grammar can make mistral.rs sample twice at one position
/// (once unconstrained, once masked), so a token is sent only when the context has grown.
/// The last sampled token is never followed by another call: the engine sends it (and
/// anything else not yet sent) from the finished generation.
#[cfg(feature = "mistralrs")]
pub(crate) struct TokenForwarder {
    pub sink: super::TokenSink,
    /// Context length at the previous call, and ids sent so far.
    pub seen: std::sync::Mutex<(Option<usize>, usize)>,
}

#[cfg(feature = "mistralrs")]
impl TokenForwarder {
    /// Ids sent so far.
    pub fn sent(&self) -> usize {
        self.seen.lock().map(|s| s.1).unwrap_or(usize::MAX)
    }
}

#[cfg(feature = "mistralrs")]
impl CustomLogitsProcessor for TokenForwarder {
    fn apply(&self, logits: &Tensor, context: &[u32]) -> CandleResult<Tensor> {
        if let Ok(mut seen) = self.seen.lock() {
            if let (Some(before), Some(last)) = (seen.0, context.last()) {
                if context.len() > before {
                    let _ = self.sink.send(*last);
                    seen.1 += 1;
                }
            }
            seen.0 = Some(context.len());
        }
        Ok(logits.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_and_position_same_draw() {
        let s = SeededSampler {
            seed: 42,
            temperature: 1.0,
            top_p: 1.0,
            next_position: AtomicUsize::new(0),
        };
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let a: Vec<usize> = (0..20).map(|p| s.draw(&logits, p)).collect();
        let b: Vec<usize> = (0..20).map(|p| s.draw(&logits, p)).collect();
        assert_eq!(a, b);
        // Different positions explore different tokens.
        assert!(a.iter().any(|x| *x != a[0]));
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let s = SeededSampler {
            seed: 7,
            temperature: 1.0,
            top_p: 1e-6,
            next_position: AtomicUsize::new(0),
        };
        let logits = [0.1, 3.0, f32::NEG_INFINITY, 2.9];
        for p in 0..10 {
            assert_eq!(s.draw(&logits, p), 1);
        }
    }
}
