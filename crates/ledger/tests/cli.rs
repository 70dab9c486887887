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

/// The transparency commands from the command line: the checkpoint as a note and its vkey,
/// a consistency proof, a witness's vkey and cosignature, the cosignature added to the log,
/// `verify --witness` and `--trusted-checkpoint NOTE`, and the tiles export.
#[test]
fn a_witness_cosigns_from_the_command_line_and_verify_requires_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let wkey = dir.path().join("witness.pem");
    let db = dir.path().join("log.db");
    let (key_s, wkey_s, db_s) = (
        key.to_str().unwrap(),
        wkey.to_str().unwrap(),
        db.to_str().unwrap(),
    );
    assert!(run(&["keys", "new", "--key", key_s]).status.success());
    assert!(run(&["keys", "new", "--key", wkey_s]).status.success());
    // Key events only (operations need the store's state rows): open_log, then hand-overs.
    let k1 = Signer::load(&key).unwrap();
    {
        let mut l = LedgerDb::open(&db, k1.clone()).unwrap();
        l.checkpoint().unwrap();
    }
    let ok = |args: &[&str]| -> String {
        let o = run(args);
        assert!(
            o.status.success(),
            "{args:?}: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        text(&o.stdout)
    };
    // The log's checkpoint as a signed note or its verifier key.
    let checkpoint = |format: &str| {
        ok(&[
            "receipts",
            "checkpoint",
            "--db",
            db_s,
            "--key",
            key_s,
            "--format",
            format,
        ])
    };
    let note1 = checkpoint("note");
    let vkey = checkpoint("vkey");
    let vkey = vkey.trim();
    assert!(vkey.starts_with("state-pack.invalid/log/"), "{vkey}");
    let note1_file = dir.path().join("note1");
    std::fs::write(&note1_file, &note1).unwrap();
    let state = dir.path().join("wstate");
    let me = [
        "--name",
        "witness.example/w1",
        "--witness-key",
        wkey_s,
        "--state",
        state.to_str().unwrap(),
    ];
    let wvkey = ok(&[&["witness", "vkey"][..], &me].concat());
    let cosigned = ok(&[
        &[
            "witness",
            "cosign",
            note1_file.to_str().unwrap(),
            "--log",
            vkey,
        ][..],
        &me,
    ]
    .concat());
    let c_file = dir.path().join("cosigned1");
    std::fs::write(&c_file, &cosigned).unwrap();
    ok(&[
        "receipts",
        "cosign",
        c_file.to_str().unwrap(),
        "--db",
        db_s,
        "--key",
        key_s,
    ]);
    let out = ok(&["verify", "--db", db_s, "--witness", wvkey.trim()]);
    assert!(out.contains("OK: verified"), "{out}");

    // The log grows: a hand-over to a second key and back, so that the newest checkpoint is
    // signed by the key the witness knows the log by. The witness needs a proof.
    let k2 = Signer::from_seed([2; 32]);
    LedgerDb::open(&db, k1.clone())
        .unwrap()
        .rotate_key(k2.clone())
        .unwrap();
    LedgerDb::open(&db, k2)
        .unwrap()
        .rotate_key(k1.clone())
        .unwrap();
    let note2 = checkpoint("note");
    assert_eq!(note2.lines().nth(1), Some("3"), "{note2}");
    let n2_file = dir.path().join("note2");
    std::fs::write(&n2_file, &note2).unwrap();
    let cosign2 = |proof: Option<&str>| {
        let mut args = vec![
            "witness",
            "cosign",
            n2_file.to_str().unwrap(),
            "--log",
            vkey,
        ];
        if let Some(p) = proof {
            args.extend(["--proof", p]);
        }
        run(&[&args[..], &me].concat())
    };
    let refused = cosign2(None);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("consistency proof"),
        "{}",
        text(&refused.stderr)
    );
    let proof = ok(&["receipts", "prove", "--consistency", "1", "3", "--db", db_s]);
    assert!(proof.contains("\"old_size\": 1"), "{proof}");
    let p_file = dir.path().join("proof.json");
    std::fs::write(&p_file, &proof).unwrap();
    // Not witnessed yet: verify refuses.
    let out = run(&["verify", "--db", db_s, "--witness", wvkey.trim()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("no cosignature of witness"),
        "{}",
        text(&out.stdout)
    );
    let cosigned2 = cosign2(Some(p_file.to_str().unwrap()));
    assert!(cosigned2.status.success(), "{}", text(&cosigned2.stderr));
    let c2_file = dir.path().join("cosigned2");
    std::fs::write(&c2_file, &cosigned2.stdout).unwrap();
    ok(&[
        "receipts",
        "cosign",
        c2_file.to_str().unwrap(),
        "--db",
        db_s,
        "--key",
        key_s,
    ]);
    let out = ok(&["verify", "--db", db_s, "--witness", wvkey.trim()]);
    assert!(out.contains("OK: verified"), "{out}");
    // Growth from the first note checks by consistency proof.
    let out = ok(&[
        "verify",
        "--db",
        db_s,
        "--trusted-checkpoint",
        note1_file.to_str().unwrap(),
    ]);
    assert!(
        out.contains("consistent with the trusted checkpoint"),
        "{out}"
    );
    // The tiles export.
    let tiles = dir.path().join("tiles");
    let out = ok(&[
        "receipts",
        "export",
        "--db",
        db_s,
        "--format",
        "tiles",
        tiles.to_str().unwrap(),
    ]);
    assert!(out.contains("3 receipts"), "{out}");
    assert!(tiles.join("checkpoint").is_file() && tiles.join("tile/0/000.p/3").is_file());
    assert!(
        tiles.join("tile/entries/000.p/3").is_file() && tiles.join("tile/bodies/000.p/3").is_file()
    );
}
