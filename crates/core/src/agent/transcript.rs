//! The token segments of an agent's context, so that compaction can rebuild it.
//!
//! Every segment is rendered in the model's chat template and tokenized on its own, exactly as the
//! deltas the loop sends, so the transcript's tokens are the state's tokens. A compacted
//! context keeps the system prompt and the task, replaces old observations by a placeholder
//! (masking) and old steps by a model-written summary inside the task turn (summarizing).

use std::sync::Arc;

use crate::compaction::CompactionStrategy;
use crate::pack::{PackError, StatePack};
use crate::template::ChatTemplate;

pub(crate) struct Transcript {
    pack: Arc<StatePack>,
    template: ChatTemplate,
    system: Vec<u32>,
    task: String,
    /// The task turn as it is now in the context (with the summary once there is one).
    task_turn: Vec<u32>,
    /// Steps summarized so far.
    summarized: usize,
    /// Steps in the context, oldest first. The last one's observation is the pending
    /// delta of the next step, not yet in the state.
    turns: Vec<Turn>,
    masked_observation: Vec<u32>,
}

struct Turn {
    output: Vec<u32>,
    observation: Vec<u32>,
    masked: bool,
}

/// What a compaction would do.
pub(crate) struct Plan {
    /// Leading steps to drop into the summary.
    drop: usize,
    /// Steps whose observations to mask.
    mask: Vec<usize>,
    /// Tokens it would remove (net of the placeholders, not counting a summary).
    pub removable: usize,
    /// Tokens after the prefix it keeps unchanged: what the compacted state must prefill.
    pub rebuild: usize,
    /// Steps it would summarize.
    pub summarized: usize,
}

/// What a compaction did.
pub(crate) struct Applied {
    pub masked: usize,
    pub summarized: usize,
}

/// The delta after a step: its observation as the next user turn.
fn observation_text(t: &ChatTemplate, body: &str) -> Result<String, PackError> {
    Ok(t.next_request(&format!("Observation:\n{body}"))?)
}

/// The task turn, with the summary of the steps folded into it once there is one.
fn task_text(
    t: &ChatTemplate,
    task: &str,
    summary: Option<(usize, &str)>,
) -> Result<String, PackError> {
    Ok(match summary {
        None => t.first_request(task)?,
        Some((steps, s)) => t.first_request(&format!(
            "{task}\n\nProgress so far ({steps} earlier steps, summarized): {s}"
        ))?,
    })
}

impl Transcript {
    pub async fn new(
        pack: Arc<StatePack>,
        system: Vec<u32>,
        task: &str,
    ) -> Result<Self, PackError> {
        let template = pack.engine().info().template;
        let task_turn = pack
            .engine()
            .tokenize(&task_text(&template, task, None)?)
            .await?;
        let masked_observation = pack
            .engine()
            .tokenize(&template.next_request("Observation: (elided)")?)
            .await?;
        Ok(Self {
            pack,
            template,
            system,
            task: task.to_string(),
            task_turn,
            summarized: 0,
            turns: Vec::new(),
            masked_observation,
        })
    }

    /// The next step's delta.
    pub fn pending(&self) -> &[u32] {
        match self.turns.last() {
            Some(t) => &t.observation,
            None => &self.task_turn,
        }
    }

    /// The tokens of the current state.
    pub fn tokens(&self) -> Vec<u32> {
        self.render(self.turns.len(), &self.task_turn, |_| false)
    }

    /// Tokens in the current state.
    pub fn len(&self) -> usize {
        let Some((last, done)) = self.turns.split_last() else {
            return self.system.len();
        };
        self.system.len()
            + self.task_turn.len()
            + done
                .iter()
                .map(|t| t.output.len() + t.observation.len())
                .sum::<usize>()
            + last.output.len()
    }

    /// The state with `turns[skip..]` and `task_turn`, masking turns where `mask(i)`.
    fn render(&self, n: usize, task_turn: &[u32], mask: impl Fn(usize) -> bool) -> Vec<u32> {
        let mut out = self.system.clone();
        if self.turns.is_empty() {
            return out;
        }
        out.extend_from_slice(task_turn);
        let skip = self.turns.len() - n;
        let last = self.turns.len() - 1;
        for (i, t) in self.turns.iter().enumerate().skip(skip) {
            out.extend_from_slice(&t.output);
            if i < last {
                if mask(i) {
                    out.extend_from_slice(&self.masked_observation);
                } else {
                    out.extend_from_slice(&t.observation);
                }
            }
        }
        out
    }

    /// Records a finished step: its output (now in the state) and the observation that
    /// the next step will send.
    pub async fn push_turn(
        &mut self,
        output: Vec<u32>,
        observation_body: &str,
    ) -> Result<(), PackError> {
        let observation = self
            .pack
            .engine()
            .tokenize(&observation_text(&self.template, observation_body)?)
            .await?;
        self.turns.push(Turn {
            output,
            observation,
            masked: false,
        });
        Ok(())
    }

    /// The delta asking the model for a summary of the context.
    pub async fn summary_request(&self) -> Result<Vec<u32>, PackError> {
        Ok(self
            .pack
            .engine()
            .tokenize(&self.template.next_request(
                "Before going on: in one or two sentences, what have the tool calls so far found?",
            )?)
            .await?)
    }

    /// What `strategy` would do now.
    pub async fn plan(
        &self,
        strategy: &CompactionStrategy,
        current: &[u32],
    ) -> Result<Plan, PackError> {
        let n = self.turns.len();
        // The last step always stays: its observation is the next step's delta.
        let kept = strategy.turns_kept().map_or(n, |k| k.max(1)).min(n);
        let drop = n - kept;
        // Observations in the state (all but the last step's) of the kept steps, newest
        // last; all but the newest `keep_last` are masked.
        let in_state: Vec<usize> = (drop..n.saturating_sub(1)).collect();
        let keep = strategy.observations_kept().min(in_state.len());
        let mask: Vec<usize> = in_state[..in_state.len() - keep]
            .iter()
            .copied()
            .filter(|&i| !self.turns[i].masked)
            .collect();
        let task_turn = if drop > 0 {
            self.pack
                .engine()
                .tokenize(&task_text(
                    &self.template,
                    &self.task,
                    Some((self.summarized + drop, "")),
                )?)
                .await?
        } else {
            self.task_turn.clone()
        };
        let candidate = self.render(kept, &task_turn, |i| mask.contains(&i));
        let shared = current
            .iter()
            .zip(&candidate)
            .take_while(|(a, b)| a == b)
            .count();
        Ok(Plan {
            drop,
            removable: current.len().saturating_sub(candidate.len()),
            rebuild: candidate.len() - shared,
            summarized: drop,
            mask,
        })
    }

    /// Applies `plan`, with the model's `summary` of the dropped steps (and of any earlier
    /// summary, which the model saw in the context).
    pub async fn apply(
        &mut self,
        plan: &Plan,
        summary: Option<&str>,
    ) -> Result<Applied, PackError> {
        for &i in &plan.mask {
            let t = &mut self.turns[i];
            t.observation = self.masked_observation.clone();
            t.masked = true;
        }
        if plan.drop > 0 {
            self.turns.drain(..plan.drop);
            self.summarized += plan.drop;
            let text = task_text(
                &self.template,
                &self.task,
                Some((self.summarized, summary.unwrap_or("(no summary)"))),
            )?;
            self.task_turn = self.pack.engine().tokenize(&text).await?;
        }
        Ok(Applied {
            masked: plan.mask.len(),
            summarized: plan.drop,
        })
    }
}
