-- Deterministic infers can be answered from the store (src/pack.rs, `StatePack::infer_or_replay`):
-- an infer is keyed by its input state, the hash of its delta and its sampling parameters.
ALTER TABLE operations ADD COLUMN delta_hash BLOB;
-- RFC 8785 canonical JSON of the sampling parameters (infer only).
ALTER TABLE operations ADD COLUMN sampling TEXT;
-- Why generation stopped: 'stop' or 'length' (infer only).
ALTER TABLE operations ADD COLUMN finish TEXT;
-- For an infer answered from the store: the receipt of the infer whose result it repeats.
ALTER TABLE operations ADD COLUMN replay_of INTEGER REFERENCES receipts (seq);

CREATE INDEX operations_infer_key ON operations (input, delta_hash, sampling)
    WHERE op = 'infer' AND replay_of IS NULL;
