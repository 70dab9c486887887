//! Graph checkpoints in the pack's database (`graph_checkpoints`: `schema.sql` on SQLite,
//! `schema_postgres.sql` on Postgres).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use state_pack_ledger::sql::{params, Db, Kind, OptionalExtension, Row};

use super::GraphError;
use state_pack_core::store::StoreError;
use state_pack_core::StatePack;
use state_pack_ledger::{db, log};

/// A checkpoint's id: unique in its database, increasing with time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CheckpointId(pub i64);

impl std::fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What wrote a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The run's input (a thread's root).
    Input,
    /// A super-step of the graph.
    Loop,
    /// An update from outside: a human resuming an interrupt, or a fork.
    Update,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Input => "input",
            Source::Loop => "loop",
            Source::Update => "update",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "input" => Source::Input,
            "loop" => Source::Loop,
            "update" => Source::Update,
            _ => return None,
        })
    }
}

/// A task due: a node, with a [`Goto::Send`](super::Goto::Send) payload if it came from one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Task(pub String, pub Option<serde_json::Value>);

/// Join edges' sources seen so far, by join index.
pub(crate) type Joins = BTreeMap<usize, BTreeSet<String>>;

/// One stored checkpoint, as read back.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub id: CheckpointId,
    pub thread: String,
    pub parent: Option<CheckpointId>,
    pub step: i64,
    pub source: Source,
    pub snapshot: Option<serde_json::Value>,
    pub writes: Vec<(String, serde_json::Value)>,
    pub next: Vec<Task>,
    pub joins: Joins,
    pub receipts: (u64, u64),
    pub created_at: i64,
    pub bytes: u64,
}

/// A checkpoint to write.
pub(crate) struct New<'a> {
    pub thread: &'a str,
    pub parent: Option<CheckpointId>,
    pub step: i64,
    pub source: Source,
    pub snapshot: Option<&'a serde_json::Value>,
    pub writes: &'a [(String, serde_json::Value)],
    pub next: &'a [Task],
    pub joins: &'a Joins,
    pub receipts: (u64, u64),
}

/// A checkpoint as [`history`](super::CompiledGraph::history) shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointInfo {
    /// Its id.
    pub id: CheckpointId,
    /// Its thread.
    pub thread: String,
    /// The checkpoint it follows (`None` for the thread's input).
    pub parent: Option<CheckpointId>,
    /// Super-step: -1 for the input.
    pub step: i64,
    /// What wrote it.
    pub source: Source,
    /// Nodes whose updates it holds, in merge order.
    pub wrote: Vec<String>,
    /// Nodes due next (empty: the graph ended here).
    pub next: Vec<String>,
    /// Receipts written while its step ran: seq in `receipts.0..receipts.1`.
    pub receipts: (u64, u64),
    /// Bytes stored for it (updates, tasks, joins, and the root's input).
    pub bytes: u64,
    /// Unix milliseconds.
    pub created_at: i64,
}

impl From<&Stored> for CheckpointInfo {
    fn from(s: &Stored) -> Self {
        Self {
            id: s.id,
            thread: s.thread.clone(),
            parent: s.parent,
            step: s.step,
            source: s.source,
            wrote: s.writes.iter().map(|(n, _)| n.clone()).collect(),
            next: s.next.iter().map(|t| t.0.clone()).collect(),
            receipts: s.receipts,
            bytes: s.bytes,
            created_at: s.created_at,
        }
    }
}

/// Where a graph keeps its checkpoints: a connection of its own to a state-pack database
/// (usually the pack's, so checkpoints sit beside the receipts they name). It owns its table
/// (`schema.sql`) and needs no signing key: checkpoints are not receipts.
pub struct Checkpointer {
    conn: Mutex<Db>,
}

/// The graph's table, created if missing.
const SCHEMA: &str = include_str!("schema.sql");
/// The same table on Postgres.
const SCHEMA_POSTGRES: &str = include_str!("schema_postgres.sql");

/// Bytes a checkpoint takes (its JSON columns).
const BYTES: &str = "COALESCE(length(snapshot), 0) + length(writes) + length(next) + length(joins)";
const COLUMNS: &str = "id, thread, parent, step, source, snapshot, writes, next, joins, \
     receipts_from, receipts_to, created_at, \
     COALESCE(length(snapshot), 0) + length(writes) + length(next) + length(joins)";

fn corrupt(reason: impl Into<String>) -> GraphError {
    GraphError::Store(StoreError::Corrupt {
        table: "graph_checkpoints",
        reason: reason.into(),
    })
}

impl Checkpointer {
    /// Checkpoints in the database at `path` (created if needed, with the graph's table).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::with_connection(db::open_connection(path)?)
    }

    /// Checkpoints in the database at `location`: an SQLite file, or a Postgres URL.
    pub fn open_location(location: &str) -> Result<Self, StoreError> {
        if state_pack_core::postgres::is_url(location) {
            let conn = state_pack_core::postgres::connect(location).map_err(|source| {
                db::DbError::Open {
                    location: state_pack_core::postgres::masked(location),
                    source,
                }
            })?;
            Self::with_connection(conn)
        } else {
            Self::open(Path::new(location))
        }
    }

    /// Over `conn`, a connection of its own (an SQLite one configured as
    /// [`db::open_connection`] does).
    pub fn with_connection(conn: Db) -> Result<Self, StoreError> {
        match conn.kind() {
            Kind::Sqlite => conn.execute_batch(SCHEMA)?,
            Kind::Postgres => {
                // One writer lock, so replicas creating the table at once do not race.
                let tx = conn.write()?;
                tx.execute_batch(SCHEMA_POSTGRES)?;
                tx.commit()?;
            }
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// Checkpoints in `pack`'s database, or in memory when the pack has none on disk.
    pub fn for_pack(pack: &StatePack) -> Result<Self, StoreError> {
        match pack.connect_again() {
            Some(conn) => Self::with_connection(conn?),
            None => Self::in_memory(),
        }
    }

    /// Checkpoints in a throwaway in-memory database (tests, and packs kept in memory).
    pub fn in_memory() -> Result<Self, StoreError> {
        let conn = rusqlite::Connection::open_in_memory()?;
        db::configure(&conn)?;
        Self::with_connection(Db::sqlite(conn, ":memory:"))
    }

    fn conn(&self) -> MutexGuard<'_, Db> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Receipts in the database's log (the next receipt's seq); 0 when the database has no
    /// log (an in-memory checkpointer).
    pub(crate) fn receipt_count(&self) -> Result<u64, GraphError> {
        let conn = self.conn();
        let has_log: bool = conn.query_row(
            match conn.kind() {
                Kind::Sqlite => {
                    "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'receipts'"
                }
                Kind::Postgres => "SELECT to_regclass('receipts') IS NOT NULL",
            },
            [],
            |r| r.get(0),
        )?;
        if !has_log {
            return Ok(0);
        }
        let head = log::head(&conn).map_err(StoreError::from)?;
        Ok(head.map_or(0, |(seq, _)| seq + 1))
    }

    pub(crate) fn insert(&self, c: New<'_>) -> Result<CheckpointId, GraphError> {
        let conn = self.conn();
        let snapshot = c.snapshot.map(serde_json::to_vec).transpose()?;
        let id = conn.query_row(
            "INSERT INTO graph_checkpoints (thread, parent, step, source, snapshot, writes, next, \
             joins, receipts_from, receipts_to, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) RETURNING id",
            params![
                c.thread,
                c.parent.map(|p| p.0),
                c.step,
                c.source.as_str(),
                snapshot,
                serde_json::to_vec(c.writes)?,
                serde_json::to_vec(c.next)?,
                serde_json::to_vec(c.joins)?,
                c.receipts.0 as i64,
                c.receipts.1 as i64,
                i64::try_from(log::now_ms()).unwrap_or(i64::MAX),
            ],
            |r| r.get(0),
        )?;
        Ok(CheckpointId(id))
    }

    fn read(row: &Row) -> rusqlite::Result<RawRow> {
        Ok(RawRow {
            id: row.get(0)?,
            thread: row.get(1)?,
            parent: row.get(2)?,
            step: row.get(3)?,
            source: row.get(4)?,
            snapshot: row.get(5)?,
            writes: row.get(6)?,
            next: row.get(7)?,
            joins: row.get(8)?,
            receipts: (row.get(9)?, row.get(10)?),
            created_at: row.get(11)?,
            bytes: row.get(12)?,
        })
    }

    /// The checkpoint `id`.
    pub(crate) fn get(&self, id: CheckpointId) -> Result<Stored, GraphError> {
        let raw = self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM graph_checkpoints WHERE id = ?1"),
                [id.0],
                Self::read,
            )
            .optional()?
            .ok_or(GraphError::NoCheckpoint(id))?;
        raw.parse()
    }

    /// The thread's newest checkpoint.
    pub(crate) fn latest(&self, thread: &str) -> Result<Option<Stored>, GraphError> {
        self.conn()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM graph_checkpoints WHERE thread = ?1 \
                     ORDER BY id DESC LIMIT 1"
                ),
                [thread],
                Self::read,
            )
            .optional()?
            .map(RawRow::parse)
            .transpose()
    }

    /// `id` and its ancestors, root first.
    pub(crate) fn chain(&self, id: CheckpointId) -> Result<Vec<Stored>, GraphError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "WITH RECURSIVE chain(id) AS ( \
                 SELECT CAST(?1 AS BIGINT) \
                 UNION ALL \
                 SELECT c.parent FROM graph_checkpoints c JOIN chain ON c.id = chain.id \
                 WHERE c.parent IS NOT NULL) \
             SELECT {COLUMNS} FROM graph_checkpoints WHERE id IN (SELECT id FROM chain) ORDER BY id"
        ))?;
        let rows = stmt
            .query_map([id.0], Self::read)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let chain = rows
            .into_iter()
            .map(RawRow::parse)
            .collect::<Result<Vec<_>, _>>()?;
        match chain.last() {
            Some(last) if last.id == id => {}
            _ => return Err(GraphError::NoCheckpoint(id)),
        }
        if chain[0].source != Source::Input {
            return Err(corrupt(format!("checkpoint {id} has no input at its root")));
        }
        Ok(chain)
    }

    /// Every checkpoint of `thread`, newest first.
    pub fn history(&self, thread: &str) -> Result<Vec<CheckpointInfo>, GraphError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM graph_checkpoints WHERE thread = ?1 ORDER BY id DESC"
        ))?;
        let rows = stmt
            .query_map([thread], Self::read)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|r| r.parse().map(|s| CheckpointInfo::from(&s)))
            .collect()
    }

    /// Bytes stored for `thread`'s checkpoints.
    pub fn thread_bytes(&self, thread: &str) -> Result<u64, GraphError> {
        let n: i64 = self.conn().query_row(
            &format!("SELECT CAST(COALESCE(SUM({BYTES}), 0) AS BIGINT) FROM graph_checkpoints WHERE thread = ?1"),
            [thread],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    id: CheckpointId,
    what: &str,
    bytes: &[u8],
) -> Result<T, GraphError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(format!("checkpoint {id}: {what}: {e}")))
}

struct RawRow {
    id: i64,
    thread: String,
    parent: Option<i64>,
    step: i64,
    source: String,
    snapshot: Option<Vec<u8>>,
    writes: Vec<u8>,
    next: Vec<u8>,
    joins: Vec<u8>,
    receipts: (i64, i64),
    created_at: i64,
    bytes: i64,
}

impl RawRow {
    fn parse(self) -> Result<Stored, GraphError> {
        let id = CheckpointId(self.id);
        Ok(Stored {
            id,
            thread: self.thread,
            parent: self.parent.map(CheckpointId),
            step: self.step,
            source: Source::parse(&self.source)
                .ok_or_else(|| corrupt(format!("checkpoint {id}: source {:?}", self.source)))?,
            snapshot: self
                .snapshot
                .as_deref()
                .map(|b| decode(id, "snapshot", b))
                .transpose()?,
            writes: decode(id, "writes", &self.writes)?,
            next: decode(id, "next", &self.next)?,
            joins: decode(id, "joins", &self.joins)?,
            receipts: (self.receipts.0.max(0) as u64, self.receipts.1.max(0) as u64),
            created_at: self.created_at,
            bytes: self.bytes.max(0) as u64,
        })
    }
}

#[cfg(test)]
mod own_connection_tests {
    use super::*;

    /// Checkpointing a graph needs no signing key and starts no receipt log: the graph owns
    /// its table and its connection.
    #[test]
    fn a_checkpointer_opens_its_own_table_and_no_log() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("graph.db");
        let c = Checkpointer::open(&db).unwrap();
        assert_eq!(c.receipt_count().unwrap(), 0);
        let conn = c.conn();
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(tables, ["graph_checkpoints"]);
        drop(conn);
        drop(c);
        // Reopening (the table exists) works, and so does a store opening the same file.
        Checkpointer::open(&db).unwrap();
        let store =
            state_pack_core::Store::open(&db, state_pack_ledger::Signer::from_seed([1; 32]))
                .unwrap();
        assert_eq!(store.receipt_count().unwrap(), 1);
        drop(store);
        assert_eq!(Checkpointer::open(&db).unwrap().receipt_count().unwrap(), 1);
    }
}
