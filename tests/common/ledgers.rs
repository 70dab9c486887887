//! Ledgers written by the real store on a synthetic chain, checked as an auditor would.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use state_pack::ledger::{verify_file, Signer, VerifyOptions, VerifyReport};
use state_pack::Store;

use super::synthetic::Chain;

pub fn key() -> Signer {
    Signer::from_seed([11; 32])
}

/// A closed ledger with `ops` operations (1 open_log + ops receipts), checkpoint every 8.
pub fn ledger(dir: &Path, ops: usize) -> PathBuf {
    let db = dir.join("ledger.db");
    let mut store = Store::open_with(&db, key(), 8).unwrap();
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

pub fn check(db: &Path, options: &VerifyOptions) -> VerifyReport {
    verify_file(db, options).expect("verification runs")
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

/// A raw connection, as an attacker with write access to the file would use.
pub fn sql(db: &Path) -> Connection {
    let conn = Connection::open(db).unwrap();
    conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    conn
}
