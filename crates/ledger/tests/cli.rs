//! The auditor's binary, `state-pack-ledger`, on databases written through the ledger crate
//! alone: it verifies them, and it exits quietly when its reader goes away
//! (`receipts list | head`).

use std::process::{Command, Output, Stdio};

mod common;
use common::write_log;
use state_pack_ledger::{LedgerDb, Signer};

fn ledger_bin(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_state-pack-ledger"));
    c.args(args).env("RUST_LOG", "off");
    c
}

fn run(args: &[&str]) -> Output {
    ledger_bin(args).output().expect("run state-pack-ledger")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn receipts_list_into_a_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    // ~100 bytes a line: far more than a pipe buffer (64 KiB), so the writer must meet the
    // closed pipe however the two processes are scheduled.
    write_log(&db, Signer::from_seed([3; 32]), 1500);
    let mut child = ledger_bin(&["receipts", "list", "--limit", "2000", "--db"])
        .arg(&db)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr, "");
}

#[test]
fn verifies_a_rotated_log_and_lists_its_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let db = dir.path().join("log.db");
    let key_s = key.to_str().unwrap();
    let o = run(&["keys", "new", "--key", key_s]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let pubkey = text(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("public key").map(|k| k.trim().to_string()))
        .expect("keys new prints the public key");
    // A log of key events only (operations need the states and operations rows that the
    // store writes): open_log, then a hand-over to a second key.
    {
        let mut ledger_db = LedgerDb::open(&db, Signer::load(&key).unwrap()).unwrap();
        ledger_db.rotate_key(Signer::from_seed([2; 32])).unwrap();
    }
    let db_s = db.to_str().unwrap();

    let o = run(&["verify", "--db", db_s, "--pubkey", &pubkey]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}{}", text(&o.stderr));
    assert!(out.contains("2 of 2 signatures verify"), "{out}");
    assert!(out.contains("2 key(s)"), "{out}");
    assert!(out.contains("OK: verified"), "{out}");

    let o = run(&["receipts", "list", "--db", db_s]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert_eq!(out.lines().count(), 3, "a header and 2 receipts: {out}");
    assert!(out.lines().nth(1).unwrap().contains("open_log"), "{out}");
    assert!(out.lines().nth(2).unwrap().contains("rotate_key"), "{out}");

    // A different key is not the log's key: verify fails, naming why.
    let other = Signer::from_seed([1; 32]).public_key().to_hex();
    let o = run(&["verify", "--db", db_s, "--pubkey", &other]);
    assert!(!o.status.success(), "{}", text(&o.stdout));
}

#[test]
fn a_missing_database_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nope.db");
    let o = run(&["receipts", "list", "--db", db.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!db.exists(), "listing must not create the database");
}
