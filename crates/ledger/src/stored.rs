//! The receipt tree and the checkpoint notes in SQLite: the stored hashes written with each
//! receipt (`tree_hashes`), roots and proofs read from them in O(log n), the C2SP note of
//! every checkpoint (`checkpoint_notes`) with the cosignatures witnesses add, and the tiles a
//! log publishes.

use crate::sql::{params, Db, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::checkpoint::MerkleRoot;
use crate::keys::Signer;
use crate::log::{self, LedgerError};
use crate::note::{self, CheckpointText, Note};
use crate::receipt::{LogId, ReceiptHash};
use crate::tiles::{self, Tile, TileKind};
use crate::tlog::{self, Hash, HashReader, TreeError};

/// Stored hashes read from `tree_hashes`.
pub struct SqlHashes<'c>(pub &'c Db);

impl HashReader for SqlHashes<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, TreeError> {
        let mut stmt = self
            .0
            .prepare_cached("SELECT hash FROM tree_hashes WHERE idx = ?1")
            .map_err(|e| TreeError::Read(e.to_string()))?;
        indexes
            .iter()
            .map(|&i| {
                let bytes: Option<Vec<u8>> = stmt
                    .query_row([i as i64], |r| r.get(0))
                    .optional()
                    .map_err(|e| TreeError::Read(e.to_string()))?;
                bytes
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| TreeError::Read(format!("stored tree hash {i} is missing")))
            })
            .collect()
    }
}

/// The tree of the first `size` receipts, read from the stored hashes when they cover them,
/// else rebuilt in memory from the receipts (a log no writer has opened since the tree was
/// first stored).
pub enum TreeReader<'c> {
    /// The stored hashes.
    Stored(SqlHashes<'c>),
    /// Rebuilt from the receipts.
    Memory(Vec<Hash>),
}

impl HashReader for TreeReader<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, TreeError> {
        match self {
            TreeReader::Stored(s) => s.read_hashes(indexes),
            TreeReader::Memory(m) => m.read_hashes(indexes),
        }
    }
}

impl From<TreeError> for LedgerError {
    fn from(e: TreeError) -> Self {
        LedgerError::Corrupt(e.to_string())
    }
}

/// Leaves the stored tree holds completely (its row count is exactly a tree's), or `None`.
pub fn stored_leaves(conn: &Db) -> Result<Option<u64>, LedgerError> {
    let rows: i64 = conn.query_row("SELECT count(*) FROM tree_hashes", [], |r| r.get(0))?;
    let rows = rows as u64;
    // stored_hash_count grows with n and is below 2n + 64: search n in rows/2 - 64 ..= rows.
    let (mut lo, mut hi) = ((rows / 2).saturating_sub(64), rows);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if tlog::stored_hash_count(mid) < rows {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok((tlog::stored_hash_count(lo) == rows).then_some(lo))
}

/// A reader for the tree of the first `size` receipts.
pub fn tree_reader(conn: &Db, size: u64) -> Result<TreeReader<'_>, LedgerError> {
    if stored_leaves(conn)?.is_some_and(|n| n >= size) {
        return Ok(TreeReader::Stored(SqlHashes(conn)));
    }
    let mut stmt = conn.prepare("SELECT hash FROM receipts WHERE seq < ?1 ORDER BY seq")?;
    let leaves = stmt
        .query_map([size as i64], |r| r.get::<_, Vec<u8>>(0))?
        .map(|h| {
            let h: [u8; 32] = h?
                .try_into()
                .map_err(|_| LedgerError::Corrupt("receipt hash column is not 32 bytes".into()))?;
            Ok(tlog::leaf_hash(&h))
        })
        .collect::<Result<Vec<_>, LedgerError>>()?;
    if (leaves.len() as u64) < size {
        return Err(LedgerError::Corrupt(format!(
            "the log holds {} receipts, fewer than {size}",
            leaves.len()
        )));
    }
    Ok(TreeReader::Memory(tlog::stored_from_leaves(leaves)))
}

/// Adds receipt `seq` (hash `receipt`) to the stored tree; inside the appending transaction.
pub(crate) fn append_leaf(tx: &Db, seq: u64, receipt: &ReceiptHash) -> Result<(), LedgerError> {
    let hashes = tlog::stored_hashes(seq, tlog::leaf_hash(receipt.as_bytes()), &SqlHashes(tx))?;
    let mut insert = tx.prepare_cached("INSERT INTO tree_hashes (idx, hash) VALUES (?1, ?2)")?;
    let first = tlog::stored_hash_index(0, seq);
    for (i, h) in hashes.iter().enumerate() {
        insert.execute(params![(first + i as u64) as i64, h.as_slice()])?;
    }
    Ok(())
}

/// Stores the tree of every receipt the stored tree lacks (a log written before the tree was
/// stored, or one whose table is not a whole tree: rebuilt). Returns the leaves added.
pub(crate) fn backfill(tx: &Db) -> Result<u64, LedgerError> {
    let receipts = log::head(tx)?.map_or(0, |(seq, _)| seq + 1);
    let have = match stored_leaves(tx)? {
        Some(n) if n <= receipts => n,
        _ => {
            tx.execute("DELETE FROM tree_hashes", [])?;
            0
        }
    };
    let mut stmt = tx.prepare("SELECT seq, hash FROM receipts WHERE seq >= ?1 ORDER BY seq")?;
    let rows = stmt.query_map([have as i64], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut added = 0;
    for row in rows {
        let (seq, hash) = row?;
        let hash: [u8; 32] = hash
            .try_into()
            .map_err(|_| LedgerError::Corrupt("receipt hash column is not 32 bytes".into()))?;
        append_leaf(tx, seq as u64, &ReceiptHash::from_bytes(hash))?;
        added += 1;
    }
    if added > 0 {
        tracing::info!(leaves = added, "stored the receipt tree");
    }
    Ok(added)
}

/// The root of the first `size` receipts.
pub fn tree_root(conn: &Db, size: u64) -> Result<MerkleRoot, LedgerError> {
    Ok(MerkleRoot::from_bytes(tlog::tree_hash(
        size,
        &tree_reader(conn, size)?,
    )?))
}

/// The note text of the checkpoint of log `log` at `size` with `root`.
pub fn checkpoint_text(log: &LogId, size: u64, root: &MerkleRoot) -> CheckpointText {
    CheckpointText {
        origin: CheckpointText::origin_of(log),
        size,
        root: *root.as_bytes(),
    }
}

/// Signs and stores the note of a checkpoint (inside the checkpointing transaction).
pub(crate) fn write_note(
    tx: &Db,
    signer: &Signer,
    log: &LogId,
    size: u64,
    root: &MerkleRoot,
) -> Result<(), LedgerError> {
    let text = checkpoint_text(log, size, root);
    let signed = note::sign(&text.encode(), &text.origin, signer)
        .map_err(|e| LedgerError::Corrupt(e.to_string()))?;
    tx.execute(
        "INSERT INTO checkpoint_notes (size, note) VALUES (?1, ?2)
         ON CONFLICT (size) DO UPDATE SET note = excluded.note",
        params![size as i64, signed.encode()],
    )?;
    Ok(())
}

/// The note of the checkpoint of `size`, or of the newest one, with its cosignatures.
pub fn note_at(conn: &Db, size: Option<u64>) -> Result<Option<String>, LedgerError> {
    let row = match size {
        Some(s) => conn
            .query_row(
                "SELECT note FROM checkpoint_notes WHERE size = ?1",
                [s as i64],
                |r| r.get(0),
            )
            .optional()?,
        None => conn
            .query_row(
                "SELECT note FROM checkpoint_notes ORDER BY size DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?,
    };
    Ok(row)
}

/// Adds the signature lines of `cosigned` (a note of one of this log's checkpoints, as a
/// witness returned it) that the stored note lacks. The stored text must be the note's text;
/// the lines are kept as given (an auditor checks the witnesses it trusts with
/// `verify --witness`). Returns how many lines were added.
pub fn add_cosignatures(conn: &Db, cosigned: &str) -> Result<usize, LedgerError> {
    let given = Note::parse(cosigned).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
    let text =
        CheckpointText::parse(&given.text).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
    let stored = note_at(conn, Some(text.size))?.ok_or_else(|| {
        LedgerError::Corrupt(format!("this log has no checkpoint of size {}", text.size))
    })?;
    let mut note = Note::parse(&stored).map_err(|e| LedgerError::Corrupt(e.to_string()))?;
    if note.text != given.text {
        return Err(LedgerError::Corrupt(format!(
            "the cosigned checkpoint of size {} is not this log's (another origin or root)",
            text.size
        )));
    }
    let mut added = 0;
    for s in given.signatures {
        if !note.signatures.contains(&s) {
            note.signatures.push(s);
            added += 1;
        }
    }
    conn.execute(
        "UPDATE checkpoint_notes SET note = ?1 WHERE size = ?2",
        params![note.encode(), text.size as i64],
    )?;
    Ok(added)
}

/// A consistency proof between two sizes of a log, with both roots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "json-schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    /// The earlier size.
    pub old_size: u64,
    /// Its root, hex.
    pub old_root: String,
    /// The later size.
    pub new_size: u64,
    /// Its root, hex.
    pub new_root: String,
    /// RFC 6962 §2.1.2 proof hashes, hex.
    pub proof: Vec<String>,
}

impl ConsistencyProof {
    /// The proof's hashes.
    pub fn hashes(&self) -> Option<Vec<Hash>> {
        self.proof
            .iter()
            .map(|h| {
                let mut b = [0u8; 32];
                hex::decode_to_slice(h, &mut b).ok().map(|_| b)
            })
            .collect()
    }

    /// Checks the proof links `old_root` at `old_size` to `new_root` at `new_size`.
    pub fn check(&self) -> Result<(), TreeError> {
        let parse = |h: &str| -> Result<Hash, TreeError> {
            let mut b = [0u8; 32];
            hex::decode_to_slice(h, &mut b).map_err(|_| TreeError::Invalid)?;
            Ok(b)
        };
        let hashes = self.hashes().ok_or(TreeError::Invalid)?;
        tlog::check_consistency(
            &hashes,
            self.old_size,
            &parse(&self.old_root)?,
            self.new_size,
            &parse(&self.new_root)?,
        )
    }
}

/// The proof that the log at `new` receipts extends the log at `old`.
pub fn prove_consistency(conn: &Db, old: u64, new: u64) -> Result<ConsistencyProof, LedgerError> {
    let size = log::head(conn)?.map_or(0, |(seq, _)| seq + 1);
    if new > size {
        return Err(LedgerError::Corrupt(format!(
            "the log holds {size} receipts, not {new}"
        )));
    }
    let r = tree_reader(conn, new)?;
    let proof = tlog::prove_consistency(old, new, &r)?;
    Ok(ConsistencyProof {
        old_size: old,
        old_root: hex::encode(tlog::tree_hash(old, &r)?),
        new_size: new,
        new_root: hex::encode(tlog::tree_hash(new, &r)?),
        proof: proof.iter().map(hex::encode).collect(),
    })
}

/// The bytes of `tile` in the log as of `size` receipts, or `None` if no such tile exists at
/// that size.
pub fn tile_bytes(conn: &Db, tile: &Tile, size: u64) -> Result<Option<Vec<u8>>, LedgerError> {
    if !tile.exists_in(size) {
        return Ok(None);
    }
    let range = tile.leaves();
    let rows = |column: &str| -> Result<Vec<Vec<u8>>, LedgerError> {
        let sql =
            format!("SELECT {column} FROM receipts WHERE seq >= ?1 AND seq < ?2 ORDER BY seq");
        let mut stmt = conn.prepare_cached(&sql)?;
        let out = stmt
            .query_map([range.start as i64, range.end as i64], |r| r.get(0))?
            .collect::<Result<Vec<Vec<u8>>, _>>()?;
        if out.len() as u64 != tile.width {
            return Err(LedgerError::Corrupt(format!(
                "receipts {}..{} are not all in the log",
                range.start, range.end
            )));
        }
        Ok(out)
    };
    let bytes = match tile.kind {
        TileKind::Hashes { .. } => tiles::tile_hashes(tile, &tree_reader(conn, size)?)?,
        TileKind::Entries => tiles::bundle(rows("hash")?.iter().map(Vec::as_slice))?,
        TileKind::Bodies => tiles::bundle(rows("body")?.iter().map(Vec::as_slice))?,
    };
    Ok(Some(bytes))
}

/// Writes the log as of its newest checkpoint as a static tlog-tiles directory: `checkpoint`
/// (the note, with its cosignatures), every hash tile, entry bundle and body bundle.
/// Returns the checkpoint's size and the number of files written.
pub fn export_tiles(conn: &Db, dir: &std::path::Path) -> Result<(u64, usize), LedgerError> {
    let io = |e: std::io::Error| LedgerError::Corrupt(format!("{}: {e}", dir.display()));
    let note = note_at(conn, None)?
        .ok_or_else(|| LedgerError::Corrupt("the log has no checkpoint note yet".into()))?;
    let text = Note::parse(&note)
        .ok()
        .and_then(|n| CheckpointText::parse(&n.text).ok())
        .ok_or_else(|| LedgerError::Corrupt("the newest checkpoint note does not parse".into()))?;
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut files = 0;
    for tile in Tile::all(text.size, true) {
        let Some(bytes) = tile_bytes(conn, &tile, text.size)? else {
            continue;
        };
        let path = dir.join(tile.path());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, bytes).map_err(io)?;
        files += 1;
    }
    std::fs::write(dir.join("checkpoint"), note).map_err(io)?;
    Ok((text.size, files + 1))
}
