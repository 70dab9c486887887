//! The schema of a state-pack database, in `migrations/*.sql`, applied in order and tracked
//! with SQLite's `user_version` (Postgres: the same tables from `migrations/postgres/`,
//! tracked in `state_pack_schema`): the auditable tables (`states`, `operations`, `receipts`,
//! `checkpoints`). Other parts of state-pack keep their own tables in the same file on
//! their own connections (graph checkpoints).

use crate::sql::{Db, Kind, OptionalExtension, SqlError};

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

/// The Postgres schema: each entry brings a database to the SQLite version it names, with
/// the same tables and checks in Postgres's types. A new Postgres database starts at
/// [`VERSION`] in one step; a migration added later appears in both lists.
pub const POSTGRES_MIGRATIONS: &[(usize, &str, &str)] = &[(
    7,
    "0007_schema",
    include_str!("../migrations/postgres/0007_schema.sql"),
)];

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
    /// The database failed.
    #[error(transparent)]
    Sql(#[from] SqlError),
}

/// The schema version of the database on `db` (0 for a new one): SQLite's `user_version`,
/// or the row of Postgres's `state_pack_schema`.
pub fn version(db: &Db) -> Result<i64, SqlError> {
    match db.kind() {
        Kind::Sqlite => db.query_row("PRAGMA user_version", [], |r| r.get(0)),
        Kind::Postgres => {
            let exists: bool = db.query_row(
                "SELECT to_regclass('state_pack_schema') IS NOT NULL",
                [],
                |r| r.get(0),
            )?;
            if !exists {
                return Ok(0);
            }
            db.query_row("SELECT version FROM state_pack_schema", [], |r| r.get(0))
                .optional()
                .map(|v| v.unwrap_or(0))
        }
    }
}

/// Applies pending migrations in one write transaction, so processes opening the same new
/// database at once do not race (the second sees the first's work).
pub fn migrate(db: &Db) -> Result<(), SchemaError> {
    let tx = db.write()?;
    let found = version(&tx)?;
    if found > VERSION as i64 {
        return Err(SchemaError::TooNew {
            found,
            supported: VERSION,
        });
    }
    match tx.kind() {
        Kind::Sqlite => {
            for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(found as usize) {
                tx.execute_batch(sql)?;
                tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
                tracing::info!(migration = name, "applied migration");
            }
        }
        Kind::Postgres => {
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS state_pack_schema (
                     one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
                     version BIGINT NOT NULL)",
            )?;
            for (version, name, sql) in POSTGRES_MIGRATIONS {
                if *version as i64 <= found {
                    continue;
                }
                tx.execute_batch(sql)?;
                tx.execute(
                    "INSERT INTO state_pack_schema (version) VALUES (?1)
                     ON CONFLICT (one) DO UPDATE SET version = excluded.version",
                    [*version as i64],
                )?;
                tracing::info!(migration = name, "applied migration");
            }
        }
    }
    tx.commit()?;
    Ok(())
}
