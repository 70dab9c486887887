//! SQLite persistence: states and the operations that made them.
//!
//! The schema and the connection belong to the ledger crate ([`crate::ledger::schema`],
//! [`crate::ledger::LedgerDb`]). A state and the operation that produced it are written in one
//! transaction with its signed receipt (see [`crate::ledger`]), so a crash leaves all three
//! or none.

use std::path::Path;

use crate::ledger::sql::{params, Db, OptionalExtension};

use crate::engine::FinishReason;
use crate::ledger::codec::{blob_to_tokens, tokens_to_blob};
use crate::ledger::log::{ReceiptDraft, StoredReceipt};
use crate::ledger::receipt::canonical_bytes;
use crate::ledger::receipt::ReceiptKv;
use crate::ledger::{
    Checkpoint, Ledger, LedgerDb, LedgerError, ReceiptProof, ReceiptRef, SignedCheckpoint, Signer,
    DEFAULT_CHECKPOINT_EVERY,
};
use crate::state::{DeltaHash, ModelFingerprint, StateHash};

mod prefix;
mod records;
pub use records::{
    OpKind, OperationRecord, OperationTotals, Recorded, RecordedInfer, StoreError, StoredState,
};

/// The SQLite store: states, operations, and the receipt ledger that signs them.
///
/// Built on the ledger crate's [`LedgerDb`], which owns the connection, the schema and the
/// signing side; the store adds the states and operations tables' reads and writes.
#[derive(Debug)]
pub struct Store {
    db: LedgerDb,
}

fn now_ms() -> i64 {
    i64::try_from(crate::ledger::log::now_ms()).unwrap_or(i64::MAX)
}

fn digest(b: Vec<u8>, table: &'static str) -> Result<[u8; 32], StoreError> {
    b.try_into().map_err(|_| StoreError::Corrupt {
        table,
        reason: "hash column is not 32 bytes".into(),
    })
}

impl Store {
    /// Opens (creating if needed) the database at `path`, brings its schema up to date and
    /// attaches the ledger signed by `signer`: a new database starts its log (receipt 0), an
    /// existing one must be signed by `signer` now (see [`Store::rotate_key`]).
    pub fn open(path: &Path, signer: Signer) -> Result<Self, StoreError> {
        Self::open_with(path, signer, DEFAULT_CHECKPOINT_EVERY)
    }

    /// [`open`](Self::open), writing a signed checkpoint every `checkpoint_every` receipts.
    pub fn open_with(
        path: &Path,
        signer: Signer,
        checkpoint_every: u64,
    ) -> Result<Self, StoreError> {
        Self::with_db(LedgerDb::open_with(path, signer, checkpoint_every)?)
    }

    /// The store at `location`: an SQLite file, or a Postgres database
    /// (`postgres://user:password@host:port/dbname`) that several servers may share.
    pub fn open_location(
        location: &str,
        signer: Signer,
        checkpoint_every: u64,
    ) -> Result<Self, StoreError> {
        if state_pack_postgres::is_url(location) {
            Self::open_db(postgres(location)?, signer, checkpoint_every)
        } else {
            Self::open_with(Path::new(location), signer, checkpoint_every)
        }
    }

    /// [`open_location`](Self::open_location) without a signing key: reads only.
    pub fn open_location_for_reading(location: &str) -> Result<Self, StoreError> {
        if state_pack_postgres::is_url(location) {
            Self::open_db_for_reading(postgres(location)?)
        } else {
            Self::open_for_reading(Path::new(location))
        }
    }

    /// A store on a connection of any backend (Postgres through `state-pack-postgres`):
    /// the schema brought up to date, the ledger attached, signed by `signer`. Several
    /// processes may open one database this way and share one log.
    pub fn open_db(conn: Db, signer: Signer, checkpoint_every: u64) -> Result<Self, StoreError> {
        Self::with_db(LedgerDb::open_db(conn, signer, checkpoint_every)?)
    }

    /// A store that only reads, on a connection of any backend.
    pub fn open_db_for_reading(conn: Db) -> Result<Self, StoreError> {
        Ok(Self {
            db: LedgerDb::open_db_for_reading(conn)?,
        })
    }

    fn with_db(db: LedgerDb) -> Result<Self, StoreError> {
        prefix::backfill(db.conn())?;
        Ok(Self { db })
    }

    /// Opens the database at `path` without a signing key: everything can be read, nothing
    /// recorded.
    pub fn open_for_reading(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            db: LedgerDb::open_for_reading(path)?,
        })
    }

    /// A throwaway in-memory store, for tests and benchmarks.
    pub fn open_in_memory(signer: Signer) -> Result<Self, StoreError> {
        Ok(Self {
            db: LedgerDb::open_in_memory(signer)?,
        })
    }

    /// The connection, for the modules that keep their own tables here (graph checkpoints).
    pub(crate) fn conn(&self) -> &Db {
        self.db.conn()
    }

    /// A new connection to this store's database (graph checkpoints and a server's reads
    /// keep their own); `None` for an in-memory store.
    pub fn connect_again(&self) -> Option<Result<Db, StoreError>> {
        Some(self.conn().connect_again()?.map_err(StoreError::from))
    }

    /// Where the database is: its file, or its URL with the password masked.
    pub fn location(&self) -> &str {
        self.conn().label()
    }

    /// Receipts in the log: the next receipt's seq.
    pub fn receipt_count(&self) -> Result<u64, StoreError> {
        Ok(self.db.receipt_count()?)
    }

    /// The database file, if on disk.
    pub fn path(&self) -> Option<&Path> {
        self.db.path()
    }

    /// The state `hash`, if stored.
    pub fn state(&self, hash: &StateHash) -> Result<Option<StoredState>, StoreError> {
        let row = self
            .conn()
            .query_row(
                "SELECT model, parent, op, tokens FROM states WHERE hash = ?1",
                [hash.as_bytes().as_slice()],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, Option<Vec<u8>>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((model, parent, op, tokens)) = row else {
            return Ok(None);
        };
        let corrupt = |reason: &str| StoreError::Corrupt {
            table: "states",
            reason: format!("{reason} in state {hash}"),
        };
        Ok(Some(StoredState {
            hash: *hash,
            model: ModelFingerprint::from_bytes(digest(model, "states")?),
            parent: parent
                .map(|p| digest(p, "states").map(StateHash::from_bytes))
                .transpose()?,
            op: OpKind::parse(&op).ok_or_else(|| corrupt("unknown op"))?,
            tokens: blob_to_tokens(&tokens).ok_or_else(|| corrupt("token blob length"))?,
        }))
    }

    /// Records `state` (if new), the operation that produced it and its signed receipt, in
    /// one transaction.
    pub fn record(
        &mut self,
        state: &StoredState,
        op: &OperationRecord,
    ) -> Result<Recorded, StoreError> {
        let (conn, ledger) = self.db.parts_mut();
        let ledger = ledger.ok_or(LedgerError::ReadOnly)?;
        let tx = conn.write()?;
        if insert_state(&tx, state)? {
            prefix::index_state(&tx, state)?;
        }
        let receipt = ledger.append(
            &tx,
            ReceiptDraft {
                op: op.op.receipt_op(),
                input_state: op.input,
                output_state: Some(op.output),
                delta_hash: Some(op.delta_hash),
                model: Some(state.model),
                tokens: Some(op.measured.tokens),
                timings: Some(op.measured.timings),
                input_was_hot: op.input_was_hot,
                policy: op.policy.clone(),
                sampling: op.sampling.clone(),
                replay_of: op.replay_of,
                public_key: None,
                kv: op.kv.clone(),
                remote: op.remote.clone(),
            },
        )?;
        let sampling = op
            .sampling
            .as_ref()
            .map(canonical_bytes)
            .transpose()
            .map_err(LedgerError::from)?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let (t, tm) = (op.measured.tokens, op.measured.timings);
        let operation = tx.query_row(
            "INSERT INTO operations (op, input, output, delta_tokens, prompt_tokens, prefilled,
                 reused, generated, prefill_us, decode_us, total_us, output_text, created_at,
                 receipt_seq, delta_hash, sampling, finish, replay_of, restored, restore_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                 ?17, ?18, ?19, ?20)
             RETURNING seq",
            params![
                op.op.as_str(),
                op.input.map(|h| h.as_bytes().to_vec()),
                op.output.as_bytes().as_slice(),
                t.delta as i64,
                op.prompt_tokens as i64,
                t.prefilled as i64,
                t.reused as i64,
                t.generated as i64,
                tm.prefill_us as i64,
                tm.decode_us as i64,
                tm.total_us as i64,
                op.output_text,
                now_ms(),
                receipt.seq as i64,
                op.delta_hash.as_bytes().as_slice(),
                sampling,
                op.finish.map(finish_name),
                op.replay_of.map(|s| s as i64),
                t.restored as i64,
                tm.restore_us.unwrap_or(0) as i64,
            ],
            |r| r.get::<_, i64>(0),
        )? as u64;
        tx.commit()?;
        Ok(Recorded { operation, receipt })
    }

    /// The ledger's signing side, if the store was opened with a key.
    pub fn ledger(&self) -> Option<&Ledger> {
        self.db.ledger()
    }

    /// Writes a signed checkpoint of the whole log now (a no-op if the newest receipt is
    /// already covered). Also done when a signing store is dropped.
    pub fn checkpoint(&mut self) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self.db.checkpoint()?)
    }

    /// Hands signing over to `next`: a `rotate_key` receipt signed by the current key that
    /// carries `next`'s public key. Returns that receipt.
    pub fn rotate_key(&mut self, next: Signer) -> Result<ReceiptRef, StoreError> {
        Ok(self.db.rotate_key(next)?)
    }

    /// Receipt `seq` as stored.
    pub fn receipt(&self, seq: u64) -> Result<StoredReceipt, StoreError> {
        Ok(self.db.receipt(seq)?)
    }

    /// Up to `limit` receipts from `from` on.
    pub fn receipts(&self, from: u64, limit: u64) -> Result<Vec<StoredReceipt>, StoreError> {
        Ok(self.db.receipts(from, limit)?)
    }

    /// The newest signed checkpoint.
    pub fn latest_checkpoint(&self) -> Result<Option<SignedCheckpoint>, StoreError> {
        Ok(self.db.latest_checkpoint()?)
    }

    /// The newest checkpoint as a C2SP signed note, with any witness cosignatures.
    pub fn checkpoint_note(&self) -> Result<Option<String>, StoreError> {
        Ok(crate::ledger::stored::note_at(self.conn(), None)?)
    }

    /// The bytes of a tlog-tiles tile (`tile/...` path parsed) of the log as of its newest
    /// checkpoint note, or `None` if the tile does not exist at that size.
    pub fn tile(&self, tile: &crate::ledger::tiles::Tile) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(note) = self.checkpoint_note()? else {
            return Ok(None);
        };
        let size = crate::ledger::note::Note::parse(&note)
            .ok()
            .and_then(|n| crate::ledger::note::CheckpointText::parse(&n.text).ok())
            .map(|t| t.size)
            .ok_or_else(|| StoreError::Corrupt {
                table: "checkpoint_notes",
                reason: "the newest note is not a checkpoint".into(),
            })?;
        Ok(crate::ledger::stored::tile_bytes(self.conn(), tile, size)?)
    }

    /// An inclusion proof of receipt `seq` against the newest checkpoint; with a signing key,
    /// a checkpoint covering the whole log is written first if needed.
    pub fn prove(&mut self, seq: u64) -> Result<ReceiptProof, StoreError> {
        Ok(self.db.prove(seq)?)
    }

    /// The KV blobs the signed log vouches for as the blobs of `states`, one answer each
    /// ([`ledger::log::vouched_kv`]).
    ///
    /// [`ledger::log::vouched_kv`]: crate::ledger::log::vouched_kv
    pub fn vouched_kv(&self, states: &[StateHash]) -> Result<Vec<Option<ReceiptKv>>, StoreError> {
        Ok(crate::ledger::log::vouched_kv(self.conn(), states)?)
    }

    /// The newest infer (not itself a replay) from `input` with delta `delta` under
    /// `sampling`, if one was recorded: a deterministic request with the same key would
    /// produce the same tokens, so its result can be repeated without the engine.
    pub fn find_infer(
        &self,
        input: &StateHash,
        delta: &DeltaHash,
        sampling: &serde_json::Value,
    ) -> Result<Option<RecordedInfer>, StoreError> {
        let sampling = canonical_bytes(sampling).map_err(LedgerError::from)?;
        let row = self
            .conn()
            .prepare_cached(
                "SELECT receipt_seq, output, output_text, finish FROM operations
                 WHERE op = 'infer' AND replay_of IS NULL
                   AND input = ?1 AND delta_hash = ?2 AND sampling = ?3
                   AND receipt_seq IS NOT NULL
                 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(
                params![
                    input.as_bytes().as_slice(),
                    delta.as_bytes().as_slice(),
                    String::from_utf8_lossy(&sampling),
                ],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                },
            )
            .optional()?;
        let Some((seq, output, text, finish)) = row else {
            return Ok(None);
        };
        Ok(Some(RecordedInfer {
            receipt_seq: seq as u64,
            output: digest(output, "operations").map(StateHash::from_bytes)?,
            text: text.unwrap_or_default(),
            finish: match finish.as_deref() {
                Some("stop") => FinishReason::Stop,
                Some("length") => FinishReason::Length,
                _ => {
                    return Err(StoreError::Corrupt {
                        table: "operations",
                        reason: format!("infer receipt {seq} has no finish reason"),
                    })
                }
            },
        }))
    }

    /// The newest infers (not replays) from `input` with the delta `delta`, under any
    /// sampling, at most `limit`: their output states and generated texts.
    pub fn infers_from(
        &self,
        input: &StateHash,
        delta: &DeltaHash,
        limit: usize,
    ) -> Result<Vec<(StateHash, String)>, StoreError> {
        let rows = self
            .conn()
            .prepare_cached(
                "SELECT output, output_text FROM operations
                 WHERE op = 'infer' AND replay_of IS NULL AND input = ?1 AND delta_hash = ?2
                 ORDER BY seq DESC LIMIT ?3",
            )?
            .query_map(
                params![
                    input.as_bytes().as_slice(),
                    delta.as_bytes().as_slice(),
                    limit as i64
                ],
                |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Option<String>>(1)?)),
            )?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(o, t)| {
                Ok((
                    StateHash::from_bytes(digest(o, "operations")?),
                    t.unwrap_or_default(),
                ))
            })
            .collect()
    }

    /// Number of stored states.
    pub fn state_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM states", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    /// Totals over every recorded operation.
    pub fn totals(&self) -> Result<OperationTotals, StoreError> {
        Ok(self.conn().query_row(
            "SELECT count(*), CAST(coalesce(sum(prefilled), 0) AS BIGINT),
                    CAST(coalesce(sum(reused), 0) AS BIGINT),
                    CAST(coalesce(sum(generated), 0) AS BIGINT) FROM operations",
            [],
            |r| {
                Ok(OperationTotals {
                    operations: r.get::<_, i64>(0)? as u64,
                    prefilled: r.get::<_, i64>(1)? as u64,
                    reused: r.get::<_, i64>(2)? as u64,
                    generated: r.get::<_, i64>(3)? as u64,
                })
            },
        )?)
    }

    /// The output state of the latest operation, if any: where a continued run picks up.
    pub fn latest_output(&self) -> Result<Option<StateHash>, StoreError> {
        self.conn()
            .query_row(
                "SELECT output FROM operations ORDER BY seq DESC LIMIT 1",
                [],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?
            .map(|b| digest(b, "operations").map(StateHash::from_bytes))
            .transpose()
    }
}

/// A connection to the Postgres database at `url`; an unreachable one is an open error
/// naming the (masked) URL.
fn postgres(url: &str) -> Result<Db, StoreError> {
    state_pack_postgres::connect(url).map_err(|source| {
        StoreError::Db(crate::ledger::DbError::Open {
            location: state_pack_postgres::masked(url),
            source,
        })
    })
}

fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// Inserts `s` unless it is stored already; whether it was new.
fn insert_state(tx: &Db, s: &StoredState) -> Result<bool, StoreError> {
    let inserted = tx.execute(
        "INSERT INTO states (hash, model, parent, op, token_count, tokens, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        params![
            s.hash.as_bytes().as_slice(),
            s.model.as_bytes().as_slice(),
            s.parent.map(|p| p.as_bytes().to_vec()),
            s.op.as_str(),
            s.tokens.len() as i64,
            tokens_to_blob(&s.tokens),
            now_ms(),
        ],
    )?;
    Ok(inserted == 1)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::ledger::measured::{Measured, Timings, Tokens};
    use std::time::Duration;

    pub(crate) fn state(tokens: Vec<u32>, parent: Option<StateHash>) -> StoredState {
        let model = ModelFingerprint::from_bytes([1; 32]);
        StoredState {
            hash: StateHash::of(&model, &tokens),
            model,
            parent,
            op: if parent.is_some() {
                OpKind::Merge
            } else {
                OpKind::Create
            },
            tokens,
        }
    }

    pub(crate) fn key() -> Signer {
        Signer::from_seed([5; 32])
    }

    /// The store a test keeps at `path`: that SQLite file, or, with
    /// `STATE_PACK_TEST_POSTGRES` naming a Postgres server (`.ci/run` starts one), a database
    /// made for `path` the first time it is asked for.
    pub(crate) fn open_at(path: &Path) -> Store {
        let Some(server) = std::env::var("STATE_PACK_TEST_POSTGRES")
            .ok()
            .filter(|s| !s.is_empty())
        else {
            return Store::open(path, key()).unwrap();
        };
        static MADE: std::sync::Mutex<Vec<(std::path::PathBuf, String)>> =
            std::sync::Mutex::new(Vec::new());
        let mut made = MADE.lock().unwrap();
        let url = match made.iter().find(|(p, _)| p == path) {
            Some((_, url)) => url.clone(),
            None => {
                let url = state_pack_postgres::create_database(&server).unwrap();
                made.push((path.to_path_buf(), url.clone()));
                url
            }
        };
        Store::open_location(&url, key(), DEFAULT_CHECKPOINT_EVERY).unwrap()
    }

    /// A throwaway store: in memory, or a fresh Postgres database (see [`open_at`]).
    pub(crate) fn throwaway() -> Store {
        let dir = tempfile::tempdir().unwrap();
        match std::env::var("STATE_PACK_TEST_POSTGRES") {
            Ok(s) if !s.is_empty() => open_at(&dir.path().join("throwaway.db")),
            _ => Store::open_in_memory(key()).unwrap(),
        }
    }

    pub(crate) fn op(s: &StoredState) -> OperationRecord {
        let n = s.tokens.len() as u64;
        let measured = Measured {
            tokens: Tokens {
                delta: 1,
                state: n,
                prefilled: 1,
                reused: n - 1,
                ..Tokens::default()
            },
            timings: Timings::new(
                Duration::from_millis(3),
                Duration::ZERO,
                Duration::from_millis(4),
                None,
            ),
        };
        let delta = DeltaHash::of(&s.model, &s.tokens[s.tokens.len() - 1..]);
        OperationRecord {
            input_was_hot: s.parent.map(|_| true),
            prompt_tokens: s.tokens.len(),
            ..OperationRecord::new(s.op, s.parent, s.hash, delta, measured)
        }
    }

    #[test]
    fn states_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let a = state(vec![1, 2, 3], None);
        let b = state(vec![1, 2, 3, 4], Some(a.hash));
        {
            let mut s = open_at(&path);
            s.record(&a, &op(&a)).unwrap();
            s.record(&b, &op(&b)).unwrap();
        }
        let s = open_at(&path);
        assert_eq!(s.state(&b.hash).unwrap().unwrap(), b);
        assert_eq!(s.state_count().unwrap(), 2);
        assert_eq!(s.totals().unwrap().operations, 2);
        assert_eq!(s.latest_output().unwrap(), Some(b.hash));
    }

    #[test]
    fn failed_operation_leaves_no_state_row() {
        let mut s = throwaway();
        // The parent does not exist: the foreign key fails inside the transaction.
        let orphan = state(vec![9, 9], Some(StateHash::from_bytes([3; 32])));
        assert!(s.record(&orphan, &op(&orphan)).is_err());
        assert!(s.state(&orphan.hash).unwrap().is_none());
        assert_eq!(s.totals().unwrap().operations, 0);
        // Nor a receipt: the log still holds only its open_log receipt.
        assert_eq!(s.receipts(0, 10).unwrap().len(), 1);
    }

    #[test]
    fn unwritable_path_is_a_clear_error() {
        let e =
            Store::open(Path::new("/proc/definitely/not/here.db"), key()).expect_err("must fail");
        let text = e.to_string();
        assert!(
            text.contains("cannot open database /proc/definitely"),
            "{text}"
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        rusqlite::Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            Store::open(&path, key()),
            Err(StoreError::Db(crate::ledger::DbError::TooNew {
                found: 99,
                ..
            }))
        ));
    }
}
