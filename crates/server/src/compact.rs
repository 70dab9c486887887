//! `POST /compact` on an opaque chat-template state: the server does not know the client's
//! turns, so it finds them by the model's [`ChatTemplate`] turn markers (ChatML's
//! `<|im_start|>`, Gemma's `<start_of_turn>`, ...), keeps the first and last few verbatim
//! and folds the ones between into one note, written in the same template.

use state_pack_core::engine::Sampling;
use state_pack_core::pack::{Inference, OpReport, PackError, StatePack};
use state_pack_core::template::{ChatTemplate, Role};
use state_pack_ledger::hash::StateHash;

use super::api::CompactPolicy;

/// What a compaction did.
pub struct Compacted {
    /// The compaction.
    pub report: OpReport,
    /// Turns folded.
    pub folded: usize,
    /// Tokens before.
    pub before: usize,
    /// The summary's generation, if the policy asked for one.
    pub summary: Option<Inference>,
}

/// Why a state cannot be compacted under a policy (a client error).
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// The policy keeps every turn.
    #[error("nothing to fold: the state has {turns} turns and the policy keeps {kept} (keep_first + keep_last)")]
    NothingToFold {
        /// Turns found.
        turns: usize,
        /// Turns the policy keeps.
        kept: usize,
    },
    /// The template's turn marker is not one token of the model's vocabulary.
    #[error("the {template} template's turn marker {marker:?} is not a single token of this model, so turns cannot be found")]
    NoTurnMarker {
        /// The template's name.
        template: &'static str,
        /// The marker.
        marker: &'static str,
    },
    /// Bad parameters.
    #[error("policy.keep_last must be at least 1 (the last turn may still be open)")]
    KeepLast,
    /// The template cannot write the note or the summary request here.
    #[error(transparent)]
    Template(#[from] state_pack_core::template::TemplateError),
    /// The pack failed.
    #[error(transparent)]
    Pack(#[from] PackError),
}

/// Start offsets of the turns of `tokens` (each at one of the `markers` tokens); tokens
/// before the first marker belong to the head.
fn turn_starts(tokens: &[u32], markers: &[u32]) -> Vec<usize> {
    tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| markers.contains(t))
        .map(|(i, _)| i)
        .collect()
}

/// The single token `text` is in this model's vocabulary.
async fn single_token(
    pack: &StatePack,
    template: &ChatTemplate,
    text: &'static str,
) -> Result<u32, CompactError> {
    let ids = pack
        .engine()
        .tokenize(text)
        .await
        .map_err(PackError::from)?;
    match ids.as_slice() {
        [id] => Ok(*id),
        _ => Err(CompactError::NoTurnMarker {
            template: template.name(),
            marker: text,
        }),
    }
}

/// Compacts `state` under `policy`.
pub async fn compact(
    pack: &StatePack,
    state: &StateHash,
    policy: CompactPolicy,
) -> Result<Compacted, CompactError> {
    if policy.keep_last == 0 {
        return Err(CompactError::KeepLast);
    }
    let engine = pack.engine().clone();
    let template = engine.info().template;
    let mut markers = Vec::new();
    for &m in template.turn_markers() {
        markers.push(single_token(pack, &template, m).await?);
    }
    let end_of_turn = single_token(pack, &template, template.end_of_turn()).await?;
    let tokens = pack.tokens(state)?;
    let starts = turn_starts(&tokens, &markers);
    let kept = policy.keep_first + policy.keep_last;
    if starts.len() <= kept {
        return Err(CompactError::NothingToFold {
            turns: starts.len(),
            kept,
        });
    }
    let fold_from = starts[policy.keep_first];
    let fold_to = starts[starts.len() - policy.keep_last];
    let folded = starts.len() - kept;

    let summary = if policy.summary_tokens > 0 {
        // Ask for the summary at the end of the state; close an open turn first.
        let last_turn = &tokens[starts[starts.len() - 1]..];
        let open = !last_turn.contains(&end_of_turn);
        let close = if open {
            format!("{}{}", template.end_of_turn(), template.after_reply())
        } else {
            String::new()
        };
        let request = close
            + &template.turn(
                Some(Role::Assistant),
                Role::User,
                "Before going on: in a few sentences, what has happened so far?",
            )?
            + template.reply_prompt();
        let delta = engine.tokenize(&request).await.map_err(PackError::from)?;
        Some(
            pack.infer_tokens_or_replay(state, &delta, &Sampling::greedy(policy.summary_tokens))
                .await?,
        )
    } else {
        None
    };
    let note = match &summary {
        Some(s) => format!("[Summary of {folded} earlier turns: {}]", s.text.trim()),
        None => format!("[{folded} earlier turns omitted]"),
    };
    let note = template.turn(Some(Role::Assistant), Role::User, &note)?;
    let mut compacted = tokens[..fold_from].to_vec();
    compacted.extend(engine.tokenize(&note).await.map_err(PackError::from)?);
    compacted.extend_from_slice(&tokens[fold_to..]);
    let record = serde_json::json!({
        "kind": "fold_turns",
        "keep_first": policy.keep_first,
        "keep_last": policy.keep_last,
        "summary_tokens": policy.summary_tokens,
        "turns_folded": folded,
        "summary_receipt": summary.as_ref().map(|s| s.report.receipt.seq),
    });
    let report = pack.compact_tokens(state, compacted, record).await?;
    Ok(Compacted {
        report,
        folded,
        before: tokens.len(),
        summary,
    })
}

/// The seed protocol's compaction: `state`'s tokens followed by each of `deltas` (already
/// tokenized, each on its own) become one fresh state, whose parent is `state`: the client
/// folds the deltas it accumulated into a new base and drops the intermediate hashes. The
/// receipt's policy names it and counts the deltas.
pub async fn fold_deltas(
    pack: &StatePack,
    state: &StateHash,
    deltas: &[Vec<u32>],
) -> Result<Compacted, PackError> {
    let mut tokens = pack.tokens(state)?;
    let before = tokens.len();
    for d in deltas {
        tokens.extend_from_slice(d);
    }
    let record = serde_json::json!({
        "kind": "accumulated_deltas",
        "deltas": deltas.len(),
        "delta_tokens": tokens.len() - before,
    });
    let report = pack.compact_tokens(state, tokens, record).await?;
    Ok(Compacted {
        report,
        folded: deltas.len(),
        before,
        summary: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_start_at_markers() {
        assert_eq!(turn_starts(&[9, 1, 5, 6, 1, 7, 1], &[1]), vec![1, 4, 6]);
        assert_eq!(turn_starts(&[9, 1, 5, 2, 1], &[1, 2]), vec![1, 3, 4]);
        assert!(turn_starts(&[2, 3], &[1]).is_empty());
    }
}
