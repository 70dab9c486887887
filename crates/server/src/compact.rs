//! `POST /compact` on an opaque chat-template state: the server does not know the client's
//! turns, so it finds them by the `<|im_start|>` token, keeps the first and last few
//! verbatim and folds the ones between into one note.

use state_pack_core::engine::Sampling;
use state_pack_core::pack::{Inference, OpReport, PackError, StatePack};
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
    /// The model has no chat-template markers.
    #[error("the model has no single <|im_start|> token, so turns cannot be found")]
    NoTurnMarker,
    /// Bad parameters.
    #[error("policy.keep_last must be at least 1 (the last turn may still be open)")]
    KeepLast,
    /// The pack failed.
    #[error(transparent)]
    Pack(#[from] PackError),
}

/// Start offsets of the turns of `tokens` (each at an `im_start` token); tokens before the
/// first marker belong to the head.
fn turn_starts(tokens: &[u32], im_start: u32) -> Vec<usize> {
    tokens
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == im_start)
        .map(|(i, _)| i)
        .collect()
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
    let marker = engine
        .tokenize("<|im_start|>")
        .await
        .map_err(PackError::from)?;
    let end_marker = engine
        .tokenize("<|im_end|>")
        .await
        .map_err(PackError::from)?;
    let ([im_start], [im_end]) = (marker.as_slice(), end_marker.as_slice()) else {
        return Err(CompactError::NoTurnMarker);
    };
    let tokens = pack.tokens(state)?;
    let starts = turn_starts(&tokens, *im_start);
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
        let open = !last_turn.contains(im_end);
        let request = format!(
            "{}<|im_start|>user\nBefore going on: in a few sentences, what has happened so far?<|im_end|>\n<|im_start|>assistant\n",
            if open { "<|im_end|>\n" } else { "" }
        );
        let delta = engine.tokenize(&request).await.map_err(PackError::from)?;
        Some(
            pack.infer_tokens_or_replay(state, &delta, &Sampling::greedy(policy.summary_tokens))
                .await?,
        )
    } else {
        None
    };
    let note = match &summary {
        Some(s) => format!(
            "<|im_start|>user\n[Summary of {folded} earlier turns: {}]<|im_end|>\n",
            s.text.trim()
        ),
        None => format!("<|im_start|>user\n[{folded} earlier turns omitted]<|im_end|>\n"),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_start_at_markers() {
        assert_eq!(turn_starts(&[9, 1, 5, 6, 1, 7, 1], 1), vec![1, 4, 6]);
        assert!(turn_starts(&[2, 3], 1).is_empty());
    }
}
