-- The receipt tree, stored (crates/ledger/src/tlog.rs): the RFC 6962 hash of every leaf and
-- of every complete subtree, at its stored-hash index, written in the transaction that
-- appends the receipt. Roots and proofs read O(log n) of them; tiles are read from them.
-- Derived from the receipts: a writer fills it for older logs when it attaches, and
-- `verify` recomputes it and reports any stored hash that differs.
CREATE TABLE tree_hashes (
    idx  INTEGER PRIMARY KEY CHECK (idx >= 0),
    hash BLOB NOT NULL CHECK (length(hash) = 32)
);

-- Every checkpoint also as a C2SP signed note (crates/ledger/src/note.rs), signed with the
-- same key under the log's origin; witnesses' cosignature lines are appended to it.
CREATE TABLE checkpoint_notes (
    size INTEGER PRIMARY KEY REFERENCES checkpoints (size),
    note TEXT NOT NULL
);

-- A rotate_key receipt's proof of possession: the new key's signature over the same
-- receipt hash the old key signed.
ALTER TABLE receipts ADD COLUMN new_key_signature BLOB
    CHECK (new_key_signature IS NULL OR length(new_key_signature) = 64);
