//! Which database the scripted suites run on: SQLite (files in the test's directory, or in
//! memory) by default, or, with `STATE_PACK_TEST_POSTGRES=postgres://...` set to a running
//! server (`.ci/run` starts one), a fresh Postgres database for each database a test asks
//! for, so the same tests check both backends.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use state_pack::ledger::Signer;
use state_pack::Store;

/// The Postgres server the suites run against, if one is given.
pub fn postgres() -> Option<String> {
    std::env::var("STATE_PACK_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty())
}

/// Where the database a test keeps at `path` is: `path` itself on SQLite, else the URL of
/// a Postgres database made for it the first time it is asked for (so reopening it finds
/// the same database).
pub fn location(path: &Path) -> String {
    let Some(server) = postgres() else {
        return path.display().to_string();
    };
    static MADE: OnceLock<Mutex<HashMap<PathBuf, String>>> = OnceLock::new();
    let mut made = MADE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    made.entry(path.to_path_buf())
        .or_insert_with(|| fresh_database(&server))
        .clone()
}

/// A new, empty database on the Postgres server at `server`; its URL.
pub fn fresh_database(server: &str) -> String {
    state_pack_postgres::create_database(server).expect("create a test database")
}

/// The store at `path` (see [`location`]), signed by `signer`.
pub fn open(path: &Path, signer: Signer) -> Store {
    open_with(path, signer, state_pack::ledger::DEFAULT_CHECKPOINT_EVERY)
}

/// [`open`], or why it failed.
pub fn try_open(path: &Path, signer: Signer) -> Result<Store, state_pack::store::StoreError> {
    Store::open_location(
        &location(path),
        signer,
        state_pack::ledger::DEFAULT_CHECKPOINT_EVERY,
    )
}

/// The ledger of the database at `path` (see [`location`]), signed by `signer`.
pub fn ledger_db(path: &Path, signer: Signer) -> state_pack::ledger::LedgerDb {
    match postgres() {
        Some(_) => state_pack::ledger::LedgerDb::open_db(
            state_pack_postgres::connect(&location(path)).expect("connect"),
            signer,
            state_pack::ledger::DEFAULT_CHECKPOINT_EVERY,
        ),
        None => state_pack::ledger::LedgerDb::open(path, signer),
    }
    .expect("open the ledger")
}

/// The ledger of the database at `path`, without a key: reads only.
pub fn ledger_db_for_reading(path: &Path) -> state_pack::ledger::LedgerDb {
    match postgres() {
        Some(_) => state_pack::ledger::LedgerDb::open_db_for_reading(
            state_pack_postgres::connect(&location(path)).expect("connect"),
        ),
        None => state_pack::ledger::LedgerDb::open_for_reading(path),
    }
    .expect("open the ledger for reading")
}

/// The store at `path`, without a key: reads only.
pub fn open_for_reading(path: &Path) -> Store {
    Store::open_location_for_reading(&location(path)).expect("open the store for reading")
}

/// [`open`], checkpointing every `every` receipts.
pub fn open_with(path: &Path, signer: Signer, every: u64) -> Store {
    Store::open_location(&location(path), signer, every).expect("open the store")
}

/// A throwaway store: in memory on SQLite, a fresh database on Postgres.
pub fn throwaway(signer: Signer) -> Store {
    match postgres() {
        Some(server) => Store::open_location(
            &fresh_database(&server),
            signer,
            state_pack::ledger::DEFAULT_CHECKPOINT_EVERY,
        )
        .expect("open a Postgres store"),
        None => Store::open_in_memory(signer).expect("open an in-memory store"),
    }
}

/// `verify` of the log in the database a test keeps at `path` (see [`location`]).
pub fn verify(
    path: &Path,
    options: &state_pack::ledger::VerifyOptions,
) -> state_pack::ledger::VerifyReport {
    let at = location(path);
    if postgres().is_some() {
        let conn = state_pack_postgres::connect(&at).expect("connect to the test database");
        state_pack::ledger::verify::verify(&conn, options).expect("verification runs")
    } else {
        state_pack::ledger::verify_file(path, options).expect("verification runs")
    }
}

/// A pack over `engine` and the store at `path`, keeping KV blobs in `<path>.kv/` on
/// either backend (on SQLite that is the default; a Postgres store has no file to put
/// them beside).
pub fn pack(
    engine: std::sync::Arc<dyn state_pack::engine::Engine>,
    path: &Path,
    signer: Signer,
) -> state_pack::StatePack {
    let pack = state_pack::StatePack::new(engine, open(path, signer));
    if postgres().is_none() {
        return pack;
    }
    let blobs = state_pack::kv_blob::KvBlobStore::open(
        state_pack::kv_blob::KvBlobStore::dir_for_database(path),
        state_pack::kv_blob::DEFAULT_BUDGET_BYTES,
    )
    .expect("open the blob directory");
    pack.with_kv_blobs(Some(blobs))
}
