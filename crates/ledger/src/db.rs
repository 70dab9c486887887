//! A state-pack database opened for its ledger: the connection, the schema brought up to
//! date, and (with a key) the signing side of the log.
//!
//! [`LedgerDb`] is what the `state-pack` store is built on and what an auditor's tools open:
//! reading receipts, proving one, writing a checkpoint or handing the log to a new key need
//! nothing else.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use crate::checkpoint::{Checkpoint, ReceiptProof, SignedCheckpoint};
use crate::keys::Signer;
use crate::log::{self, Ledger, LedgerError, ReceiptRef, StoredReceipt, DEFAULT_CHECKPOINT_EVERY};
use crate::schema::{self, SchemaError};
use crate::sql::{Db, Kind, SqlError};

/// Errors opening or using a [`LedgerDb`].
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database could not be opened or created.
    #[error("cannot open database {location}: {source}")]
    Open {
        /// The path, or the URL with its password masked.
        location: String,
        /// The database's error.
        source: SqlError,
    },
    /// The database is newer than this build.
    #[error("database {location} has schema version {found}, newer than this build's {supported}: upgrade state-pack")]
    TooNew {
        /// The path, or the URL with its password masked.
        location: String,
        /// Its version.
        found: i64,
        /// Ours.
        supported: usize,
    },
    /// The ledger refused or failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Any other database error.
    #[error("database error: {0}")]
    Sql(#[from] SqlError),
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sql(e.into())
    }
}

/// A database with its schema up to date and, when opened with a key, its log attached for
/// signing. Dropping a signing `LedgerDb` writes a closing checkpoint.
pub struct LedgerDb {
    conn: Db,
    path: Option<PathBuf>,
    /// The signing side of the ledger; `None` when opened for reading only.
    ledger: Option<Ledger>,
}

impl LedgerDb {
    /// Opens (creating if needed) the database at `path`, brings its schema up to date and
    /// attaches the ledger signed by `signer`: a new database starts its log (receipt 0), an
    /// existing one must be signed by `signer` now (see [`LedgerDb::rotate_key`]).
    pub fn open(path: &Path, signer: Signer) -> Result<Self, DbError> {
        Self::open_with(path, signer, DEFAULT_CHECKPOINT_EVERY)
    }

    /// [`open`](Self::open), writing a signed checkpoint every `checkpoint_every` receipts.
    pub fn open_with(path: &Path, signer: Signer, checkpoint_every: u64) -> Result<Self, DbError> {
        let mut db = Self::open_unsigned(path)?;
        db.ledger = Some(Ledger::attach(&db.conn, signer, checkpoint_every)?);
        Ok(db)
    }

    /// [`open_with`](Self::open_with) on a connection of any backend (a Postgres
    /// connection from `state-pack-postgres`): the schema is brought up to date and the
    /// ledger attached. Several processes may hold such a `LedgerDb` on one database: each
    /// append takes the database's writer lock, so they share one contiguous log.
    pub fn open_db(conn: Db, signer: Signer, checkpoint_every: u64) -> Result<Self, DbError> {
        let mut db = Self {
            conn,
            path: None,
            ledger: None,
        };
        db.migrate()?;
        db.ledger = Some(Ledger::attach(&db.conn, signer, checkpoint_every)?);
        Ok(db)
    }

    /// A `LedgerDb` that only reads, on a connection of any backend whose schema is up to
    /// date (see [`open_db`](Self::open_db)); nothing is created or migrated, and the
    /// connection refuses writes.
    pub fn open_db_for_reading(conn: Db) -> Result<Self, DbError> {
        let found = schema::version(&conn)?;
        let supported = schema::VERSION;
        if found > supported as i64 {
            return Err(DbError::TooNew {
                location: conn.label().to_owned(),
                found,
                supported,
            });
        }
        if found < supported as i64 {
            return Err(DbError::Ledger(LedgerError::Corrupt(format!(
                "{} has schema version {found}, not {supported}: open it once with a key (any \
                 state-pack command that writes) to bring it up to date",
                conn.label()
            ))));
        }
        match conn.kind() {
            Kind::Sqlite => conn.execute_batch("PRAGMA query_only = true")?,
            Kind::Postgres => conn.execute_batch("SET default_transaction_read_only = on")?,
        }
        Ok(Self {
            conn,
            path: None,
            ledger: None,
        })
    }

    /// The connection with its schema up to date, no ledger attached yet.
    fn open_unsigned(path: &Path) -> Result<Self, DbError> {
        let mut db = Self {
            conn: open_connection(path)?,
            path: Some(path.to_path_buf()),
            ledger: None,
        };
        db.migrate()?;
        Ok(db)
    }

    /// Opens the database at `path` without a signing key: everything can be read, nothing
    /// written (the connection is `query_only` once the schema is brought up to date; a new
    /// file gets the empty schema).
    pub fn open_for_reading(path: &Path) -> Result<Self, DbError> {
        let db = Self::open_unsigned(path)?;
        // From here on this connection only reads: a bug that tried to write through it
        // fails instead of racing the writer.
        db.conn.execute_batch("PRAGMA query_only = true")?;
        Ok(db)
    }

    /// A throwaway in-memory database signed by `signer`, for tests and benchmarks.
    pub fn open_in_memory(signer: Signer) -> Result<Self, DbError> {
        let conn = Connection::open_in_memory()?;
        configure(&conn)?;
        Self::open_db(
            Db::sqlite(conn, ":memory:"),
            signer,
            DEFAULT_CHECKPOINT_EVERY,
        )
    }

    fn migrate(&mut self) -> Result<(), DbError> {
        schema::migrate(&self.conn).map_err(|e| match e {
            SchemaError::TooNew { found, supported } => DbError::TooNew {
                location: self.conn.label().to_owned(),
                found,
                supported,
            },
            SchemaError::Sql(e) => DbError::Sql(e),
        })
    }

    /// The database file, if on disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The connection, for reading the tables this crate does not own.
    pub fn conn(&self) -> &Db {
        &self.conn
    }

    /// The connection and the signing side together, for a caller that appends a receipt
    /// inside its own transaction (see [`Ledger::append`]).
    pub fn parts_mut(&mut self) -> (&Db, Option<&mut Ledger>) {
        (&self.conn, self.ledger.as_mut())
    }

    /// The ledger's signing side, if the database was opened with a key.
    pub fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }

    /// Receipts in the log: the next receipt's seq.
    pub fn receipt_count(&self) -> Result<u64, DbError> {
        Ok(log::head(&self.conn)?.map_or(0, |(seq, _)| seq + 1))
    }

    /// Writes a signed checkpoint of the whole log now (a no-op if the newest receipt is
    /// already covered). Called on clean shutdown.
    pub fn checkpoint(&mut self) -> Result<Option<Checkpoint>, DbError> {
        let ledger = self.ledger.as_mut().ok_or(LedgerError::ReadOnly)?;
        let tx = self.conn.write()?;
        let cp = ledger.checkpoint(&tx)?;
        tx.commit()?;
        Ok(cp)
    }

    /// Hands signing over to `next`: a `rotate_key` receipt signed by the current key that
    /// carries `next`'s public key. Returns that receipt.
    pub fn rotate_key(&mut self, next: Signer) -> Result<ReceiptRef, DbError> {
        let ledger = self.ledger.as_mut().ok_or(LedgerError::ReadOnly)?;
        Ok(ledger.rotate(&self.conn, next)?)
    }

    /// Receipt `seq` as stored.
    pub fn receipt(&self, seq: u64) -> Result<StoredReceipt, DbError> {
        Ok(log::receipt(&self.conn, seq)?)
    }

    /// Up to `limit` receipts from `from` on.
    pub fn receipts(&self, from: u64, limit: u64) -> Result<Vec<StoredReceipt>, DbError> {
        Ok(log::receipts(&self.conn, from, limit)?)
    }

    /// The newest signed checkpoint.
    pub fn latest_checkpoint(&self) -> Result<Option<SignedCheckpoint>, DbError> {
        Ok(log::latest_checkpoint(&self.conn)?)
    }

    /// An inclusion proof of receipt `seq` against the newest checkpoint; with a signing key,
    /// a checkpoint covering the whole log is written first if needed.
    pub fn prove(&mut self, seq: u64) -> Result<ReceiptProof, DbError> {
        if self.ledger.is_some() {
            self.checkpoint()?;
        }
        Ok(log::prove(&self.conn, seq)?)
    }
}

/// A connection to the database file at `path` (created if missing) set up as every
/// state-pack connection is: a busy timeout (other processes may be creating the same file),
/// WAL, [`configure`]. Parts of state-pack that keep their own tables in the file open theirs
/// with this.
pub fn open_connection(path: &Path) -> Result<Db, DbError> {
    let conn = open_sqlite(path).map_err(|source| DbError::Open {
        location: path.display().to_string(),
        source: source.into(),
    })?;
    Ok(Db::sqlite(conn, path.display().to_string()))
}

/// The SQLite connection [`open_connection`] wraps.
pub(crate) fn open_sqlite(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // Before anything else: other processes may be creating the same database right now.
    conn.busy_timeout(Duration::from_secs(10))?;
    // journal_mode returns a row; the rest do not.
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    configure(&conn)?;
    Ok(conn)
}

/// The settings of every state-pack connection, file or in memory.
pub fn configure(conn: &Connection) -> rusqlite::Result<()> {
    // FULL: a committed operation survives power loss, not only a process crash.
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
    )
}

impl std::fmt::Debug for LedgerDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerDb")
            .field("path", &self.path)
            .field("ledger", &self.ledger)
            .finish()
    }
}

impl Drop for LedgerDb {
    /// Clean shutdown: checkpoint what the log holds, so a verifier can tell a later
    /// truncation from a log that simply ended.
    fn drop(&mut self) {
        if self.ledger.is_some() {
            if let Err(e) = self.checkpoint() {
                tracing::warn!(error = %e, "could not write the closing checkpoint");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_connection_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let writer = LedgerDb::open(&path, Signer::from_seed([3; 32])).unwrap();
        let reader = LedgerDb::open_for_reading(&path).unwrap();
        assert_eq!(
            reader.receipt_count().unwrap(),
            writer.receipt_count().unwrap()
        );
        let refused = reader
            .conn()
            .execute("DELETE FROM receipts", [])
            .unwrap_err();
        assert!(refused.to_string().contains("readonly"), "{refused}");
        assert_eq!(
            writer.receipt_count().unwrap(),
            1,
            "the open_log receipt is still there"
        );
    }
}
