//! `state-pack verify`: check a ledger offline, trusting nothing in the database.
//!
//! Every receipt's canonical form, signature (strict Ed25519, under the key the log's own
//! signed key events say was current), link to its predecessor and sequence number; every
//! state a receipt names (re-hashed from its tokens); every column stored next to a signed
//! body — the operations rows, the receipts' `op` and `hash`, the checkpoints' `size`
//! (`rows`) — against that body; every checkpoint (signature, size, Merkle root, head); and, given a checkpoint
//! the auditor saved earlier, that the log has only grown since.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::OpenFlags;

use crate::sql::Db;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, MerkleRoot, SignedCheckpoint};
use crate::hash::StateHash;
use crate::keys::PublicKey;
use crate::log::{signer_of, LedgerError};
use crate::note::NoteVerifier;
use crate::receipt::{KeyId, LogId, Receipt, ReceiptHash, ReceiptOp};
use crate::tlog::{self, Hash};

mod rows;
mod tree;
use rows::OperationRow;

/// What an auditor trusts going in.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Keys one of which must be in the log's signed key schedule: the first key, or a key
    /// the log was handed to by a rotation its new key signed too (proof of possession).
    /// Empty: trust the key receipt 0 names (and say so in the report).
    pub trusted_keys: Vec<PublicKey>,
    /// A checkpoint saved from an earlier verification (or fetched from the server).
    pub trusted_checkpoint: Option<TrustedCheckpoint>,
    /// Witnesses (cosigner vkeys) each of whom must have cosigned the log's newest
    /// checkpoint note.
    pub witnesses: Vec<NoteVerifier>,
}

/// A log head an auditor saw before: a signed checkpoint, or the head `verify` observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TrustedCheckpoint {
    /// A checkpoint signed by the log.
    Signed(SignedCheckpoint),
    /// A head computed by `state-pack verify` when the log's newest receipts were not yet
    /// covered by a signed checkpoint.
    Observed(ObservedHead),
    /// A C2SP checkpoint note (`GET /checkpoint` as text, `receipts checkpoint --format
    /// note`), signed by a key of the log under its origin.
    Note(String),
}

/// A log head computed by the verifier itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservedHead {
    /// The log.
    pub log_id: LogId,
    /// Receipts.
    pub size: u64,
    /// Merkle root over them.
    pub root: MerkleRoot,
    /// Hash of the last.
    pub head: ReceiptHash,
}

impl TrustedCheckpoint {
    fn head(&self) -> Result<ObservedHead, String> {
        match self {
            TrustedCheckpoint::Observed(h) => Ok(h.clone()),
            TrustedCheckpoint::Signed(s) => {
                let c = s.checkpoint().map_err(|e| e.to_string())?;
                Ok(ObservedHead {
                    log_id: c.log_id,
                    size: c.size,
                    root: c.root,
                    head: c.head,
                })
            }
            TrustedCheckpoint::Note(_) => Err("a note names no receipt head".into()),
        }
    }

    /// The size it covers.
    fn size(&self) -> Option<u64> {
        match self {
            TrustedCheckpoint::Note(n) => crate::note::Note::parse(n)
                .ok()
                .and_then(|n| crate::note::CheckpointText::parse(&n.text).ok())
                .map(|t| t.size),
            other => other.head().ok().map(|h| h.size),
        }
    }
}

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The receipt it concerns, if one.
    pub seq: Option<u64>,
    /// What is wrong, in words.
    pub message: String,
}

/// What verification found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The log, if receipt 0 could be read.
    pub log_id: Option<LogId>,
    /// Receipts read.
    pub receipts: u64,
    /// Signatures that verified.
    pub signatures_ok: u64,
    /// Distinct states re-hashed from their tokens.
    pub states_checked: u64,
    /// Operations rows matched against receipts.
    pub operations_checked: u64,
    /// Stored checkpoints checked.
    pub checkpoints: u64,
    /// Keys in the log's key schedule.
    pub keys: Vec<KeyId>,
    /// The head of the verified log (what `--save-checkpoint` writes if no signed checkpoint
    /// covers it).
    pub head: Option<ObservedHead>,
    /// The newest stored checkpoint, if it covers the whole log.
    pub covering_checkpoint: Option<SignedCheckpoint>,
    /// Whether a trusted checkpoint was given and the log is consistent with it.
    pub trusted_checkpoint_ok: Option<bool>,
    /// Notes that are not failures (e.g. which key was trusted on first use).
    pub warnings: Vec<String>,
    /// Everything wrong, in log order.
    pub failures: Vec<Failure>,
    /// Time spent.
    pub elapsed: Duration,
}

impl VerifyReport {
    /// Whether the ledger verified.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// The first receipt named in a failure.
    pub fn first_bad_receipt(&self) -> Option<u64> {
        self.failures.iter().filter_map(|f| f.seq).min()
    }

    /// What `--save-checkpoint` writes: the covering signed checkpoint, else the observed head.
    pub fn checkpoint_to_save(&self) -> Option<TrustedCheckpoint> {
        match (&self.covering_checkpoint, &self.head) {
            (Some(s), _) => Some(TrustedCheckpoint::Signed(s.clone())),
            (None, Some(h)) => Some(TrustedCheckpoint::Observed(h.clone())),
            _ => None,
        }
    }
}

/// Opens `db` read-only and verifies its ledger.
pub fn verify_file(db: &Path, options: &VerifyOptions) -> Result<VerifyReport, LedgerError> {
    if !db.is_file() {
        return Err(LedgerError::Corrupt(format!(
            "{} does not exist",
            db.display()
        )));
    }
    let conn = rusqlite::Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    verify(&Db::sqlite(conn, db.display().to_string()), options)
}

/// Receipts read per statement: the log is verified in pages, so memory stays bounded.
const PAGE: i64 = 4096;

/// Verifies the ledger in `conn`, in one read transaction: a log that writers are appending
/// to is verified as it was when verification began.
pub fn verify(conn: &Db, options: &VerifyOptions) -> Result<VerifyReport, LedgerError> {
    let started = Instant::now();
    let snapshot = conn.read()?;
    let conn: &Db = &snapshot;
    let mut v = Verifier::new(conn, options)?;
    // Rotations carry the new key's signature from schema version 7 on.
    let pop_column = if v.schema_version >= 7 {
        "new_key_signature"
    } else {
        "NULL"
    };
    let sql = format!(
        "SELECT seq, op, hash, body, signature, {pop_column} FROM receipts
         WHERE seq >= ?1 ORDER BY seq LIMIT ?2"
    );
    let mut from = i64::MIN;
    loop {
        let rows = conn.query(&sql, [from, PAGE])?;
        for row in &rows {
            let seq = row.get::<_, i64>(0)?;
            let op_col: String = row.get(1)?;
            let hash_col: Vec<u8> = row.get(2)?;
            let body: Vec<u8> = row.get(3)?;
            let sig: Vec<u8> = row.get(4)?;
            let pop: Option<Vec<u8>> = row.get(5)?;
            v.receipt(seq, &op_col, &hash_col, &body, &sig, pop.as_deref())?;
            from = seq.saturating_add(1);
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    let report = v.finish(started);
    drop(snapshot);
    report
}

struct Verifier<'c> {
    conn: &'c Db,
    options: &'c VerifyOptions,
    report: VerifyReport,
    expected_seq: u64,
    prev: Option<ReceiptHash>,
    key: Option<PublicKey>,
    known_keys: HashMap<KeyId, PublicKey>,
    /// Every key event checked so far: (first seq it signs, key).
    schedule: Vec<(u64, PublicKey)>,
    /// Keys a rotation handed the log to whose holder signed the rotation too.
    possessed: HashSet<KeyId>,
    /// Receipt 0's key is not a trusted key: one later in the schedule must be.
    anchor_pending: bool,
    schema_version: i64,
    /// The receipt tree recomputed from the receipts: its stored hashes, in order.
    stored: Vec<Hash>,
    hashes: Vec<ReceiptHash>,
    checkpoint_roots: HashMap<u64, MerkleRoot>,
    wanted_roots: HashSet<u64>,
    states_ok: HashSet<StateHash>,
    operations: HashMap<u64, OperationRow>,
}

impl<'c> Verifier<'c> {
    fn new(conn: &'c Db, options: &'c VerifyOptions) -> Result<Self, LedgerError> {
        let version = crate::schema::version(conn)?;
        if version < 2 {
            return Err(LedgerError::Corrupt(
                "this database has no receipt ledger (written before receipts existed, or not a state-pack database)".into(),
            ));
        }
        let mut wanted_roots: HashSet<u64> = conn
            .prepare("SELECT size FROM checkpoints")?
            .query_map([], |r| r.get::<_, i64>(0))?
            .filter_map(|s| s.ok().map(|s| s as u64))
            .collect();
        if let Some(size) = options.trusted_checkpoint.as_ref().and_then(|t| t.size()) {
            wanted_roots.insert(size);
        }
        let operations = rows::operation_rows(conn)?;
        let unreceipted: i64 = conn.query_row(
            "SELECT count(*) FROM operations WHERE receipt_seq IS NULL",
            [],
            |r| r.get(0),
        )?;
        let mut report = VerifyReport {
            log_id: None,
            receipts: 0,
            signatures_ok: 0,
            states_checked: 0,
            operations_checked: 0,
            checkpoints: 0,
            keys: Vec::new(),
            head: None,
            covering_checkpoint: None,
            trusted_checkpoint_ok: None,
            warnings: Vec::new(),
            failures: Vec::new(),
            elapsed: Duration::ZERO,
        };
        if unreceipted > 0 {
            report.warnings.push(format!(
                "{unreceipted} operations were recorded before this database had a ledger and carry no receipt"
            ));
        }
        Ok(Self {
            conn,
            options,
            report,
            expected_seq: 0,
            prev: None,
            key: None,
            known_keys: HashMap::new(),
            schedule: Vec::new(),
            possessed: HashSet::new(),
            anchor_pending: false,
            schema_version: version,
            stored: Vec::new(),
            hashes: Vec::new(),
            checkpoint_roots: HashMap::new(),
            wanted_roots,
            states_ok: HashSet::new(),
            operations,
        })
    }

    fn fail(&mut self, seq: Option<u64>, message: impl Into<String>) {
        let message = message.into();
        tracing::debug!(?seq, %message, "verify failure");
        self.report.failures.push(Failure { seq, message });
    }

    fn receipt(
        &mut self,
        seq: i64,
        op_col: &str,
        hash_col: &[u8],
        body: &[u8],
        sig: &[u8],
        pop: Option<&[u8]>,
    ) -> Result<(), LedgerError> {
        self.report.receipts += 1;
        let hash = ReceiptHash::of(body);
        let seq = u64::try_from(seq).unwrap_or(u64::MAX);
        let mut linked = true;
        if seq != self.expected_seq {
            if seq > self.expected_seq {
                let missing = if seq - self.expected_seq == 1 {
                    format!("receipt {} is missing", self.expected_seq)
                } else {
                    format!("receipts {}..{} are missing", self.expected_seq, seq - 1)
                };
                self.fail(
                    Some(self.expected_seq),
                    format!("{missing} (deleted from the log); the next stored is {seq}"),
                );
            } else {
                self.fail(Some(seq), format!("receipt number {seq} out of order"));
            }
            linked = false;
        }
        self.expected_seq = seq.saturating_add(1);
        if hash_col != hash.as_bytes() {
            self.fail(
                Some(seq),
                format!("receipt {seq}: stored hash column does not match its body"),
            );
        }
        let leaf = self.hashes.len() as u64;
        let more = tlog::stored_hashes(leaf, tlog::leaf_hash(hash.as_bytes()), &self.stored)
            .map_err(LedgerError::from)?;
        self.stored.extend(more);
        self.hashes.push(hash);
        let size = leaf + 1;
        if self.wanted_roots.contains(&size) {
            let root = self.root(size)?;
            self.checkpoint_roots.insert(size, root);
        }
        let prev = self.prev.replace(hash);

        let r = match Receipt::from_body(body) {
            Ok(r) => r,
            Err(e) => {
                self.fail(Some(seq), format!("receipt {seq}: body is not a valid canonical receipt ({e}): edited in the database"));
                return Ok(());
            }
        };
        if op_col != r.op.as_str() {
            self.fail(
                Some(seq),
                format!(
                    "receipt {seq}: the stored op column says {op_col:?}, its signed body {}: edited in the database",
                    r.op.as_str()
                ),
            );
        }
        if r.seq != seq {
            self.fail(
                Some(seq),
                format!(
                    "receipt {seq}: its body says seq {}: rows were swapped or renumbered",
                    r.seq
                ),
            );
        }
        match self.report.log_id {
            None if seq == 0 => self.report.log_id = Some(r.log_id),
            Some(id) if id != r.log_id => {
                self.fail(
                    Some(seq),
                    format!(
                        "receipt {seq}: belongs to log {}, not {}",
                        r.log_id.short(),
                        id.short()
                    ),
                );
            }
            _ => {}
        }
        if linked {
            let expected_prev = prev.unwrap_or(ReceiptHash::ZERO);
            if r.prev != expected_prev {
                self.fail(
                    Some(seq),
                    format!(
                        "receipt {seq}: link broken: prev is {} but receipt {}'s hash is {}",
                        r.prev.short(),
                        seq.wrapping_sub(1),
                        expected_prev.short()
                    ),
                );
            }
        }
        self.check_key_and_signature(seq, &r, &hash, sig, pop);
        self.check_kv(seq, &r);
        if r.op.makes_state() {
            self.check_state(seq, &r)?;
            self.check_operation(seq, &r);
        }
        if let Some(of) = r.replay_of {
            self.check_replay(seq, &r, of)?;
        }
        Ok(())
    }

    fn check_key_and_signature(
        &mut self,
        seq: u64,
        r: &Receipt,
        hash: &ReceiptHash,
        sig: &[u8],
        pop: Option<&[u8]>,
    ) {
        let carried = r.public_key.as_deref().map(PublicKey::from_hex);
        if r.op == ReceiptOp::OpenLog {
            if seq != 0 {
                self.fail(
                    Some(seq),
                    format!("receipt {seq}: open_log may only be receipt 0"),
                );
                return;
            }
            let Some(Ok(key)) = carried else {
                self.fail(Some(0), "receipt 0: open_log carries no valid public key");
                return;
            };
            if self.options.trusted_keys.is_empty() {
                self.report.warnings.push(format!(
                    "no --pubkey given: trusting the log's own first key {} (pass --pubkey to check who signed)",
                    key.to_hex()
                ));
            } else if !self.options.trusted_keys.contains(&key) {
                // A key the log was handed to later may still be the anchor (see finish).
                self.anchor_pending = true;
            }
            self.schedule.push((0, key));
            self.key = Some(key);
            self.known_keys.insert(key.key_id(), key);
            self.report.keys.push(key.key_id());
        } else if seq == 0 {
            self.fail(Some(0), "receipt 0 is not an open_log receipt");
        }
        let Some(key) = self.key else {
            self.fail(
                Some(seq),
                format!("receipt {seq}: no signing key is known at this point"),
            );
            return;
        };
        if r.key_id != key.key_id() {
            self.fail(Some(seq), format!(
                "receipt {seq}: claims key {} but the log's key here is {}: signed with another key",
                r.key_id.short(),
                key.key_id().short()
            ));
        } else if key.verify(hash.as_bytes(), sig) {
            self.report.signatures_ok += 1;
        } else {
            self.fail(Some(seq), format!(
                "receipt {seq}: signature does not verify under key {}: the body or the signature was altered",
                key.key_id().short()
            ));
        }
        if r.op == ReceiptOp::RotateKey {
            match carried {
                Some(Ok(next)) => {
                    match pop {
                        Some(p) if next.verify(hash.as_bytes(), p) => {
                            self.possessed.insert(next.key_id());
                        }
                        Some(_) => self.fail(Some(seq), format!(
                            "receipt {seq}: the new key {}'s signature over this rotation does not verify: it never took the log over",
                            next.key_id().short()
                        )),
                        None => self.report.warnings.push(format!(
                            "receipt {seq}: the rotation to key {} carries no signature by that key (written before rotations did)",
                            next.key_id().short()
                        )),
                    }
                    self.schedule.push((seq + 1, next));
                    self.key = Some(next);
                    self.known_keys.insert(next.key_id(), next);
                    self.report.keys.push(next.key_id());
                }
                _ => self.fail(
                    Some(seq),
                    format!("receipt {seq}: rotate_key carries no valid public key"),
                ),
            }
        }
    }

    /// The recomputed tree's root at `size`.
    fn root(&self, size: u64) -> Result<MerkleRoot, LedgerError> {
        Ok(MerkleRoot::from_bytes(tlog::tree_hash(size, &self.stored)?))
    }

    fn finish(mut self, started: Instant) -> Result<VerifyReport, LedgerError> {
        let n = self.hashes.len() as u64;
        self.check_anchor();
        for (seq, _) in std::mem::take(&mut self.operations) {
            self.fail(
                Some(seq),
                format!("an operations row names receipt {seq}, which is not in the log"),
            );
        }
        if let (Some(log_id), Some(head)) = (self.report.log_id, self.hashes.last().copied()) {
            self.report.head = Some(ObservedHead {
                log_id,
                size: n,
                root: self.root(n)?,
                head,
            });
        }
        for (size_col, signed) in rows::checkpoint_rows(self.conn)? {
            self.report.checkpoints += 1;
            let signed = &signed;
            if let Some(c) = self.check_checkpoint(signed, "stored checkpoint") {
                if size_col != c.size as i64 {
                    self.fail(
                        None,
                        format!(
                            "stored checkpoint of size {}: its size column says {size_col}: edited in the database",
                            c.size
                        ),
                    );
                }
                if c.size == n && self.report.failures.is_empty() {
                    self.report.covering_checkpoint = Some(signed.clone());
                }
            }
        }
        self.check_stored_tree()?;
        self.check_notes()?;
        if let Some(t) = &self.options.trusted_checkpoint {
            let ok = self.check_trusted(t);
            self.report.trusted_checkpoint_ok = Some(ok);
        }
        self.report.elapsed = started.elapsed();
        Ok(self.report)
    }

    fn check_checkpoint(&mut self, signed: &SignedCheckpoint, what: &str) -> Option<Checkpoint> {
        let c = match signed.checkpoint() {
            Ok(c) => c,
            Err(e) => {
                self.fail(None, format!("{what}: not a canonical checkpoint ({e})"));
                return None;
            }
        };
        let Some(key) = self.known_keys.get(&c.key_id).copied() else {
            self.fail(
                None,
                format!(
                    "{what} of size {}: signed by key {}, which this log never used",
                    c.size,
                    c.key_id.short()
                ),
            );
            return None;
        };
        if !signed.verify(&key) {
            self.fail(
                None,
                format!(
                    "{what} of size {}: signature does not verify (checkpoint altered)",
                    c.size
                ),
            );
            return None;
        }
        // The key that held the log when the checkpoint's last receipt was written, or the
        // one it was handed to by that receipt: an earlier, revoked key may sign no more.
        let holders = [c.size.saturating_sub(1), c.size].map(|s| signer_of(&self.schedule, s));
        if !holders.contains(&Some(key)) {
            self.fail(None, format!(
                "{what} of size {}: signed by key {}, which had handed the log over before (a revoked key)",
                c.size,
                c.key_id.short()
            ));
            return None;
        }
        self.check_head(what, &c.log_id, c.size, &c.root, &c.head);
        Some(c)
    }

    fn check_head(
        &mut self,
        what: &str,
        log_id: &LogId,
        size: u64,
        root: &MerkleRoot,
        head: &ReceiptHash,
    ) -> bool {
        let n = self.hashes.len() as u64;
        if size == 0 {
            self.fail(None, format!("{what}: covers no receipts"));
            return false;
        }
        if Some(*log_id) != self.report.log_id {
            self.fail(
                None,
                format!("{what}: belongs to log {}, not this one", log_id.short()),
            );
            return false;
        }
        if size > n {
            self.fail(Some(n), format!(
                "{what} covers {size} receipts but the log holds {n}: receipts {n}..{} were deleted (truncation or rollback to an older copy)",
                size - 1
            ));
            return false;
        }
        let at = self.checkpoint_roots.get(&size);
        if at != Some(root) || self.hashes.get(size as usize - 1) != Some(head) {
            self.fail(None, format!(
                "{what} of size {size}: the log's Merkle root at that size differs: history before receipt {size} was rewritten"
            ));
            return false;
        }
        true
    }

    /// The keys a trusted checkpoint may be signed by: the log's, and the auditor's.
    fn candidate_keys(&self) -> Vec<PublicKey> {
        self.known_keys
            .values()
            .chain(&self.options.trusted_keys)
            .copied()
            .collect()
    }

    fn check_trusted(&mut self, t: &TrustedCheckpoint) -> bool {
        let what = "trusted checkpoint";
        match t {
            TrustedCheckpoint::Signed(s) => {
                let Ok(c) = s.checkpoint() else {
                    self.fail(None, format!("{what}: not a canonical checkpoint"));
                    return false;
                };
                if !self.candidate_keys().iter().any(|k| s.verify(k)) {
                    self.fail(
                        None,
                        format!("{what}: its signature does not verify under any key of this log"),
                    );
                    return false;
                }
                self.check_head(what, &c.log_id, c.size, &c.root, &c.head)
                    && self.consistent_to_now(what, c.size, &c.root)
            }
            TrustedCheckpoint::Observed(h) => {
                self.check_head(what, &h.log_id, h.size, &h.root, &h.head)
                    && self.consistent_to_now(what, h.size, &h.root)
            }
            TrustedCheckpoint::Note(note) => self.check_trusted_note(note),
        }
    }
}
