-- The receipt ledger (crates/ledger/src/): signed, hash-linked receipts and signed checkpoints.
-- Bodies are RFC 8785 canonical JSON stored verbatim; verification runs over these bytes.
CREATE TABLE receipts (
    seq       INTEGER PRIMARY KEY CHECK (seq >= 0),
    op        TEXT NOT NULL,
    -- ReceiptHash of body, kept so an append need not re-read the body; verify recomputes it.
    hash      BLOB NOT NULL CHECK (length(hash) = 32),
    body      BLOB NOT NULL,
    signature BLOB NOT NULL CHECK (length(signature) = 64)
);

-- Key events, to find the current signer without scanning the log.
CREATE INDEX receipts_key_events ON receipts (op) WHERE op IN ('open_log', 'rotate_key');

CREATE TABLE checkpoints (
    size      INTEGER PRIMARY KEY CHECK (size > 0),
    body      BLOB NOT NULL,
    signature BLOB NOT NULL CHECK (length(signature) = 64)
);

-- Each operation names its receipt; operations written before the ledger existed have none.
ALTER TABLE operations ADD COLUMN receipt_seq INTEGER REFERENCES receipts (seq);
CREATE UNIQUE INDEX operations_receipt ON operations (receipt_seq);
