//! The ledger in the transparency ecosystem's formats, attacked: a witness cosigning a growing
//! log and refusing a forked one (with the evidence written out), `verify --witness`, a trust
//! anchor on a rotated-to key, a rotation its new key never signed, a revoked key signing a
//! later checkpoint, the stored tree and a checkpoint note edited in the file, and growth from a
//! trusted checkpoint note checked by consistency proof. On SQLite, or on Postgres with
//! `STATE_PACK_TEST_POSTGRES` (`tests/common/db.rs`; the forks are made by copying a file, so
//! those two run on SQLite only).

mod common;

use std::path::Path;

use common::ledgers::{assert_caught, check, key, ledger, sql, trusted};
use common::synthetic::Chain;
use state_pack::ledger::checkpoint::Checkpoint;
use state_pack::ledger::note::{NoteVerifier, COSIGNATURE_V1};
use state_pack::ledger::witness::{Witness, WitnessError};
use state_pack::ledger::{stored, LedgerDb, Signer, TrustedCheckpoint, VerifyOptions};

fn witness_key() -> Signer {
    Signer::from_seed([77; 32])
}

fn witness(state: &Path) -> Witness {
    Witness::new("witness.example/w1", witness_key(), state).unwrap()
}

fn witness_vkey() -> NoteVerifier {
    NoteVerifier::new(
        "witness.example/w1",
        COSIGNATURE_V1,
        witness_key().public_key(),
    )
    .unwrap()
}

/// The log's note verifier key and its newest checkpoint note (after checkpointing).
fn newest_note(db: &Path, signer: &Signer) -> (NoteVerifier, String, u64) {
    let mut ldb = common::db::ledger_db(db, signer.clone());
    ldb.checkpoint().unwrap();
    let log = state_pack::ledger::log::log_id(ldb.conn())
        .unwrap()
        .unwrap();
    let v = NoteVerifier::new(
        &state_pack::ledger::note::CheckpointText::origin_of(&log),
        state_pack::ledger::note::ED25519,
        signer.public_key(),
    )
    .unwrap();
    let note = stored::note_at(ldb.conn(), None).unwrap().unwrap();
    let size = ldb.receipt_count().unwrap();
    (v, note, size)
}

/// `n` more operations on the log at `db` (a new chain of its own, `salt` apart).
fn grow(db: &Path, signer: &Signer, salt: u32, n: usize) {
    let mut store = common::db::open_with(db, signer.clone(), 8);
    let mut chain = Chain::new(salt, 30);
    for _ in 0..n {
        chain.step(&mut store, 3);
    }
}

fn with_witness() -> VerifyOptions {
    VerifyOptions {
        witnesses: vec![witness_vkey()],
        ..trusted()
    }
}

#[test]
fn a_witness_cosigns_a_growing_log_and_verify_requires_its_cosignature() {
    let dir = tempfile::tempdir().unwrap();
    let db = ledger(dir.path(), 20);
    let w = witness(&dir.path().join("witness"));
    let (log, note, n1) = newest_note(&db, &key());
    // Not yet witnessed.
    assert_caught(
        &check(&db, &with_witness()),
        None,
        "no cosignature of witness",
    );

    let cosigned = w.cosign(&log, &note, None, 1_800_000_000).unwrap();
    let ldb = common::db::ledger_db(&db, key());
    assert_eq!(
        stored::add_cosignatures(ldb.conn(), &cosigned.encode()).unwrap(),
        1
    );
    drop(ldb);
    let r = check(&db, &with_witness());
    assert!(r.ok(), "{:#?}", r.failures);

    // The log grows: the witness needs the consistency proof from what it cosigned.
    grow(&db, &key(), 5000, 11);
    let (_, note2, n2) = newest_note(&db, &key());
    assert!(n2 > n1);
    match w.cosign(&log, &note2, None, 1_800_000_100) {
        Err(WitnessError::NeedProof { old, new, .. }) => assert_eq!((old, new), (n1, n2)),
        other => panic!("{other:?}"),
    }
    let proof = {
        let ldb = common::db::ledger_db_for_reading(&db);
        stored::prove_consistency(ldb.conn(), n1, n2).unwrap()
    };
    let cosigned2 = w.cosign(&log, &note2, Some(&proof), 1_800_000_100).unwrap();
    // The newest checkpoint is not cosigned in the log until the operator adds it.
    assert_caught(
        &check(&db, &with_witness()),
        None,
        "no cosignature of witness",
    );
    let ldb = common::db::ledger_db(&db, key());
    stored::add_cosignatures(ldb.conn(), &cosigned2.encode()).unwrap();
    drop(ldb);
    assert!(check(&db, &with_witness()).ok());
    // A cosignature line edited in the file no longer verifies.
    let conn = sql(&db);
    let stored_note: String = conn
        .query_row(
            "SELECT note FROM checkpoint_notes ORDER BY size DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let last = stored_note
        .trim_end()
        .rsplit('\n')
        .next()
        .unwrap()
        .to_string();
    // One base64 character inside the signature (past the key ID), changed.
    let at = last.len() - 20;
    let was = &last[at..at + 1];
    let flipped = format!(
        "{}{}{}",
        &last[..at],
        if was == "A" { "B" } else { "A" },
        &last[at + 1..]
    );
    conn.execute(
        "UPDATE checkpoint_notes SET note = replace(note, ?1, ?2)",
        [&last, &flipped],
    )
    .unwrap();
    assert_caught(&check(&db, &with_witness()), None, "witness.example/w1");
}

#[test]
fn a_forked_log_is_refused_by_the_witness_with_both_notes_as_evidence() {
    if common::db::postgres().is_some() {
        return; // the fork is a copied file
    }
    let dir = tempfile::tempdir().unwrap();
    let db = ledger(dir.path(), 20);
    let state = dir.path().join("witness");
    let w = witness(&state);
    let (log, note1, n1) = newest_note(&db, &key());
    w.cosign(&log, &note1, None, 1_800_000_000).unwrap();
    // The operator keeps two copies and extends each its own way to the same size.
    let fork = dir.path().join("fork.db");
    std::fs::copy(&db, &fork).unwrap();
    grow(&db, &key(), 1000, 9);
    grow(&fork, &key(), 2000, 9);
    let (_, note_a, na) = newest_note(&db, &key());
    let (_, note_b, nb) = newest_note(&fork, &key());
    assert_eq!(na, nb);
    assert_ne!(note_a, note_b);
    let proof_a =
        stored::prove_consistency(LedgerDb::open_for_reading(&db).unwrap().conn(), n1, na).unwrap();
    let proof_b =
        stored::prove_consistency(LedgerDb::open_for_reading(&fork).unwrap().conn(), n1, nb)
            .unwrap();
    w.cosign(&log, &note_a, Some(&proof_a), 1_800_000_100)
        .unwrap();
    // Shown the other head of the same size: a fork, refused, with the evidence.
    let err = w
        .cosign(&log, &note_b, Some(&proof_b), 1_800_000_200)
        .unwrap_err();
    let WitnessError::Fork { what, evidence } = err else {
        panic!("{err:?}")
    };
    assert!(what.contains("two different trees of size"), "{what}");
    let text = std::fs::read_to_string(&evidence).unwrap();
    assert!(
        text.contains(note_b.trim_end()),
        "the note shown now is in the evidence"
    );
    let cosigned_a = &note_a[..note_a.len() - 1];
    assert!(
        text.contains(
            cosigned_a
                .lines()
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
                .as_str()
        ),
        "the note cosigned before is in the evidence"
    );
    // The forked copy growing further does not extend what the witness cosigned either.
    grow(&fork, &key(), 3000, 4);
    let (_, note_b2, nb2) = newest_note(&fork, &key());
    let proof_b2 =
        stored::prove_consistency(LedgerDb::open_for_reading(&fork).unwrap().conn(), na, nb2)
            .unwrap();
    let err = w
        .cosign(&log, &note_b2, Some(&proof_b2), 1_800_000_300)
        .unwrap_err();
    assert!(
        matches!(err, WitnessError::Fork { ref what, .. } if what.contains("does not extend")),
        "{err:?}"
    );
    // And an older checkpoint after a newer one is a rollback.
    let err = w.cosign(&log, &note1, None, 1_800_000_400).unwrap_err();
    assert!(
        matches!(err, WitnessError::Fork { ref what, .. } if what.contains("rollback")),
        "{err:?}"
    );
    // A note the log did not sign is not the log's.
    let other =
        NoteVerifier::new(&log.name, log.kind, Signer::from_seed([5; 32]).public_key()).unwrap();
    assert!(matches!(
        w.cosign(&other, &note_a, None, 1),
        Err(WitnessError::NotTheLog { .. })
    ));
}

#[test]
fn a_rotated_to_key_anchors_the_log_only_if_it_signed_the_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let db = ledger(dir.path(), 10);
    let next = Signer::from_seed([12; 32]);
    {
        let mut store = common::db::open_with(&db, key(), 8);
        store.rotate_key(next.clone()).unwrap();
    }
    grow(&db, &next, 4000, 5);
    let anchored = VerifyOptions {
        trusted_keys: vec![next.public_key()],
        ..VerifyOptions::default()
    };
    let r = check(&db, &anchored);
    assert!(r.ok(), "{:#?}", r.failures);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("trust anchored at key")),
        "{:?}",
        r.warnings
    );
    // Still fine from the first key.
    assert!(check(&db, &trusted()).ok());

    // The rotation's signature by the new key altered: it never took the log over.
    let conn = sql(&db);
    conn.execute(
        "UPDATE receipts SET new_key_signature = signature WHERE op = 'rotate_key'",
        [],
    )
    .unwrap();
    assert_caught(&check(&db, &trusted()), None, "never took the log over");
    // Without it (as rotations before it existed): a warning from the first key, but the
    // new key cannot anchor the log.
    conn.execute(
        "UPDATE receipts SET new_key_signature = NULL WHERE op = 'rotate_key'",
        [],
    )
    .unwrap();
    let r = check(&db, &trusted());
    assert!(r.ok(), "{:#?}", r.failures);
    assert!(r
        .warnings
        .iter()
        .any(|w| w.contains("carries no signature by that key")));
    assert_caught(
        &check(&db, &anchored),
        None,
        "without signing that rotation",
    );
    // A key the log never had anchors nothing.
    let stranger = VerifyOptions {
        trusted_keys: vec![Signer::from_seed([99; 32]).public_key()],
        ..VerifyOptions::default()
    };
    assert_caught(
        &check(&db, &stranger),
        Some(0),
        "no key of this log is a trusted --pubkey",
    );
}

#[test]
fn a_revoked_key_signs_no_later_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = ledger(dir.path(), 10);
    let next = Signer::from_seed([13; 32]);
    {
        let mut store = common::db::open_with(&db, key(), 8);
        store.rotate_key(next.clone()).unwrap();
    }
    grow(&db, &next, 4000, 6);
    assert!(check(&db, &trusted()).ok());
    // Whoever still holds the old key signs the newest checkpoint with it.
    let conn = sql(&db);
    let (size, body): (i64, Vec<u8>) = conn
        .query_row(
            "SELECT size, body FROM checkpoints ORDER BY size DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let genuine: Checkpoint = serde_json::from_slice(&body).unwrap();
    let forged = Checkpoint {
        key_id: key().key_id(),
        ..genuine
    }
    .sign(&key())
    .unwrap();
    conn.execute(
        "UPDATE checkpoints SET body = ?1, signature = ?2 WHERE size = ?3",
        rusqlite::params![
            forged.body.as_bytes(),
            hex::decode(&forged.signature).unwrap(),
            size
        ],
    )
    .unwrap();
    assert_caught(&check(&db, &trusted()), None, "a revoked key");
}

#[test]
fn the_stored_tree_and_a_checkpoint_note_edited_in_the_file_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let db = ledger(dir.path(), 20);
    assert!(check(&db, &trusted()).ok());
    let conn = sql(&db);
    conn.execute(
        "UPDATE tree_hashes SET hash = (SELECT hash FROM tree_hashes WHERE idx = 4) WHERE idx = 3",
        [],
    )
    .unwrap();
    assert_caught(&check(&db, &trusted()), None, "the stored tree differs");

    let b = dir.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    let db = ledger(&b, 20);
    let conn = sql(&db);
    conn.execute(
        "UPDATE checkpoint_notes SET note = replace(note, ?1, ?2) WHERE size = 8",
        ["\n8\n", "\n9\n"],
    )
    .unwrap();
    assert_caught(
        &check(&db, &trusted()),
        None,
        "its text is not the checkpoint's",
    );
}

#[test]
fn a_trusted_checkpoint_note_checks_growth_by_consistency_proof() {
    if common::db::postgres().is_some() {
        return; // the fork is a copied file
    }
    let dir = tempfile::tempdir().unwrap();
    let db = ledger(dir.path(), 20);
    let (_, saved, _) = newest_note(&db, &key());
    let fork = dir.path().join("fork.db");
    std::fs::copy(&db, &fork).unwrap();
    grow(&db, &key(), 6000, 7);
    let from_note = |note: &str| VerifyOptions {
        trusted_checkpoint: Some(TrustedCheckpoint::Note(note.to_string())),
        ..trusted()
    };
    let r = check(&db, &from_note(&saved));
    assert!(r.ok(), "{:#?}", r.failures);
    assert_eq!(r.trusted_checkpoint_ok, Some(true));
    // A note of the fork after it diverged: no consistency proof joins it to this log.
    grow(&fork, &key(), 7000, 3);
    let (_, forked, _) = newest_note(&fork, &key());
    assert_caught(
        &check(&db, &from_note(&forked)),
        None,
        "no consistency proof links it",
    );
    // A note edited after signing is refused.
    let edited = saved.replacen("\n21\n", "\n20\n", 1);
    assert_caught(&check(&db, &from_note(&edited)), None, "does not verify");
}
