//! The ledger end to end on the real model, as an operator and an auditor use it: `run`
//! writes receipts, `verify` checks them (and catches a truncation against a checkpoint
//! saved earlier), `receipts prove` / `check-proof` check one receipt offline.

use std::path::Path;
use std::process::{Command, Output};

fn state_pack(key: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_state-pack"))
        .args(args)
        .env("RUST_LOG", "off")
        .env("STATE_PACK_KEY", key)
        .output()
        .expect("run state-pack")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(key: &Path, args: &[&str]) -> String {
    let o = state_pack(key, args);
    assert!(
        o.status.success(),
        "{args:?} failed:\n{}\n{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

#[test]
fn run_verify_prove_and_catch_a_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let db = dir.path().join("agent.db");
    let db_s = db.to_str().unwrap();
    let cp = dir.path().join("checkpoint.json");
    let cp_s = cp.to_str().unwrap();

    let out = ok(&key, &["run", "--steps", "2", "--db", db_s]);
    assert!(out.contains("created signing key"), "{out}");
    assert!(out.contains("verify them with: state-pack verify"), "{out}");
    let shown = ok(&key, &["keys", "show"]);
    let pubkey = shown
        .lines()
        .find_map(|l| l.strip_prefix("public key"))
        .unwrap()
        .trim()
        .to_string();

    // open_log + create + 2 infers.
    let out = ok(
        &key,
        &[
            "verify",
            "--db",
            db_s,
            "--pubkey",
            &pubkey,
            "--save-checkpoint",
            cp_s,
        ],
    );
    assert!(
        out.contains("4 receipts") && out.contains("OK: verified in"),
        "{out}"
    );

    // The same database continues the same ledger, and has only grown since the checkpoint.
    ok(&key, &["run", "--steps", "1", "--db", db_s]);
    let out = ok(
        &key,
        &[
            "verify",
            "--db",
            db_s,
            "--pubkey",
            &pubkey,
            "--trusted-checkpoint",
            cp_s,
        ],
    );
    assert!(
        out.contains("5 receipts") && out.contains("consistent with the trusted checkpoint"),
        "{out}"
    );

    // One receipt, checked offline against the signed checkpoint.
    let proof = ok(&key, &["receipts", "prove", "2", "--db", db_s]);
    let proof_file = dir.path().join("proof.json");
    std::fs::write(&proof_file, proof).unwrap();
    let out = ok(
        &key,
        &[
            "receipts",
            "check-proof",
            proof_file.to_str().unwrap(),
            "--pubkey",
            &pubkey,
        ],
    );
    assert!(out.starts_with("ok: receipt 2 (infer)"), "{out}");

    let export = ok(
        &key,
        &["receipts", "export", "--db", db_s, "--format", "jsonl"],
    );
    assert_eq!(export.lines().count(), 5);

    // Truncate the log consistently (receipts, operations, checkpoints): only the saved
    // checkpoint can tell, and verify must fail naming the first missing receipt.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "PRAGMA foreign_keys = OFF;
         DELETE FROM operations WHERE receipt_seq >= 3;
         DELETE FROM receipts WHERE seq >= 3;
         DELETE FROM checkpoints WHERE size > 3;",
    )
    .unwrap();
    drop(conn);
    let o = state_pack(
        &key,
        &[
            "verify",
            "--db",
            db_s,
            "--pubkey",
            &pubkey,
            "--trusted-checkpoint",
            cp_s,
        ],
    );
    let out = stdout(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("FAILED: first bad receipt is 3"), "{out}");
    assert!(
        out.contains("covers 4 receipts but the log holds 3"),
        "{out}"
    );
}
