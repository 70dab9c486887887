//! The rows stored next to the signed log, checked against the receipts that vouch for them:
//! states (re-hashed from their tokens), operations rows (every column a receipt signs),
//! replays, and the columns kept beside signed bodies for indexes and listings (the
//! receipts' `op`, the checkpoints' `size`). A row that disagrees with its receipt is a
//! failure naming that receipt: a column is never trusted because it sits next to a
//! signature.

use std::collections::HashMap;

use crate::sql::{Db, OptionalExtension};

use super::Verifier;
use crate::checkpoint::SignedCheckpoint;
use crate::hash::{ModelFingerprint, StateHash};
use crate::log::LedgerError;
use crate::receipt::{canonical_bytes, Receipt, ReceiptOp};

pub(super) struct StateRow {
    model: Vec<u8>,
    parent: Option<Vec<u8>>,
    token_count: i64,
    tokens: Vec<u8>,
}

/// The columns of an operations row that its receipt signs.
pub(super) struct OperationRow {
    op: String,
    input: Option<Vec<u8>>,
    output: Vec<u8>,
    delta_tokens: i64,
    prefilled: i64,
    reused: i64,
    generated: i64,
    restored: i64,
    prefill_us: i64,
    decode_us: i64,
    total_us: i64,
    restore_us: i64,
    delta_hash: Option<Vec<u8>>,
    sampling: Option<String>,
    replay_of: Option<i64>,
}

/// Every operations row that names a receipt, by that receipt's seq.
pub(super) fn operation_rows(conn: &Db) -> Result<HashMap<u64, OperationRow>, LedgerError> {
    let mut stmt = conn.prepare(
        "SELECT receipt_seq, op, input, output, delta_tokens, prefilled, reused, generated,
                restored, prefill_us, decode_us, total_us, restore_us, delta_hash, sampling,
                replay_of
         FROM operations WHERE receipt_seq IS NOT NULL",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            OperationRow {
                op: r.get(1)?,
                input: r.get(2)?,
                output: r.get(3)?,
                delta_tokens: r.get(4)?,
                prefilled: r.get(5)?,
                reused: r.get(6)?,
                generated: r.get(7)?,
                restored: r.get(8)?,
                prefill_us: r.get(9)?,
                decode_us: r.get(10)?,
                total_us: r.get(11)?,
                restore_us: r.get(12)?,
                delta_hash: r.get(13)?,
                sampling: r.get(14)?,
                replay_of: r.get(15)?,
            },
        ))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (seq, op) = row?;
        out.insert(seq, op);
    }
    Ok(out)
}

/// Every stored checkpoint with its `size` column, smallest first.
pub(super) fn checkpoint_rows(conn: &Db) -> Result<Vec<(i64, SignedCheckpoint)>, LedgerError> {
    let mut stmt = conn.prepare("SELECT size, body, signature FROM checkpoints ORDER BY size")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (size, body, sig) = row?;
        out.push((
            size,
            SignedCheckpoint {
                body: String::from_utf8(body)
                    .map_err(|_| LedgerError::Corrupt("checkpoint body is not UTF-8".into()))?,
                signature: hex::encode(sig),
            },
        ));
    }
    Ok(out)
}

impl Verifier<'_> {
    pub(super) fn check_state(&mut self, seq: u64, r: &Receipt) -> Result<(), LedgerError> {
        let Some(out) = r.output_state else {
            self.fail(
                Some(seq),
                format!("receipt {seq}: {} names no output state", r.op.as_str()),
            );
            return Ok(());
        };
        if self.states_ok.contains(&out) {
            return Ok(());
        }
        let row = self
            .conn
            .prepare_cached(
                "SELECT model, parent, token_count, tokens FROM states WHERE hash = ?1",
            )?
            .query_row([out.as_bytes().as_slice()], |row| {
                Ok(StateRow {
                    model: row.get(0)?,
                    parent: row.get(1)?,
                    token_count: row.get(2)?,
                    tokens: row.get(3)?,
                })
            })
            .optional()?;
        let Some(row) = row else {
            self.fail(
                Some(seq),
                format!(
                    "receipt {seq}: its output state {} is not in the states table",
                    out.short()
                ),
            );
            return Ok(());
        };
        let Ok(model) =
            <[u8; 32]>::try_from(row.model.as_slice()).map(ModelFingerprint::from_bytes)
        else {
            self.fail(
                Some(seq),
                format!("state {}: model column is not 32 bytes", out.short()),
            );
            return Ok(());
        };
        let decoded = crate::codec::blob_to_tokens(&row.tokens);
        let tokens = decoded.as_deref().unwrap_or_default();
        let mut bad = Vec::new();
        if decoded.is_none() || StateHash::of(&model, tokens) != out {
            bad.push("its tokens do not hash to its address (state row altered)".to_string());
        }
        if Some(model) != r.model {
            bad.push("its model differs from the receipt's".into());
        }
        let state_len = r.tokens.map(|t| t.state);
        if state_len != Some(row.token_count as u64) || row.token_count as usize != tokens.len() {
            bad.push(format!(
                "it holds {} tokens, the receipt says {}",
                row.token_count,
                state_len.map_or("nothing".into(), |n| n.to_string())
            ));
        }
        let parent = row
            .parent
            .as_deref()
            .and_then(|p| <[u8; 32]>::try_from(p).ok())
            .map(StateHash::from_bytes);
        if r.op != ReceiptOp::Create && parent != r.input_state {
            bad.push("its parent differs from the receipt's input state".into());
        }
        if bad.is_empty() {
            self.states_ok.insert(out);
            self.report.states_checked += 1;
        } else {
            self.fail(
                Some(seq),
                format!("receipt {seq}: state {}: {}", out.short(), bad.join("; ")),
            );
        }
        Ok(())
    }

    /// A replayed infer repeats an earlier, engine-computed infer with the same key (input
    /// state, delta, sampling) and the same output, and claims no engine work.
    pub(super) fn check_replay(
        &mut self,
        seq: u64,
        r: &Receipt,
        of: u64,
    ) -> Result<(), LedgerError> {
        let mut bad = Vec::new();
        if r.op != ReceiptOp::Infer {
            bad.push(format!("a {} cannot be a replay", r.op.as_str()));
        }
        if r.tokens
            .is_none_or(|t| t.prefilled != 0 || t.reused != 0 || t.generated != 0)
        {
            bad.push("it claims engine work".into());
        }
        let earlier = if of < seq {
            self.conn
                .prepare_cached("SELECT body FROM receipts WHERE seq = ?1")?
                .query_row([of as i64], |row| row.get::<_, Vec<u8>>(0))
                .optional()?
                .and_then(|b| Receipt::from_body(&b).ok())
        } else {
            None
        };
        match earlier {
            None => bad.push(format!(
                "receipt {of} is not an earlier receipt of this log"
            )),
            Some(e) => {
                if e.op != ReceiptOp::Infer || e.replay_of.is_some() {
                    bad.push(format!("receipt {of} is not an engine-computed infer"));
                }
                if (e.input_state, e.delta_hash, &e.sampling, e.model)
                    != (r.input_state, r.delta_hash, &r.sampling, r.model)
                {
                    bad.push(format!(
                        "receipt {of} answered a different request (input, delta, sampling or model differ)"
                    ));
                }
                if e.output_state != r.output_state {
                    bad.push(format!("receipt {of} made a different output state"));
                }
            }
        }
        if !bad.is_empty() {
            self.fail(
                Some(seq),
                format!("receipt {seq}: replay of {of}: {}", bad.join("; ")),
            );
        }
        Ok(())
    }

    pub(super) fn check_operation(&mut self, seq: u64, r: &Receipt) {
        let Some(op) = self.operations.remove(&seq) else {
            self.fail(
                Some(seq),
                format!("receipt {seq}: no operations row refers to it (row deleted)"),
            );
            return;
        };
        let t = r.tokens;
        if let Some(t) = t.filter(|t| t.restored > t.reused) {
            self.fail(
                Some(seq),
                format!(
                    "receipt {seq}: claims {} tokens loaded from a KV blob, more than the {} reused",
                    t.restored, t.reused
                ),
            );
        }
        if let (Some(t), Some(tm)) = (t, r.timings) {
            if (t.restored > 0) != tm.restore_us.is_some() {
                self.fail(
                    Some(seq),
                    format!(
                        "receipt {seq}: a restore time must be signed exactly when tokens were restored"
                    ),
                );
            }
        }
        let bytes = |h: Option<&[u8; 32]>| h.map(|h| h.to_vec());
        let mut bad = Vec::new();
        if op.op != r.op.as_str() {
            bad.push(format!("op {} vs {}", op.op, r.op.as_str()));
        }
        if Some(op.output.as_slice()) != r.output_state.as_ref().map(|h| h.as_bytes().as_slice()) {
            bad.push("output state".into());
        }
        if op.input != bytes(r.input_state.as_ref().map(|h| h.as_bytes())) {
            bad.push("input state".into());
        }
        // Rows written before migration 0004 have no delta hash, sampling or replay columns;
        // a value that is there must be the signed one.
        if op.delta_hash.is_some()
            && op.delta_hash != bytes(r.delta_hash.as_ref().map(|h| h.as_bytes()))
        {
            bad.push("delta hash".into());
        }
        if let Some(col) = &op.sampling {
            let signed = r
                .sampling
                .as_ref()
                .and_then(|s| canonical_bytes(s).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            if signed.as_ref() != Some(col) {
                bad.push("sampling".into());
            }
        }
        if op.replay_of.is_some() && op.replay_of.map(|s| s as u64) != r.replay_of {
            bad.push("replay_of".into());
        }
        let counts = [
            ("delta tokens", op.delta_tokens, t.map(|t| t.delta)),
            ("prefilled", op.prefilled, t.map(|t| t.prefilled)),
            ("reused", op.reused, t.map(|t| t.reused)),
            ("generated", op.generated, t.map(|t| t.generated)),
            ("restored", op.restored, t.map(|t| t.restored)),
        ];
        let tm = r.timings;
        let times = [
            ("prefill_us", op.prefill_us, tm.map(|t| t.prefill_us)),
            ("decode_us", op.decode_us, tm.map(|t| t.decode_us)),
            ("total_us", op.total_us, tm.map(|t| t.total_us)),
        ];
        for (name, row, receipt) in counts.into_iter().chain(times) {
            if Some(row as u64) != receipt {
                bad.push(format!(
                    "{name} {row} vs {}",
                    receipt.map_or("none".into(), |n| n.to_string())
                ));
            }
        }
        if let Some(signed) = tm.and_then(|t| t.restore_us) {
            if op.restore_us as u64 != signed {
                bad.push(format!("restore_us {} vs {signed}", op.restore_us));
            }
        }
        if bad.is_empty() {
            self.report.operations_checked += 1;
        } else {
            self.fail(Some(seq), format!(
                "receipt {seq}: the operations row disagrees with the signed receipt ({}): operations table edited",
                bad.join(", ")
            ));
        }
    }

    /// A receipt's `kv` field describes a blob that can exist: a non-empty range inside the
    /// state, a parent exactly when the range does not start at 0 (and then the input
    /// state), and a SHA-256.
    pub(super) fn check_kv(&mut self, seq: u64, r: &Receipt) {
        let Some(kv) = &r.kv else { return };
        let state = r.tokens.map_or(0, |t| t.state);
        let mut bad = Vec::new();
        if kv.start >= kv.end || kv.end > state {
            bad.push(format!(
                "range {}..{} is not inside its {state}-token state",
                kv.start, kv.end
            ));
        }
        if (kv.start > 0) != kv.parent.is_some() {
            bad.push("a parent blob exactly when the range starts after 0".into());
        } else if kv.parent.is_some() && kv.parent != r.input_state {
            bad.push("its parent blob is not the input state's".into());
        }
        if kv.sha256.len() != 64 || !kv.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            bad.push("sha256 is not 64 hex characters".into());
        }
        if !r.op.makes_state() {
            bad.push(format!("a {} makes no state to have a blob", r.op.as_str()));
        }
        if !bad.is_empty() {
            self.fail(
                Some(seq),
                format!(
                    "receipt {seq}: its KV blob is impossible: {}",
                    bad.join("; ")
                ),
            );
        }
    }
}
