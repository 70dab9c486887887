//! Ledgers written by the real store on a synthetic chain, checked as an auditor would.

use std::path::{Path, PathBuf};

use state_pack::ledger::sql::Db;
use state_pack::ledger::{Signer, VerifyOptions, VerifyReport};

use super::synthetic::Chain;

pub fn key() -> Signer {
    Signer::from_seed([11; 32])
}

/// A closed ledger with `ops` operations (1 open_log + ops receipts), checkpoint every 8.
pub fn ledger(dir: &Path, ops: usize) -> PathBuf {
    let db = dir.join("ledger.db");
    let mut store = super::db::open_with(&db, key(), 8);
    let mut chain = Chain::new(100, 40);
    for _ in 0..ops {
        chain.step(&mut store, 5);
    }
    db
}

pub fn trusted() -> VerifyOptions {
    VerifyOptions {
        trusted_keys: vec![key().public_key()],
        trusted_checkpoint: None,
        witnesses: Vec::new(),
    }
}

/// `verify` of the database a test keeps at `db` (SQLite, or Postgres: `super::db`).
pub fn check(db: &Path, options: &VerifyOptions) -> VerifyReport {
    super::db::verify(db, options)
}

pub fn assert_caught(report: &VerifyReport, first_bad: Option<u64>, needle: &str) {
    assert!(!report.ok(), "tampering went unnoticed");
    if first_bad.is_some() {
        assert_eq!(
            report.first_bad_receipt(),
            first_bad,
            "{:#?}",
            report.failures
        );
    }
    assert!(
        report.failures.iter().any(|f| f.message.contains(needle)),
        "no failure mentions {needle:?}: {:#?}",
        report.failures
    );
}

/// A raw connection, as an attacker with write access to the database would use, with
/// foreign keys not enforced.
pub fn sql(db: &Path) -> Db {
    if super::db::postgres().is_some() {
        let conn = state_pack_postgres::connect(&super::db::location(db)).unwrap();
        conn.execute_batch("SET session_replication_role = replica")
            .unwrap();
        return conn;
    }
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    Db::sqlite(conn, db.display().to_string())
}
