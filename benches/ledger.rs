//! The receipt ledger's own costs, without the model.
//!
//! - `receipt_seal`: canonicalize (RFC 8785) + hash + Ed25519 sign one receipt, in memory.
//! - `receipt_append_durable`: `Store::record` on disk: the state row, the operations row and
//!   the signed receipt in one transaction, committed with WAL + `synchronous = FULL`.
//! - `verify`: `state-pack verify` over a 10,000-receipt ledger (100 agents x 100 steps,
//!   states of 400-900 tokens): every signature, link, state re-hash and checkpoint.
//!
//! `cargo bench --bench ledger`. Targets (issue 3): verify >= 10,000 receipts/s on one core;
//! append under 2% of an agent step (~1 s here, see `state-pack bench`).

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

fn append_durable(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store =
        Store::open(&dir.path().join("append.db"), Signer::from_seed([1; 32])).expect("store");
    // Agent-sized states: a 600-token base growing by 30 tokens a step, restarted (as a new
    // agent) once it passes 1,500 tokens.
    let mut agent = 0;
    let mut chain = Chain::new(0, 600);
    let mut g = c.benchmark_group("receipt_append_durable");
    g.throughput(Throughput::Elements(1));
    g.bench_function("record_state_operation_receipt", |b| {
        b.iter(|| {
            if chain.tokens.len() > 1500 {
                agent += 1;
                chain = Chain::new(agent * 100_000, 600);
            }
            chain.step(&mut store, 30)
        })
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

criterion_group!(benches, seal, append_durable, verify);
criterion_main!(benches);
