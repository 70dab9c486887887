//! The prefix index: which stored states a token sequence begins with.
//!
//! Each state has one row in `state_prefixes` keyed by the [`PrefixHash`] of its tokens on
//! its model. A request's tokens are hashed as a chain (one SHA-256 per token), and the
//! longest prefix whose chain hash is a key names the longest stored state the request
//! extends: index lookups, not a scan of the states. The index is derived data: rows missing
//! from databases written before it existed are filled when a writer opens the store, and a
//! hit is used only after the state's own tokens are checked against the request's.

use crate::ledger::sql::{params, values_from_iter, Db, OptionalExtension};

use super::{digest, OpKind, Store, StoreError, StoredState};
use crate::ledger::codec::blob_to_tokens;
use crate::ledger::hash::PrefixHash;
use crate::state::{ModelFingerprint, StateHash};

/// Chain hashes looked up per query.
const CHUNK: usize = 256;

/// Adds `s`'s row to the index (inside the transaction that inserts the state). A merge or
/// infer extends its input's tokens, so its chain continues from the input's row.
pub(super) fn index_state(tx: &Db, s: &StoredState) -> Result<(), StoreError> {
    let from_parent = match (s.op, s.parent) {
        (OpKind::Merge | OpKind::Infer, Some(parent)) => tx
            .prepare_cached("SELECT prefix, length FROM state_prefixes WHERE state = ?1")?
            .query_row([parent.as_bytes().as_slice()], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()?
            .and_then(|(prefix, len)| {
                let len = usize::try_from(len).ok()?;
                let prefix = <[u8; 32]>::try_from(prefix).ok()?;
                (len < s.tokens.len())
                    .then(|| PrefixHash::from_bytes(prefix).extend(&s.tokens[len..]))
            }),
        _ => None,
    };
    let Some(prefix) = from_parent.or_else(|| PrefixHash::of(&s.model, &s.tokens)) else {
        return Ok(());
    };
    tx.prepare_cached(
        "INSERT INTO state_prefixes (state, prefix, length) VALUES (?1, ?2, ?3)
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        s.hash.as_bytes().as_slice(),
        prefix.as_bytes().as_slice(),
        s.tokens.len() as i64
    ])?;
    Ok(())
}

/// Indexes every state that has no row yet (databases written before the index existed).
/// Returns how many were added.
pub(super) fn backfill(conn: &Db) -> Result<usize, StoreError> {
    let tx = conn.write()?;
    let missing: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = tx
        .prepare(
            "SELECT s.hash, s.model, s.tokens FROM states s
             LEFT JOIN state_prefixes p ON p.state = s.hash WHERE p.state IS NULL",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (hash, model, tokens) in &missing {
        let model = ModelFingerprint::from_bytes(digest(model.clone(), "states")?);
        let tokens = blob_to_tokens(tokens).ok_or_else(|| StoreError::Corrupt {
            table: "states",
            reason: "token blob length".into(),
        })?;
        if let Some(prefix) = PrefixHash::of(&model, &tokens) {
            tx.execute(
                "INSERT INTO state_prefixes (state, prefix, length) VALUES (?1, ?2, ?3)
         ON CONFLICT DO NOTHING",
                params![hash, prefix.as_bytes().as_slice(), tokens.len() as i64],
            )?;
        }
    }
    tx.commit()?;
    if !missing.is_empty() {
        tracing::info!(states = missing.len(), "prefix index filled in");
    }
    Ok(missing.len())
}

impl Store {
    /// The longest stored state on `model` whose tokens are a prefix of `tokens` and at most
    /// `max_len` long, if any.
    pub fn longest_prefix(
        &self,
        model: &ModelFingerprint,
        tokens: &[u32],
        max_len: usize,
    ) -> Result<Option<StoredState>, StoreError> {
        let tokens = &tokens[..max_len.min(tokens.len())];
        let chain = PrefixHash::chain(model, tokens);
        let mut end = chain.len();
        while end > 0 {
            let start = end.saturating_sub(CHUNK);
            let Some((hash, len)) = self.lookup(&chain[start..end])? else {
                end = start;
                continue;
            };
            match self.state(&hash)? {
                Some(s) if s.model == *model && tokens.starts_with(&s.tokens) => {
                    return Ok(Some(s))
                }
                _ => {
                    // The index is derived data: a row that disagrees with its state is
                    // skipped, never trusted.
                    tracing::warn!(state = %hash.short(), "prefix index row does not match its state");
                    end = len.saturating_sub(1).max(start).min(end - 1);
                }
            }
        }
        Ok(None)
    }

    /// The longest indexed state among `keys` (at most [`CHUNK`] of them).
    fn lookup(&self, keys: &[PrefixHash]) -> Result<Option<(StateHash, usize)>, StoreError> {
        let sql = format!(
            "SELECT state, length FROM state_prefixes WHERE prefix IN ({}) ORDER BY length DESC LIMIT 1",
            vec!["?"; keys.len()].join(",")
        );
        let row = self
            .conn()
            .prepare_cached(&sql)?
            .query_row(
                values_from_iter(keys.iter().map(|k| k.as_bytes().as_slice()))?,
                |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()?;
        row.map(|(state, len)| {
            Ok((
                StateHash::from_bytes(digest(state, "state_prefixes")?),
                usize::try_from(len).unwrap_or(0),
            ))
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{op, open_at, state, throwaway};
    use super::*;

    fn compacted(tokens: Vec<u32>, replaces: StateHash) -> StoredState {
        StoredState {
            op: OpKind::Compact,
            ..state(tokens, Some(replaces))
        }
    }

    fn found(s: &Store, tokens: &[u32], max_len: usize) -> Option<Vec<u32>> {
        let model = ModelFingerprint::from_bytes([1; 32]);
        s.longest_prefix(&model, tokens, max_len)
            .unwrap()
            .map(|s| s.tokens)
    }

    #[test]
    fn finds_the_longest_stored_prefix_and_survives_a_lost_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let a = state(vec![1, 2, 3], None);
        let b = state(vec![1, 2, 3, 4], Some(a.hash));
        let c = compacted(vec![1, 9], b.hash);
        {
            let mut s = open_at(&path);
            for x in [&a, &b, &c] {
                s.record(x, &op(x)).unwrap();
            }
            assert_eq!(found(&s, &[1, 2, 3, 4, 5], 5), Some(b.tokens.clone()));
            assert_eq!(found(&s, &[1, 2, 3, 4, 5], 3), Some(a.tokens.clone()));
            assert_eq!(found(&s, &[1, 2, 3, 4], 3), Some(a.tokens.clone()));
            assert_eq!(found(&s, &[1, 2], 2), None);
            assert_eq!(found(&s, &[1, 9, 9], 3), Some(c.tokens.clone()));
            assert_eq!(found(&s, &[2, 2, 3, 4], 4), None);
            // A long request: the hit is found across query chunks.
            let long: Vec<u32> = b.tokens.iter().copied().chain(100..1000).collect();
            assert_eq!(found(&s, &long, long.len()), Some(b.tokens.clone()));
            // Another model's chain never matches.
            let other = ModelFingerprint::from_bytes([2; 32]);
            assert!(s
                .longest_prefix(&other, &[1, 2, 3, 4], 4)
                .unwrap()
                .is_none());
            s.conn().execute("DELETE FROM state_prefixes", []).unwrap();
            assert_eq!(found(&s, &[1, 2, 3, 4, 5], 5), None);
        }
        // A writer opening the database fills the index in again.
        let s = open_at(&path);
        assert_eq!(found(&s, &[1, 2, 3, 4, 5], 5), Some(b.tokens.clone()));
        assert_eq!(found(&s, &[1, 9, 9], 3), Some(c.tokens));
    }

    #[test]
    fn an_index_row_that_disagrees_with_its_state_is_skipped() {
        let mut s = throwaway();
        let a = state(vec![1, 2], None);
        let b = state(vec![1, 2, 3], Some(a.hash));
        let other = state(vec![7, 7, 7, 7], None);
        for x in [&a, &b, &other] {
            s.record(x, &op(x)).unwrap();
        }
        // Point b's key at a state that is not a prefix of what b's key names.
        s.conn()
            .execute(
                "UPDATE state_prefixes SET state = ?1 WHERE state = ?2",
                [
                    other.hash.as_bytes().as_slice(),
                    b.hash.as_bytes().as_slice(),
                ],
            )
            .unwrap_err(); // the primary key refuses a second row for `other`
        s.conn()
            .execute(
                "DELETE FROM state_prefixes WHERE state = ?1",
                [other.hash.as_bytes().as_slice()],
            )
            .unwrap();
        s.conn()
            .execute(
                "UPDATE state_prefixes SET state = ?1 WHERE state = ?2",
                [
                    other.hash.as_bytes().as_slice(),
                    b.hash.as_bytes().as_slice(),
                ],
            )
            .unwrap();
        assert_eq!(found(&s, &[1, 2, 3, 4], 4), Some(a.tokens));
    }
}
