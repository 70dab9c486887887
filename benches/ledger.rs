//! The receipt ledger's own costs, without the model.
//!
//! - `receipt_seal`: canonicalize (RFC 8785) + hash + Ed25519 sign one receipt, in memory.
//! - `receipt_append_durable`: `Store::record` on disk: the state row, the operations row and
//!   the signed receipt in one transaction, committed with WAL + `synchronous = FULL`; and the
//!   same on Postgres (`--db postgres://`, a server on loopback with its durable defaults,
//!   started by the bench from Debian's package), the writer lock taken per transaction.
//! - `verify`: `state-pack verify` over a 10,000-receipt ledger (100 agents x 100 steps,
//!   states of 400-900 tokens): every signature, link, state re-hash and checkpoint.
//!
//! - `proof_generation`: an inclusion proof and a consistency proof read from the stored
//!   tree in SQLite (`tree_hashes`, what `receipts prove` and the server read), on logs of
//!   10,000 and 1,000,000 receipts: O(log n) hashes each.
//! - `signatures`: the Ed25519 checks `verify` makes, 10,000 receipt signatures under one
//!   key, strict one by one (what `verify` does) and in batches of 64 (`verify_batch`).
//!
//! `cargo bench --bench ledger`. Targets (issue 3): verify >= 10,000 receipts/s on one core;
//! append under 2% of an agent step (~1 s here, see `state-pack bench`).

#[path = "../tests/common/servers.rs"]
#[allow(dead_code)]
mod servers;
#[path = "../tests/common/synthetic.rs"]
mod synthetic;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use state_pack::ledger::measured::{Timings, Tokens};
use state_pack::ledger::receipt::{LogId, Receipt, ReceiptHash, ReceiptOp, RECEIPT_VERSION};
use state_pack::ledger::{verify_file, Signer, VerifyOptions};
use state_pack::state::{DeltaHash, StateHash};
use state_pack::Store;
use synthetic::{Chain, MODEL};

fn seal(c: &mut Criterion) {
    let signer = Signer::from_seed([1; 32]);
    let mut r = Receipt {
        v: RECEIPT_VERSION,
        log_id: LogId::from_bytes([2; 32]),
        seq: 0,
        op: ReceiptOp::Infer,
        input_state: Some(StateHash::from_bytes([3; 32])),
        output_state: Some(StateHash::from_bytes([4; 32])),
        delta_hash: Some(DeltaHash::of(&MODEL, &[1, 2, 3])),
        model: Some(MODEL),
        tokens: Some(Tokens {
            delta: 30,
            state: 600,
            prefilled: 31,
            reused: 569,
            generated: 8,
            restored: 0,
            unreported: 0,
        }),
        timings: Some(Timings {
            prefill_us: 500_000,
            decode_us: 250_000,
            total_us: 760_000,
            restore_us: None,
        }),
        input_was_hot: Some(true),
        policy: None,
        sampling: None,
        replay_of: None,
        public_key: None,
        kv: None,
        remote: None,
        prev: ReceiptHash::from_bytes([9; 32]),
        key_id: signer.key_id(),
        timestamp_ms: 1_795_000_000_000,
    };
    c.bench_function("receipt_seal", |b| {
        b.iter(|| {
            r.seq += 1;
            let body = r.to_body().expect("canonical");
            let hash = ReceiptHash::of(&body);
            signer.sign(hash.as_bytes())
        })
    });
}

/// One agent-sized step on `store` per call: a 600-token base growing by 30 tokens a step,
/// restarted (as a new agent) once it passes 1,500 tokens.
fn agent_steps(mut store: Store) -> impl FnMut() {
    let mut agent = 0;
    let mut chain = Chain::new(0, 600);
    move || {
        if chain.tokens.len() > 1500 {
            agent += 1;
            chain = Chain::new(agent * 100_000, 600);
        }
        chain.step(&mut store, 30);
    }
}

fn append_durable(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        Store::open(&dir.path().join("append.db"), Signer::from_seed([1; 32])).expect("store");
    let mut g = c.benchmark_group("receipt_append_durable");
    g.throughput(Throughput::Elements(1));
    let mut step = agent_steps(store);
    g.bench_function("record_state_operation_receipt", |b| b.iter(&mut step));
    let server = servers::PostgresServer::start_durable();
    let pg = Store::open_location(
        &server.fresh_db(),
        Signer::from_seed([1; 32]),
        state_pack::ledger::DEFAULT_CHECKPOINT_EVERY,
    )
    .expect("postgres store");
    let mut step = agent_steps(pg);
    g.bench_function("record_state_operation_receipt_postgres", |b| {
        b.iter(&mut step)
    });
    g.finish();
}

fn verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("verify.db");
    {
        let mut store = Store::open(&db, Signer::from_seed([1; 32])).expect("store");
        for agent in 0..100u32 {
            let mut chain = Chain::new(agent * 1000, 400);
            for _ in 0..100 {
                chain.step(&mut store, 5);
            }
        }
    }
    let options = VerifyOptions {
        trusted_keys: vec![Signer::from_seed([1; 32]).public_key()],
        trusted_checkpoint: None,
        witnesses: Vec::new(),
    };
    let receipts = verify_file(&db, &options).expect("verify").receipts;
    let mut g = c.benchmark_group("verify");
    g.sample_size(10);
    g.throughput(Throughput::Elements(receipts));
    g.bench_function("ledger_10k_receipts", |b| {
        b.iter(|| {
            let r = verify_file(&db, &options).expect("verify");
            assert!(r.ok());
            r
        })
    });
    g.finish();
}

/// A database holding only the stored tree of `n` synthetic receipts.
fn stored_tree(dir: &std::path::Path, n: u64) -> state_pack::ledger::sql::Db {
    use state_pack::ledger::tlog;
    let mut conn = rusqlite::Connection::open(dir.join(format!("tree-{n}.db"))).expect("db");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE tree_hashes (idx INTEGER PRIMARY KEY, hash BLOB NOT NULL);",
    )
    .expect("schema");
    let stored = tlog::stored_from_leaves(
        (0..n).map(|i| tlog::leaf_hash(ReceiptHash::of(&i.to_be_bytes()).as_bytes())),
    );
    let tx = conn.transaction().expect("tx");
    {
        let mut insert = tx
            .prepare("INSERT INTO tree_hashes (idx, hash) VALUES (?1, ?2)")
            .expect("insert");
        for (i, h) in stored.iter().enumerate() {
            insert
                .execute(rusqlite::params![i as i64, h.as_slice()])
                .expect("row");
        }
    }
    tx.commit().expect("commit");
    state_pack::ledger::sql::Db::sqlite(conn, "bench")
}

fn proof_generation(c: &mut Criterion) {
    use state_pack::ledger::stored::SqlHashes;
    use state_pack::ledger::tlog;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("proof_generation");
    for n in [10_000u64, 1_000_000] {
        let conn = stored_tree(dir.path(), n);
        let reader = SqlHashes(&conn);
        let mut i = 0u64;
        g.bench_function(format!("inclusion_{n}"), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                tlog::prove_inclusion(n, i, &reader).expect("proof")
            })
        });
        g.bench_function(format!("consistency_{n}"), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                tlog::prove_consistency(i.max(1), n, &reader).expect("proof")
            })
        });
    }
    g.finish();
}

fn signatures(c: &mut Criterion) {
    use ed25519_dalek::{Signature, Signer as _, SigningKey};
    let key = SigningKey::from_bytes(&[5; 32]);
    let public = key.verifying_key();
    let hashes: Vec<[u8; 32]> = (0u64..10_000)
        .map(|i| *ReceiptHash::of(&i.to_be_bytes()).as_bytes())
        .collect();
    let sigs: Vec<Signature> = hashes.iter().map(|h| key.sign(h)).collect();
    let mut g = c.benchmark_group("signatures");
    g.sample_size(10);
    g.throughput(Throughput::Elements(hashes.len() as u64));
    g.bench_function("strict_one_by_one_10k", |b| {
        b.iter(|| {
            for (h, s) in hashes.iter().zip(&sigs) {
                public.verify_strict(h, s).expect("valid");
            }
        })
    });
    g.bench_function("batch_of_64_10k", |b| {
        b.iter(|| {
            for (hs, ss) in hashes.chunks(64).zip(sigs.chunks(64)) {
                let msgs: Vec<&[u8]> = hs.iter().map(|h| h.as_slice()).collect();
                let keys = vec![public; hs.len()];
                ed25519_dalek::verify_batch(&msgs, ss, &keys).expect("valid");
            }
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    seal,
    append_durable,
    verify,
    proof_generation,
    signatures
);
criterion_main!(benches);
