//! When and how an agent's context is compacted.
//!
//! A [`CompactionPolicy`] decides *when*: when the context fills a fraction of the model's
//! window, every N steps, or when a cost model finds that carrying the old context over the
//! coming steps costs more than prefilling a compacted one. Every input of the cost model is
//! measured on this run by a [`CostMeter`] (the engine's own prefill and decode times); none
//! is a constant. A [`CompactionStrategy`] decides *how*: mask old tool observations keeping
//! the last k, summarize the turns it drops with the model, or both.
//!
//! The agent loop applies the decision with [`StatePack::compact_tokens`](crate::StatePack::compact_tokens),
//! so every compaction is a receipted `compact` operation whose `policy` records the policy,
//! the strategy, what triggered it (with the measured figures) and the hash of any summary.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::pack::OpReport;
use crate::store::OpKind;

/// When to compact. Any trigger that fires compacts; `None` everywhere never compacts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactionPolicy {
    /// Compact when the next step would fill more than this fraction of the context window
    /// (the state, the pending observation and the step's generation budget).
    pub window_fraction: Option<f64>,
    /// Compact every this many steps.
    pub every_steps: Option<usize>,
    /// Compact when the measured cost of carrying the droppable tokens over the coming
    /// steps exceeds the measured cost of building the compacted state.
    pub cost: Option<CostModel>,
}

/// The cost trigger's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostModel {
    /// How many coming steps the carried context is charged for.
    pub horizon_steps: usize,
    /// Steps measured before the model is trusted.
    pub min_samples: usize,
}

impl Default for CompactionPolicy {
    /// Compact at 75% of the window, and whenever the measured cost model says it pays off
    /// over the next 20 steps.
    fn default() -> Self {
        Self {
            window_fraction: Some(0.75),
            every_steps: None,
            cost: Some(CostModel {
                horizon_steps: 20,
                min_samples: 6,
            }),
        }
    }
}

impl CompactionPolicy {
    /// Never compact.
    pub fn never() -> Self {
        Self {
            window_fraction: None,
            every_steps: None,
            cost: None,
        }
    }

    /// Compact only when the window is `fraction` full.
    pub fn at_window_fraction(fraction: f64) -> Self {
        Self {
            window_fraction: Some(fraction),
            ..Self::never()
        }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(f) = self.window_fraction {
            if !(f > 0.0 && f <= 1.0) {
                return Err(format!("window_fraction must be in (0, 1], got {f}"));
            }
        }
        if self.every_steps == Some(0) {
            return Err("every_steps must be at least 1".into());
        }
        if let Some(c) = &self.cost {
            if c.horizon_steps == 0 || c.min_samples < 2 {
                return Err("cost model needs horizon_steps >= 1 and min_samples >= 2".into());
            }
        }
        Ok(())
    }

    /// Whether to compact now, and why.
    pub fn decide(&self, ctx: &ContextStats, meter: &CostMeter) -> Option<Trigger> {
        // Nothing the strategy could remove: compacting would only cost.
        if ctx.removable_tokens == 0 {
            return None;
        }
        if let Some(fraction) = self.window_fraction {
            if ctx.next_step_tokens as f64 > fraction * ctx.window as f64 {
                return Some(Trigger::Window {
                    tokens: ctx.next_step_tokens,
                    window: ctx.window,
                    fraction,
                });
            }
        }
        if let Some(n) = self.every_steps {
            if ctx.steps_since_compaction >= n {
                return Some(Trigger::EverySteps { steps: n });
            }
        }
        if let Some(cost) = &self.cost {
            let estimate = meter.estimate(ctx, cost)?;
            if estimate.carry_seconds > estimate.rebuild_seconds {
                return Some(Trigger::Cost(estimate));
            }
        }
        None
    }
}

/// How to compact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CompactionStrategy {
    /// Replace the tool observations of all but the last `keep_last` steps by a short
    /// placeholder; keep every step's calls.
    Mask {
        /// Observations kept verbatim.
        keep_last: usize,
    },
    /// Drop all but the last `keep_last` steps and put a summary of them, written by the
    /// model in at most `max_tokens`, into the task turn.
    Summarize {
        /// Steps kept verbatim.
        keep_last: usize,
        /// The summary's token budget.
        max_tokens: usize,
    },
    /// Summarize all but the last `keep_turns` steps, and mask the observations of the
    /// kept steps but the last `keep_last`.
    Both {
        /// Observations kept verbatim.
        keep_last: usize,
        /// Steps kept (calls verbatim).
        keep_turns: usize,
        /// The summary's token budget.
        max_tokens: usize,
    },
}

impl Default for CompactionStrategy {
    /// Mask all but the last 3 observations and summarize all but the last 8 steps.
    fn default() -> Self {
        CompactionStrategy::Both {
            keep_last: 3,
            keep_turns: 8,
            max_tokens: 64,
        }
    }
}

impl CompactionStrategy {
    /// Observations kept verbatim.
    pub fn observations_kept(&self) -> usize {
        match *self {
            CompactionStrategy::Mask { keep_last } => keep_last,
            CompactionStrategy::Summarize { keep_last, .. } => keep_last,
            CompactionStrategy::Both { keep_last, .. } => keep_last,
        }
    }

    /// Steps kept (the rest are summarized); `None` keeps every step.
    pub fn turns_kept(&self) -> Option<usize> {
        match *self {
            CompactionStrategy::Mask { .. } => None,
            CompactionStrategy::Summarize { keep_last, .. } => Some(keep_last),
            CompactionStrategy::Both { keep_turns, .. } => Some(keep_turns),
        }
    }

    /// The summary's token budget, if the strategy summarizes.
    pub fn summary_tokens(&self) -> Option<usize> {
        match *self {
            CompactionStrategy::Mask { .. } => None,
            CompactionStrategy::Summarize { max_tokens, .. }
            | CompactionStrategy::Both { max_tokens, .. } => Some(max_tokens),
        }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), String> {
        if self.summary_tokens() == Some(0) {
            return Err("a summary needs max_tokens >= 1".into());
        }
        if let CompactionStrategy::Both {
            keep_last,
            keep_turns,
            ..
        } = *self
        {
            if keep_last > keep_turns {
                return Err(format!(
                    "keep_last ({keep_last}) cannot exceed keep_turns ({keep_turns})"
                ));
            }
        }
        Ok(())
    }
}

/// The context as the policy sees it before a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ContextStats {
    /// Tokens the next step needs: the state, the pending observation and the generation
    /// budget.
    pub next_step_tokens: usize,
    /// The model's context window.
    pub window: usize,
    /// Steps since the last compaction (or the start).
    pub steps_since_compaction: usize,
    /// Tokens the strategy would remove now.
    pub removable_tokens: usize,
    /// Tokens the compacted state would have to prefill (those after its prefix shared with
    /// the current state), not counting a summary.
    pub rebuild_tokens: usize,
    /// Tokens a summary would cost to generate (0 without one).
    pub summary_tokens: usize,
    /// Steps left in the run (the cost model charges at most these).
    pub remaining_steps: usize,
}

/// What fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "trigger")]
pub enum Trigger {
    /// The window was filling up.
    Window {
        /// Tokens the next step needed.
        tokens: usize,
        /// The window.
        window: usize,
        /// The policy's fraction.
        fraction: f64,
    },
    /// The step count came round.
    EverySteps {
        /// The policy's period.
        steps: usize,
    },
    /// The cost model.
    Cost(CostEstimate),
}

/// The cost model's figures at one decision, from measurements of this run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostEstimate {
    /// Measured extra seconds one step pays per context token (Theil–Sen slope of per-token
    /// prefill and decode time against context length, times the mean tokens per step).
    pub seconds_per_context_token: f64,
    /// Measured seconds per token of a bulk prefill.
    pub prefill_seconds_per_token: f64,
    /// Measured seconds per generated token.
    pub decode_seconds_per_token: f64,
    /// Cost of carrying the removable tokens (net of a summary) over the horizon.
    pub carry_seconds: f64,
    /// Cost of building the compacted state (prefill, and the summary if any).
    pub rebuild_seconds: f64,
    /// Steps charged (the model's horizon, or the steps left if fewer).
    pub horizon_steps: usize,
    /// Steps measured.
    pub samples: usize,
}

/// Measures what context costs on this engine, from the reports of a run's operations.
#[derive(Debug, Clone, Default)]
pub struct CostMeter {
    /// Per infer step: (context tokens, decode seconds per generated token, prefill seconds
    /// per prefilled token, generated, prefilled).
    steps: VecDeque<StepSample>,
    bulk_prefill_tokens: usize,
    bulk_prefill_seconds: f64,
    decode_tokens: usize,
    decode_seconds: f64,
}

#[derive(Debug, Clone, Copy)]
struct StepSample {
    context: f64,
    decode_per_token: f64,
    prefill_per_token: f64,
    generated: f64,
    prefilled: f64,
}

/// Steps the meter remembers.
const WINDOW: usize = 48;
/// A prefill of at least this many tokens counts as bulk.
const BULK: usize = 64;
/// Context lengths (tokens) two samples must differ by to give a slope.
const MIN_SPREAD: f64 = 8.0;

impl CostMeter {
    /// An empty meter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Learns from one operation's report.
    pub fn observe(&mut self, r: &OpReport) {
        let t = &r.tokens;
        let prefill = r.timings.prefill.as_secs_f64();
        let decode = r.timings.decode.as_secs_f64();
        if t.prefilled >= BULK as u64 && prefill > 0.0 {
            self.bulk_prefill_tokens += t.prefilled as usize;
            self.bulk_prefill_seconds += prefill;
        }
        if t.generated > 0 && decode > 0.0 {
            self.decode_tokens += t.generated as usize;
            self.decode_seconds += decode;
        }
        // Only ordinary steps (a hot state plus a small delta) show how the per-step cost
        // grows with the context.
        if r.op == OpKind::Infer && r.input_was_hot && t.generated > 1 && t.prefilled > 0 {
            if self.steps.len() == WINDOW {
                self.steps.pop_front();
            }
            self.steps.push_back(StepSample {
                context: (t.state - t.generated) as f64,
                decode_per_token: decode / t.generated as f64,
                prefill_per_token: prefill / t.prefilled as f64,
                generated: t.generated as f64,
                prefilled: t.prefilled as f64,
            });
        }
    }

    /// Steps measured so far.
    pub fn samples(&self) -> usize {
        self.steps.len()
    }

    /// The cost model's figures for `ctx`, or `None` until there is enough to go on.
    pub fn estimate(&self, ctx: &ContextStats, model: &CostModel) -> Option<CostEstimate> {
        let n = self.steps.len();
        if n < model.min_samples || self.bulk_prefill_tokens == 0 || self.decode_tokens == 0 {
            return None;
        }
        let xs: Vec<f64> = self.steps.iter().map(|s| s.context).collect();
        let decode_slope = slope(&xs, self.steps.iter().map(|s| s.decode_per_token))?;
        let prefill_slope = slope(&xs, self.steps.iter().map(|s| s.prefill_per_token))?;
        let mean_generated = self.steps.iter().map(|s| s.generated).sum::<f64>() / n as f64;
        let mean_prefilled = self.steps.iter().map(|s| s.prefilled).sum::<f64>() / n as f64;
        // A negative slope is noise: context cannot make a step cheaper.
        let per_context_token =
            (decode_slope * mean_generated + prefill_slope * mean_prefilled).max(0.0);
        let prefill_per_token = self.bulk_prefill_seconds / self.bulk_prefill_tokens as f64;
        let decode_per_token = self.decode_seconds / self.decode_tokens as f64;
        let horizon = model.horizon_steps.min(ctx.remaining_steps);
        // A summary takes room in the compacted state: it is generated, then prefilled
        // there, and it is carried instead of what it replaces.
        let removed = ctx.removable_tokens.saturating_sub(ctx.summary_tokens);
        let carry = per_context_token * removed as f64 * horizon as f64;
        let rebuild = prefill_per_token * (ctx.rebuild_tokens + ctx.summary_tokens) as f64
            + decode_per_token * ctx.summary_tokens as f64;
        Some(CostEstimate {
            seconds_per_context_token: per_context_token,
            prefill_seconds_per_token: prefill_per_token,
            decode_seconds_per_token: decode_per_token,
            carry_seconds: carry,
            rebuild_seconds: rebuild,
            horizon_steps: horizon,
            samples: n,
        })
    }
}

/// Theil–Sen slope of `ys` against `xs`: the median of the slopes between all pairs of
/// samples at least [`MIN_SPREAD`] tokens of context apart. One step slowed by another
/// process on the machine moves a least-squares fit; it hardly moves the median. `None`
/// when no pair spreads far enough.
fn slope(xs: &[f64], ys: impl Iterator<Item = f64>) -> Option<f64> {
    let ys: Vec<f64> = ys.collect();
    let mut slopes = Vec::with_capacity(xs.len() * xs.len() / 2);
    for i in 0..xs.len() {
        for j in i + 1..xs.len() {
            let dx = xs[j] - xs[i];
            if dx.abs() >= MIN_SPREAD {
                slopes.push((ys[j] - ys[i]) / dx);
            }
        }
    }
    if slopes.is_empty() {
        return None;
    }
    slopes.sort_by(f64::total_cmp);
    let mid = slopes.len() / 2;
    Some(if slopes.len() % 2 == 1 {
        slopes[mid]
    } else {
        (slopes[mid - 1] + slopes[mid]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ledger::{ReceiptHash, ReceiptRef};
    use crate::pack::{Timings, Tokens};
    use crate::state::StateHash;

    fn report(
        op: OpKind,
        state: usize,
        prefilled: usize,
        generated: usize,
        pre_ms: u64,
        dec_ms: u64,
    ) -> OpReport {
        OpReport {
            seq: 1,
            receipt: ReceiptRef {
                seq: 1,
                hash: ReceiptHash::from_bytes([0; 32]),
            },
            op,
            input: None,
            output: StateHash::from_bytes([0; 32]),
            input_was_hot: true,
            engine_called: true,
            replay_of: None,
            tokens: Tokens {
                delta: prefilled as u64,
                state: state as u64,
                prefilled: prefilled as u64,
                generated: generated as u64,
                ..Tokens::default()
            },
            timings: Timings {
                prefill: Duration::from_millis(pre_ms),
                decode: Duration::from_millis(dec_ms),
                ..Timings::default()
            },
        }
    }

    fn ctx(removable: usize) -> ContextStats {
        ContextStats {
            next_step_tokens: 1000,
            window: 8192,
            steps_since_compaction: 3,
            removable_tokens: removable,
            rebuild_tokens: 500,
            summary_tokens: 0,
            remaining_steps: 100,
        }
    }

    /// A meter fed steps whose decode time per token grows by 10 µs per context token.
    fn meter() -> CostMeter {
        let mut m = CostMeter::new();
        m.observe(&report(OpKind::Create, 500, 500, 0, 5000, 0)); // 10 ms/token bulk prefill
        for i in 0..8u64 {
            let context = 500 + 100 * i;
            // 20 generated tokens at (20 + 0.01 * context) ms each.
            let per_token_ms = 20.0 + 0.01 * context as f64;
            m.observe(&report(
                OpKind::Infer,
                context as usize + 20,
                30,
                20,
                300,
                (per_token_ms * 20.0) as u64,
            ));
        }
        m
    }

    #[test]
    fn the_cost_model_uses_measured_slopes_and_rates() {
        let m = meter();
        let model = CostModel {
            horizon_steps: 10,
            min_samples: 6,
        };
        let e = m.estimate(&ctx(1000), &model).unwrap();
        // decode slope 0.01 ms/token per context token * 20 tokens = 0.2 ms per context token.
        assert!(
            (e.seconds_per_context_token - 0.0002).abs() < 0.00002,
            "{e:?}"
        );
        assert!((e.prefill_seconds_per_token - 0.01).abs() < 1e-9, "{e:?}");
        // carry: 0.2 ms * 1000 tokens * 10 steps = 2 s; rebuild: 500 * 10 ms = 5 s.
        assert!((e.carry_seconds - 2.0).abs() < 0.2, "{e:?}");
        assert!((e.rebuild_seconds - 5.0).abs() < 1e-6, "{e:?}");
        let policy = CompactionPolicy {
            cost: Some(model.clone()),
            ..CompactionPolicy::never()
        };
        assert_eq!(policy.decide(&ctx(1000), &m), None);
        // Three times as many removable tokens carried: now it pays.
        assert!(matches!(
            policy.decide(&ctx(3000), &m),
            Some(Trigger::Cost(_))
        ));
    }

    #[test]
    fn a_step_slowed_by_the_machine_does_not_move_the_slope() {
        let mut m = meter();
        // One step at a larger context took five times as long (another process ran).
        let per_token_ms = 5.0 * (20.0 + 0.01 * 1300.0);
        m.observe(&report(
            OpKind::Infer,
            1320,
            30,
            20,
            300,
            (per_token_ms * 20.0) as u64,
        ));
        let model = CostModel {
            horizon_steps: 10,
            min_samples: 6,
        };
        let e = m.estimate(&ctx(1000), &model).unwrap();
        // A least-squares fit would more than double the slope; the median stays near it.
        assert!(
            (e.seconds_per_context_token - 0.0002).abs() < 0.00004,
            "{e:?}"
        );
    }

    #[test]
    fn the_cost_model_waits_for_enough_samples() {
        let mut m = CostMeter::new();
        m.observe(&report(OpKind::Create, 500, 500, 0, 5000, 0));
        m.observe(&report(OpKind::Infer, 520, 30, 20, 300, 500));
        let model = CostModel {
            horizon_steps: 10,
            min_samples: 6,
        };
        assert_eq!(m.estimate(&ctx(1000), &model), None);
    }

    #[test]
    fn window_and_period_triggers() {
        let m = CostMeter::new();
        let p = CompactionPolicy::at_window_fraction(0.1);
        assert!(matches!(
            p.decide(&ctx(10), &m),
            Some(Trigger::Window { .. })
        ));
        // Nothing to remove: never compact.
        assert_eq!(p.decide(&ctx(0), &m), None);
        let p = CompactionPolicy {
            every_steps: Some(3),
            ..CompactionPolicy::never()
        };
        assert_eq!(
            p.decide(&ctx(10), &m),
            Some(Trigger::EverySteps { steps: 3 })
        );
        assert_eq!(CompactionPolicy::never().decide(&ctx(10_000), &m), None);
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(CompactionPolicy::at_window_fraction(1.5)
            .validate()
            .is_err());
        assert!(CompactionPolicy {
            every_steps: Some(0),
            ..CompactionPolicy::never()
        }
        .validate()
        .is_err());
        assert!(CompactionStrategy::Both {
            keep_last: 5,
            keep_turns: 2,
            max_tokens: 10
        }
        .validate()
        .is_err());
        assert!(CompactionPolicy::default().validate().is_ok());
        assert!(CompactionStrategy::default().validate().is_ok());
    }
}
