//! Synthetic operations for ledger tests and benchmarks: real SQLite, real signatures, made-up
//! token ids and counts (the ledger knows nothing of models, so it needs none).

use std::time::Duration;

use state_pack::ledger::measured::{Measured, Timings, Tokens};
use state_pack::state::{DeltaHash, ModelFingerprint, StateHash};
use state_pack::store::{OpKind, OperationRecord, Recorded, Store, StoredState};

pub const MODEL: ModelFingerprint = ModelFingerprint::from_bytes([7; 32]);

/// A chain of states: a base of `base_len` tokens starting at `salt`, then one merge per call.
pub struct Chain {
    pub tokens: Vec<u32>,
    pub head: Option<StateHash>,
}

impl Chain {
    pub fn new(salt: u32, base_len: u32) -> Self {
        Self {
            tokens: (salt..salt + base_len).collect(),
            head: None,
        }
    }

    /// Records the next operation: create first, then merges of `delta` tokens.
    pub fn step(&mut self, store: &mut Store, delta: u32) -> Recorded {
        let (op, delta_tokens): (OpKind, Vec<u32>) = match self.head {
            None => (OpKind::Create, self.tokens.clone()),
            Some(_) => {
                let start = self.tokens.len() as u32 * 7919;
                let d: Vec<u32> = (start..start + delta).map(|t| t % 49_152).collect();
                self.tokens.extend_from_slice(&d);
                (OpKind::Merge, d)
            }
        };
        let hash = StateHash::of(&MODEL, &self.tokens);
        let state = StoredState {
            hash,
            model: MODEL,
            parent: self.head,
            op,
            tokens: self.tokens.clone(),
        };
        let measured = Measured {
            tokens: Tokens {
                delta: delta_tokens.len() as u64,
                state: self.tokens.len() as u64,
                prefilled: delta_tokens.len() as u64,
                reused: (self.tokens.len() - delta_tokens.len()) as u64,
                ..Tokens::default()
            },
            timings: Timings::new(
                Duration::from_micros(1234),
                Duration::ZERO,
                Duration::from_micros(1300),
                None,
            ),
        };
        let delta = DeltaHash::of(&MODEL, &delta_tokens);
        let record = OperationRecord {
            input_was_hot: self.head.map(|_| true),
            prompt_tokens: self.tokens.len(),
            ..OperationRecord::new(op, self.head, hash, delta, measured)
        };
        let recorded = store.record(&state, &record).expect("record");
        self.head = Some(hash);
        recorded
    }
}
