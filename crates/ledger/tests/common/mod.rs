//! Logs written through the ledger crate alone, for its integration tests.
#![allow(dead_code)]

use std::path::Path;

use state_pack_ledger::log::ReceiptDraft;
use state_pack_ledger::measured::Tokens;
use state_pack_ledger::{DeltaHash, LedgerDb, ModelFingerprint, ReceiptOp, Signer, StateHash};

/// A log of `n` merge receipts after its open_log, appended in one transaction.
pub fn write_log(db: &Path, signer: Signer, n: usize) {
    let mut ledger_db = LedgerDb::open(db, signer).unwrap();
    let (conn, ledger) = ledger_db.parts_mut();
    let ledger = ledger.unwrap();
    let tx = conn.write().unwrap();
    let model = ModelFingerprint::from_bytes([9; 32]);
    for i in 0..n {
        let tokens: Vec<u32> = (0..=i as u32).collect();
        ledger
            .append(
                &tx,
                ReceiptDraft {
                    op: ReceiptOp::Merge,
                    input_state: None,
                    output_state: Some(StateHash::of(&model, &tokens)),
                    delta_hash: Some(DeltaHash::of(&model, &tokens[i..])),
                    model: Some(model),
                    tokens: Some(Tokens {
                        delta: 1,
                        state: tokens.len() as u64,
                        prefilled: 1,
                        reused: i as u64,
                        generated: 0,
                        restored: 0,
                        unreported: 0,
                    }),
                    timings: None,
                    input_was_hot: None,
                    policy: None,
                    sampling: None,
                    replay_of: None,
                    public_key: None,
                    kv: None,
                    remote: None,
                },
            )
            .unwrap();
    }
    tx.commit().unwrap();
}
