//! The schema of a state-pack database, in `migrations/*.sql`, applied in order and tracked
//! with SQLite's `user_version`: the auditable tables (`states`, `operations`, `receipts`,
//! `checkpoints`). Other parts of state-pack keep their own tables in the same file on
//! their own connections (graph checkpoints).

use rusqlite::{Connection, TransactionBehavior};

/// Migrations in the order they apply; the index + 1 is the schema version after each.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_states", include_str!("../migrations/0001_states.sql")),
    ("0002_ledger", include_str!("../migrations/0002_ledger.sql")),
    // The graph's table moved to the graph module, which creates it on its own connection
    // (`src/graph/schema.sql`); the version number stays so existing databases line up.
    ("0003_graph", "SELECT 1;"),
    ("0004_replay", include_str!("../migrations/0004_replay.sql")),
    (
        "0005_kv_blobs",
        include_str!("../migrations/0005_kv_blobs.sql"),
    ),
    (
        "0006_prefix_index",
        include_str!("../migrations/0006_prefix_index.sql"),
    ),
    ("0007_tree", include_str!("../migrations/0007_tree.sql")),
];

/// The schema version this build writes and reads.
pub const VERSION: usize = MIGRATIONS.len();

/// Why a database's schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database was written by a newer build.
    #[error("schema version {found} is newer than this build's {supported}")]
    TooNew {
        /// Its version.
        found: i64,
        /// Ours.
        supported: usize,
    },
    /// SQLite failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// The schema version of the database on `conn` (0 for a new one).
pub fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Applies pending migrations in one immediate transaction, so processes opening the same
/// new database at once do not race (the second sees the first's work).
pub fn migrate(conn: &mut Connection) -> Result<(), SchemaError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = version(&tx)?;
    if found > VERSION as i64 {
        return Err(SchemaError::TooNew {
            found,
            supported: VERSION,
        });
    }
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tracing::info!(migration = name, "applied migration");
    }
    tx.commit()?;
    Ok(())
}
