//! The checks of the stored tree, the checkpoint notes and their cosignatures, the trust
//! anchor among the log's keys, and growth since a trusted checkpoint by consistency proof.

use crate::sql::OptionalExtension;

use super::*;
use crate::note::{CheckpointText, Note, NoteVerifier, ED25519};
use crate::stored;

impl Verifier<'_> {
    /// With trusted keys given and receipt 0's key not among them, a later key of the
    /// schedule may be the anchor, if its holder signed the rotation that handed it the log.
    pub(super) fn check_anchor(&mut self) {
        if !self.anchor_pending {
            return;
        }
        let anchor = self
            .schedule
            .iter()
            .find(|(_, k)| self.options.trusted_keys.contains(k))
            .copied();
        match anchor {
            Some((from, key)) if self.possessed.contains(&key.key_id()) => {
                self.report.warnings.push(format!(
                    "trust anchored at key {}, which took the log over at receipt {from} and signed that rotation; the receipts before it are vouched for by the signed key events that lead to it",
                    key.key_id().short()
                ));
            }
            Some((from, key)) => self.fail(Some(from.saturating_sub(1)), format!(
                "the trusted key {} took the log over at receipt {from} without signing that rotation: it cannot anchor the log",
                key.key_id().short()
            )),
            None => {
                let first = self.schedule.first().map(|(_, k)| k.key_id().short());
                self.fail(Some(0), format!(
                    "no key of this log is a trusted --pubkey (it was opened by key {}): the log was re-signed or replaced",
                    first.unwrap_or_default()
                ));
            }
        }
    }

    /// The stored tree (`tree_hashes`, what proofs and tiles are served from) is the tree of
    /// the receipts; rows missing are a warning (the next writer fills them).
    pub(super) fn check_stored_tree(&mut self) -> Result<(), LedgerError> {
        if self.schema_version < 7 {
            return Ok(());
        }
        let mut seen = 0u64;
        let mut wrong = Vec::new();
        let mut from = i64::MIN;
        loop {
            let rows = self.conn.query(
                "SELECT idx, hash FROM tree_hashes WHERE idx >= ?1 ORDER BY idx LIMIT ?2",
                [from, super::PAGE],
            )?;
            for row in &rows {
                let idx: i64 = row.get(0)?;
                let hash: Vec<u8> = row.get(1)?;
                seen += 1;
                match self.stored.get(idx as usize) {
                    Some(h) if h.as_slice() == hash.as_slice() => {}
                    _ => wrong.push(idx),
                }
                from = idx.saturating_add(1);
            }
            if (rows.len() as i64) < super::PAGE {
                break;
            }
        }
        if let Some(first) = wrong.first() {
            let (level, n) = tlog::split_stored_hash_index(*first as u64);
            self.fail(None, format!(
                "the stored tree differs from the receipts' at {} hashes (first: level {level}, number {n}): proofs and tiles served from it were altered",
                wrong.len()
            ));
        } else if seen < self.stored.len() as u64 {
            self.report.warnings.push(format!(
                "the stored tree holds {seen} of the log's {} tree hashes (a writer stores the rest when it next opens the log)",
                self.stored.len()
            ));
        }
        Ok(())
    }

    /// Each checkpoint's note says what its JSON checkpoint says, under the log's origin and
    /// the same key; the newest carries a valid cosignature of every witness required.
    pub(super) fn check_notes(&mut self) -> Result<(), LedgerError> {
        if self.schema_version < 7 {
            if !self.options.witnesses.is_empty() {
                self.fail(
                    None,
                    "this database predates checkpoint notes: no witness cosigned it",
                );
            }
            return Ok(());
        }
        let notes: Vec<(i64, String)> = self
            .conn
            .prepare("SELECT size, note FROM checkpoint_notes ORDER BY size")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let Some(log) = self.report.log_id else {
            return Ok(());
        };
        let origin = CheckpointText::origin_of(&log);
        for (size_col, text) in &notes {
            let what = format!("checkpoint note of size {size_col}");
            let Ok(note) = Note::parse(text) else {
                self.fail(None, format!("{what}: not a signed note"));
                continue;
            };
            let signed: Option<(Vec<u8>, Vec<u8>)> = self
                .conn
                .query_row(
                    "SELECT body, signature FROM checkpoints WHERE size = ?1",
                    [size_col],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let cp = signed.and_then(|(body, signature)| {
                SignedCheckpoint {
                    body: String::from_utf8(body).ok()?,
                    signature: hex::encode(signature),
                }
                .checkpoint()
                .ok()
            });
            let Some(cp) = cp else {
                self.fail(None, format!("{what}: no checkpoint of that size"));
                continue;
            };
            let expected = stored::checkpoint_text(&log, cp.size, &cp.root).encode();
            if note.text != expected || cp.size != *size_col as u64 {
                self.fail(
                    None,
                    format!(
                        "{what}: its text is not the checkpoint's (size, root or origin edited)"
                    ),
                );
                continue;
            }
            let Some(key) = self.known_keys.get(&cp.key_id).copied() else {
                continue; // the JSON checkpoint's own check reports the key
            };
            let signed_by_it =
                NoteVerifier::new(&origin, ED25519, key).is_ok_and(|v| note.verify(&v).is_ok());
            if !signed_by_it {
                self.fail(
                    None,
                    format!("{what}: not signed by the key that signed its checkpoint"),
                );
            }
        }
        if self.options.witnesses.is_empty() {
            return Ok(());
        }
        let newest = notes.last().and_then(|(_, t)| Note::parse(t).ok());
        for w in &self.options.witnesses.clone() {
            match &newest {
                Some(note) if note.cosigned_at(w).is_some() => {}
                Some(note) if note.verify(w).is_err() && note.signatures.iter().any(|s| s.name == w.name && s.key_id == w.key_id) => {
                    self.fail(None, format!("the newest checkpoint's cosignature by witness {} does not verify", w.name));
                }
                _ => self.fail(None, format!(
                    "the newest checkpoint carries no cosignature of witness {}: it was not witnessed",
                    w.name
                )),
            }
        }
        Ok(())
    }

    /// A trusted checkpoint given as a note: signed by a key of this log under its origin,
    /// and consistent with the log now.
    pub(super) fn check_trusted_note(&mut self, text: &str) -> bool {
        let what = "trusted checkpoint note";
        let (Ok(note), Some(log)) = (Note::parse(text), self.report.log_id) else {
            self.fail(
                None,
                format!("{what}: not a signed note, or the log has no receipt 0"),
            );
            return false;
        };
        let Ok(cp) = CheckpointText::parse(&note.text) else {
            self.fail(None, format!("{what}: not a checkpoint"));
            return false;
        };
        if cp.origin != CheckpointText::origin_of(&log) {
            self.fail(
                None,
                format!(
                    "{what}: it is the checkpoint of another log ({})",
                    cp.origin
                ),
            );
            return false;
        }
        let signed = self.candidate_keys().iter().any(|k| {
            NoteVerifier::new(&cp.origin, ED25519, *k).is_ok_and(|v| note.verify(&v).is_ok())
        });
        if !signed {
            self.fail(
                None,
                format!("{what}: its signature does not verify under any key of this log"),
            );
            return false;
        }
        self.consistent_to_now(what, cp.size, &MerkleRoot::from_bytes(cp.root))
    }

    /// The log now extends the tree of `size` leaves with root `root`: a consistency proof
    /// from that head to the current one, built from the recomputed tree, checks.
    pub(super) fn consistent_to_now(&mut self, what: &str, size: u64, root: &MerkleRoot) -> bool {
        let n = self.hashes.len() as u64;
        if size == 0 || size > n {
            self.fail(Some(n), format!(
                "{what} covers {size} receipts but the log holds {n}: receipts were deleted (truncation or rollback to an older copy)"
            ));
            return false;
        }
        let proved = tlog::prove_consistency(size, n, &self.stored).and_then(|p| {
            let now = tlog::tree_hash(n, &self.stored)?;
            tlog::check_consistency(&p, size, root.as_bytes(), n, &now)
        });
        if proved.is_err() {
            self.fail(None, format!(
                "{what} of size {size}: no consistency proof links it to the log now: history before receipt {size} was rewritten"
            ));
            return false;
        }
        true
    }
}
