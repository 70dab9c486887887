//! The pack's own work per step, without the model: hashing a state and writing it with its
//! operation to SQLite on disk (WAL, synchronous = FULL), at demo-loop context sizes.
//!
//! `cargo bench --bench pack_overhead`. Compare with a demo step (~1 s on 2 CPU cores, see
//! `state-pack bench`): the bound is 2% of the step.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use state_pack::ledger::measured::{Measured, Timings, Tokens};
use state_pack::ledger::Signer;
use state_pack::state::{DeltaHash, ModelFingerprint, StateHash};
use state_pack::store::{OpKind, OperationRecord, Store, StoredState};

fn tokens(n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % 49_152)
        .collect()
}

fn hashing(c: &mut Criterion) {
    let model = ModelFingerprint::from_bytes([7; 32]);
    let mut g = c.benchmark_group("state_hash");
    for n in [500, 1_000, 4_000] {
        let t = tokens(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &t, |b, t| {
            b.iter(|| StateHash::of(&model, t))
        });
    }
    g.finish();
}

fn durable_record(c: &mut Criterion) {
    let model = ModelFingerprint::from_bytes([7; 32]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store =
        Store::open(&dir.path().join("bench.db"), Signer::from_seed([1; 32])).expect("store");
    let mut g = c.benchmark_group("store_record_durable");
    for n in [500, 1_000, 4_000] {
        let base = tokens(n);
        let mut i = 0u32;
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                // A new state each time, as an agent step makes.
                i += 1;
                let mut t = base.clone();
                t.push(i);
                let hash = StateHash::of(&model, &t);
                let state = StoredState {
                    hash,
                    model,
                    parent: None,
                    op: OpKind::Create,
                    tokens: t,
                };
                let measured = Measured {
                    tokens: Tokens {
                        delta: n as u64 + 1,
                        state: n as u64 + 1,
                        prefilled: 30,
                        reused: n as u64 - 29,
                        generated: 8,
                        restored: 0,
                        unreported: 0,
                    },
                    timings: Timings::new(
                        Duration::from_millis(500),
                        Duration::from_millis(250),
                        Duration::from_millis(760),
                        None,
                    ),
                };
                let delta = DeltaHash::of(&model, &[i]);
                let op = OperationRecord {
                    prompt_tokens: n + 1,
                    output_text: Some("clause_lookup(NSA-2021-044, 14.5)".into()),
                    ..OperationRecord::new(OpKind::Create, None, hash, delta, measured)
                };
                store.record(&state, &op).expect("record")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, hashing, durable_record);
criterion_main!(benches);
