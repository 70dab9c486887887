//! The log in SQLite: appending receipts inside the caller's transaction, checkpoints, key
//! rotation, and reads for people and auditors.
//!
//! Appends take the log head *inside* the writing transaction, which the store opens with
//! `BEGIN IMMEDIATE`; so any number of tasks or processes appending to one database still
//! produce one chain with contiguous sequence numbers.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::sql::{params, Db, OptionalExtension, Row, SqlError};

use crate::checkpoint::{Checkpoint, ReceiptProof, SignedCheckpoint};
use crate::hash::{DeltaHash, ModelFingerprint, StateHash};
use crate::keys::{KeyError, PublicKey, Signer};
use crate::measured::{Timings, Tokens};
use crate::receipt::{
    BodyError, KeyId, LogId, Receipt, ReceiptHash, ReceiptKv, ReceiptOp, ReceiptRemote,
    RECEIPT_VERSION,
};
use crate::stored;

/// Receipts between automatic checkpoints, unless the store is told otherwise.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 64;

/// Errors from the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The given key is not the one this log is signed with now.
    #[error("this ledger is signed by key {ledger}, not by the given key {given}: pass the ledger's key with --key, or hand over with `state-pack keys rotate`")]
    WrongKey {
        /// The log's current key.
        ledger: KeyId,
        /// The key given.
        given: KeyId,
    },
    /// No receipt with this number.
    #[error("no receipt {0} in this ledger (see `state-pack receipts list`)")]
    NoSuchReceipt(u64),
    /// A stored row that does not parse; `state-pack verify` says more.
    #[error("corrupt ledger: {0} (run `state-pack verify` for a full report)")]
    Corrupt(String),
    /// The store is open without a signing key.
    #[error("this database is open read-only (no signing key): cannot append receipts")]
    ReadOnly,
    /// Key trouble.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Encoding trouble.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The database.
    #[error("ledger database error: {0}")]
    Sql(#[from] SqlError),
}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        LedgerError::Sql(e.into())
    }
}

/// Where a receipt is: its number and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReceiptRef {
    /// Sequence number.
    pub seq: u64,
    /// [`ReceiptHash`] of its body.
    pub hash: ReceiptHash,
}

/// The content of a receipt before the log stamps it (log id, seq, prev, key, time).
#[derive(Debug, Clone)]
pub struct ReceiptDraft {
    /// What happened.
    pub op: ReceiptOp,
    /// Input state.
    pub input_state: Option<StateHash>,
    /// Output state.
    pub output_state: Option<StateHash>,
    /// Hash of the appended tokens.
    pub delta_hash: Option<DeltaHash>,
    /// Model fingerprint.
    pub model: Option<ModelFingerprint>,
    /// Token counts.
    pub tokens: Option<Tokens>,
    /// Timings.
    pub timings: Option<Timings>,
    /// Whether the input was hot.
    pub input_was_hot: Option<bool>,
    /// Compaction policy.
    pub policy: Option<serde_json::Value>,
    /// Sampling parameters (infer).
    pub sampling: Option<serde_json::Value>,
    /// The receipt an infer answered from the store repeats.
    pub replay_of: Option<u64>,
    /// Public key carried by key events.
    pub public_key: Option<String>,
    /// The KV blob written for the output state.
    pub kv: Option<ReceiptKv>,
    /// The inference server that ran the operation.
    pub remote: Option<ReceiptRemote>,
}

impl ReceiptDraft {
    fn key_event(op: ReceiptOp, key: &PublicKey) -> Self {
        Self {
            op,
            input_state: None,
            output_state: None,
            delta_hash: None,
            model: None,
            tokens: None,
            timings: None,
            input_was_hot: None,
            policy: None,
            sampling: None,
            replay_of: None,
            public_key: Some(key.to_hex()),
            kv: None,
            remote: None,
        }
    }
}

/// A receipt row as stored.
#[derive(Debug, Clone)]
pub struct StoredReceipt {
    /// Its `seq` column.
    pub seq: u64,
    /// The body, verbatim.
    pub body: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
}

impl StoredReceipt {
    /// The parsed body.
    pub fn receipt(&self) -> Result<Receipt, BodyError> {
        Receipt::from_body(&self.body)
    }

    /// The hash of the stored body.
    pub fn hash(&self) -> ReceiptHash {
        ReceiptHash::of(&self.body)
    }
}

/// Milliseconds since the Unix epoch (0 on a clock before it): the time stamp of receipts,
/// operations and graph checkpoints.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The signing side of a log, held by a writable store.
pub struct Ledger {
    signer: Signer,
    log_id: LogId,
    checkpoint_every: u64,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ledger({}, {:?})", self.log_id.short(), self.signer)
    }
}

impl Ledger {
    /// Opens the log in `conn` for signing with `signer`: starts it (receipt 0, `open_log`) if
    /// it is empty, and otherwise checks that `signer` is its current key.
    pub fn attach(conn: &Db, signer: Signer, checkpoint_every: u64) -> Result<Self, LedgerError> {
        let tx = conn.write()?;
        let log_id = match log_id(&tx)? {
            Some(id) => {
                let (_, current) = current_key(&tx)?;
                if current.key_id() != signer.key_id() {
                    return Err(LedgerError::WrongKey {
                        ledger: current.key_id(),
                        given: signer.key_id(),
                    });
                }
                id
            }
            None => {
                let mut id = [0u8; 32];
                getrandom::fill(&mut id).map_err(|e| KeyError::Random(e.to_string()))?;
                LogId::from_bytes(id)
            }
        };
        let mut ledger = Self {
            signer,
            log_id,
            checkpoint_every: checkpoint_every.max(1),
        };
        if head(&tx)?.is_none() {
            let draft = ReceiptDraft::key_event(ReceiptOp::OpenLog, &ledger.signer.public_key());
            ledger.append(&tx, draft)?;
            tracing::info!(log_id = %ledger.log_id, key_id = %ledger.signer.key_id(), "opened a new receipt log");
        } else {
            // Logs written before the tree was stored get it now, once.
            stored::backfill(&tx)?;
        }
        tx.commit()?;
        Ok(ledger)
    }

    /// The log's id.
    pub fn log_id(&self) -> LogId {
        self.log_id
    }

    /// The current signer.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Stamps, signs and inserts the next receipt, and writes a checkpoint when one is due.
    /// Runs inside the caller's (immediate) transaction: the receipt commits with whatever
    /// else the transaction writes, or not at all.
    pub fn append(&mut self, tx: &Db, d: ReceiptDraft) -> Result<ReceiptRef, LedgerError> {
        let span = tracing::debug_span!("ledger.append", op = d.op.as_str());
        let _enter = span.enter();
        let (seq, prev) = match head(tx)? {
            Some((seq, hash)) => (seq + 1, hash),
            None => (0, ReceiptHash::ZERO),
        };
        let receipt = Receipt {
            v: RECEIPT_VERSION,
            log_id: self.log_id,
            seq,
            op: d.op,
            input_state: d.input_state,
            output_state: d.output_state,
            delta_hash: d.delta_hash,
            model: d.model,
            tokens: d.tokens,
            timings: d.timings,
            input_was_hot: d.input_was_hot,
            policy: d.policy,
            sampling: d.sampling,
            replay_of: d.replay_of,
            public_key: d.public_key,
            kv: d.kv,
            remote: d.remote,
            prev,
            key_id: self.signer.key_id(),
            timestamp_ms: now_ms(),
        };
        let body = receipt.to_body()?;
        let hash = ReceiptHash::of(&body);
        let signature = self.signer.sign(hash.as_bytes());
        tx.execute(
            "INSERT INTO receipts (seq, op, hash, body, signature) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                seq as i64,
                d.op.as_str(),
                hash.as_bytes().as_slice(),
                body,
                signature.as_slice()
            ],
        )?;
        stored::append_leaf(tx, seq, &hash)?;
        if (seq + 1).is_multiple_of(self.checkpoint_every) {
            self.checkpoint(tx)?;
        }
        Ok(ReceiptRef { seq, hash })
    }

    /// Writes a signed checkpoint of the log as it is in `tx`, unless one of this size exists.
    pub fn checkpoint(&mut self, tx: &Db) -> Result<Option<Checkpoint>, LedgerError> {
        let Some((last, head_hash)) = head(tx)? else {
            return Ok(None);
        };
        let size = last + 1;
        let exists: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM checkpoints WHERE size = ?1)",
            [size as i64],
            |r| r.get(0),
        )?;
        if exists {
            return Ok(None);
        }
        let root = stored::tree_root(tx, size)?;
        let cp = Checkpoint {
            v: 1,
            log_id: self.log_id,
            size,
            root,
            head: head_hash,
            key_id: self.signer.key_id(),
            timestamp_ms: now_ms(),
        };
        let signed = cp.sign(&self.signer)?;
        let sig =
            hex::decode(&signed.signature).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
        tx.execute(
            "INSERT INTO checkpoints (size, body, signature) VALUES (?1, ?2, ?3)",
            params![size as i64, signed.body.as_bytes(), sig],
        )?;
        stored::write_note(tx, &self.signer, &self.log_id, size, &root)?;
        tracing::debug!(size, root = %cp.root.short(), "checkpoint");
        Ok(Some(cp))
    }

    /// Hands the log over to `next`: a `rotate_key` receipt carrying `next`'s public key,
    /// signed by the current key and, as proof that `next`'s holder takes the log over, by
    /// `next` too (the `new_key_signature` column, over the same receipt hash); then a
    /// checkpoint signed by `next`. From then on `next` signs, and the old key's signatures
    /// on anything later are refused by `verify`.
    pub fn rotate(&mut self, conn: &Db, next: Signer) -> Result<ReceiptRef, LedgerError> {
        let tx = conn.write()?;
        let r = self.append(
            &tx,
            ReceiptDraft::key_event(ReceiptOp::RotateKey, &next.public_key()),
        )?;
        tx.execute(
            "UPDATE receipts SET new_key_signature = ?1 WHERE seq = ?2",
            params![next.sign(r.hash.as_bytes()).as_slice(), r.seq as i64],
        )?;
        let old = std::mem::replace(&mut self.signer, next);
        if let Err(e) = self.checkpoint(&tx) {
            self.signer = old;
            return Err(e);
        }
        if let Err(e) = tx.commit() {
            self.signer = old;
            return Err(e.into());
        }
        tracing::info!(from = %old.key_id(), to = %self.signer.key_id(), seq = r.seq, "rotated signing key");
        Ok(r)
    }
}

/// A `SELECT seq, body, signature` row.
fn stored_receipt(r: &Row) -> rusqlite::Result<StoredReceipt> {
    Ok(StoredReceipt {
        seq: r.get::<_, i64>(0)? as u64,
        body: r.get(1)?,
        signature: r.get(2)?,
    })
}

/// The last receipt's number and hash.
pub fn head(conn: &Db) -> Result<Option<(u64, ReceiptHash)>, LedgerError> {
    let row = conn
        .query_row(
            "SELECT seq, hash FROM receipts ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )
        .optional()?;
    row.map(|(seq, hash)| {
        let hash: [u8; 32] = hash
            .try_into()
            .map_err(|_| LedgerError::Corrupt("receipt hash column is not 32 bytes".into()))?;
        Ok((seq as u64, ReceiptHash::from_bytes(hash)))
    })
    .transpose()
}

/// The log id, from receipt 0.
pub fn log_id(conn: &Db) -> Result<Option<LogId>, LedgerError> {
    match receipt(conn, 0) {
        Ok(r) => Ok(Some(r.receipt()?.log_id)),
        Err(LedgerError::NoSuchReceipt(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every key event in order: `(first seq it signs, key)`. An `open_log` at 0 signs from 0; a
/// `rotate_key` at `s` (signed by the old key) hands over from `s + 1`.
pub fn key_schedule(conn: &Db) -> Result<Vec<(u64, PublicKey)>, LedgerError> {
    let mut stmt = conn.prepare(
        "SELECT seq, body, signature FROM receipts WHERE op IN ('open_log', 'rotate_key') ORDER BY seq",
    )?;
    let rows = stmt.query_map([], stored_receipt)?;
    let mut out = Vec::new();
    for row in rows {
        let stored = row?;
        let r = stored.receipt()?;
        let key = r.public_key.as_deref().ok_or_else(|| {
            LedgerError::Corrupt(format!("key event {} has no public key", stored.seq))
        })?;
        let from = if r.op == ReceiptOp::OpenLog {
            stored.seq
        } else {
            stored.seq + 1
        };
        out.push((from, PublicKey::from_hex(key)?));
    }
    Ok(out)
}

/// [`key_schedule`], each key event checked: `open_log` signed by the key it names, each
/// `rotate_key` by the key before it. A schedule that does not check is an error.
pub fn signed_key_schedule(conn: &Db) -> Result<Vec<(u64, PublicKey)>, LedgerError> {
    let mut out: Vec<(u64, PublicKey)> = Vec::new();
    for (from, key) in key_schedule(conn)? {
        // open_log signs from its own seq, rotate_key hands over after its seq.
        let (seq, signer) = match out.last() {
            None => (from, key),
            Some(&(_, previous)) => (from.saturating_sub(1), previous),
        };
        let stored = receipt(conn, seq)?;
        if !signer.verify(stored.hash().as_bytes(), &stored.signature) {
            return Err(LedgerError::Corrupt(format!(
                "key event {seq} is not signed by the key it hands over from"
            )));
        }
        out.push((from, key));
    }
    Ok(out)
}

/// The KV blobs the log vouches for as the blobs of `states`, one answer per state: the `kv`
/// field of the newest receipt that made the state and names one, once that receipt's
/// signature checks under the key the (checked) key events say was current at its seq.
/// `None` where no receipt vouches. The key schedule is read and checked once for all.
///
/// This is what lets a KV blob directory be untrusted: a blob is loaded into an engine only
/// when its bytes hash to what a signed receipt says.
pub fn vouched_kv(conn: &Db, states: &[StateHash]) -> Result<Vec<Option<ReceiptKv>>, LedgerError> {
    let mut schedule = None;
    let mut out = Vec::with_capacity(states.len());
    for state in states {
        let seqs: Vec<i64> = conn
            .prepare_cached(
                "SELECT receipt_seq FROM operations
                 WHERE output = ?1 AND receipt_seq IS NOT NULL ORDER BY seq DESC",
            )?
            .query_map([state.as_bytes().as_slice()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut vouched = None;
        for seq in seqs {
            let stored = receipt(conn, seq as u64)?;
            let r = stored.receipt()?;
            let Some(kv) = r.kv else { continue };
            if r.output_state != Some(*state) || r.seq != stored.seq {
                continue;
            }
            if schedule.is_none() {
                schedule = Some(signed_key_schedule(conn)?);
            }
            let key = schedule
                .iter()
                .flatten()
                .rev()
                .find(|(from, _)| *from <= stored.seq)
                .map(|&(_, k)| k);
            if key.is_some_and(|k| k.verify(stored.hash().as_bytes(), &stored.signature)) {
                vouched = Some(kv);
                break;
            }
            tracing::warn!(
                seq,
                "a receipt naming a KV blob does not verify: not trusting it"
            );
        }
        out.push(vouched);
    }
    Ok(out)
}

/// The key that signs the next receipt, with the seq it took over from.
pub fn current_key(conn: &Db) -> Result<(u64, PublicKey), LedgerError> {
    key_schedule(conn)?
        .pop()
        .ok_or_else(|| LedgerError::Corrupt("the log has no open_log receipt".into()))
}

/// The receipt `seq`.
pub fn receipt(conn: &Db, seq: u64) -> Result<StoredReceipt, LedgerError> {
    conn.query_row(
        "SELECT seq, body, signature FROM receipts WHERE seq = ?1",
        [seq as i64],
        stored_receipt,
    )
    .optional()?
    .ok_or(LedgerError::NoSuchReceipt(seq))
}

/// Receipts with `seq >= from`, in order, at most `limit`.
pub fn receipts(conn: &Db, from: u64, limit: u64) -> Result<Vec<StoredReceipt>, LedgerError> {
    let mut stmt = conn.prepare(
        "SELECT seq, body, signature FROM receipts WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(
        [from as i64, limit.min(i64::MAX as u64) as i64],
        stored_receipt,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every stored checkpoint, smallest first.
pub fn checkpoints(conn: &Db) -> Result<Vec<SignedCheckpoint>, LedgerError> {
    let mut stmt = conn.prepare("SELECT body, signature FROM checkpoints ORDER BY size")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (body, sig) = row?;
        out.push(SignedCheckpoint {
            body: String::from_utf8(body)
                .map_err(|_| LedgerError::Corrupt("checkpoint body is not UTF-8".into()))?,
            signature: hex::encode(sig),
        });
    }
    Ok(out)
}

/// The newest stored checkpoint.
pub fn latest_checkpoint(conn: &Db) -> Result<Option<SignedCheckpoint>, LedgerError> {
    let row = conn
        .query_row(
            "SELECT body, signature FROM checkpoints ORDER BY size DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )
        .optional()?;
    row.map(|(body, sig)| {
        Ok(SignedCheckpoint {
            body: String::from_utf8(body)
                .map_err(|_| LedgerError::Corrupt("checkpoint body is not UTF-8".into()))?,
            signature: hex::encode(sig),
        })
    })
    .transpose()
}

/// An inclusion proof of receipt `seq` against the latest checkpoint (which must cover it).
pub fn prove(conn: &Db, seq: u64) -> Result<ReceiptProof, LedgerError> {
    let stored = receipt(conn, seq)?;
    let schedule = key_schedule(conn)?;
    let receipt_key = signer_of(&schedule, seq)
        .ok_or_else(|| LedgerError::Corrupt(format!("no key signs receipt {seq}")))?;
    let signed = latest_checkpoint(conn)?
        .ok_or_else(|| LedgerError::Corrupt("the log has no checkpoint yet".into()))?;
    let cp = signed.checkpoint()?;
    if cp.size <= seq {
        return Err(LedgerError::Corrupt(format!(
            "receipt {seq} is newer than the latest checkpoint (size {}): run `state-pack receipts checkpoint` first",
            cp.size
        )));
    }
    let tree = stored::tree_reader(conn, cp.size)?;
    let proof = crate::tlog::prove_inclusion(cp.size, seq, &tree)?;
    let cp_key = schedule
        .into_iter()
        .map(|(_, k)| k)
        .find(|k| k.key_id() == cp.key_id)
        .ok_or_else(|| {
            LedgerError::Corrupt(format!("checkpoint signed by unknown key {}", cp.key_id))
        })?;
    Ok(ReceiptProof {
        seq,
        body: String::from_utf8(stored.body)
            .map_err(|_| LedgerError::Corrupt(format!("receipt {seq} body is not UTF-8")))?,
        signature: hex::encode(stored.signature),
        public_key: receipt_key.to_hex(),
        proof: proof.iter().map(hex::encode).collect(),
        checkpoint: signed,
        checkpoint_public_key: cp_key.to_hex(),
    })
}

/// The key that must have signed receipt `seq`, given the key schedule.
pub fn signer_of(schedule: &[(u64, PublicKey)], seq: u64) -> Option<PublicKey> {
    schedule
        .iter()
        .rev()
        .find(|(from, _)| *from <= seq)
        .map(|(_, k)| *k)
}
