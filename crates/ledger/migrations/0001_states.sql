-- States: immutable token sequences on one model, addressed by StateHash (crates/ledger/src/hash.rs).
CREATE TABLE states (
    hash        BLOB PRIMARY KEY CHECK (length(hash) = 32),
    model       BLOB NOT NULL CHECK (length(model) = 32),
    parent      BLOB REFERENCES states (hash),
    op          TEXT NOT NULL CHECK (op IN ('create', 'merge', 'infer', 'compact')),
    token_count INTEGER NOT NULL CHECK (token_count > 0),
    -- token ids, u32 little-endian, token_count * 4 bytes
    tokens      BLOB NOT NULL CHECK (length(tokens) = 4 * token_count),
    created_at  INTEGER NOT NULL -- unix milliseconds
) WITHOUT ROWID;

CREATE INDEX states_parent ON states (parent);

-- One row per pack operation, in order: what the engine really did.
CREATE TABLE operations (
    seq           INTEGER PRIMARY KEY,
    op            TEXT NOT NULL CHECK (op IN ('create', 'merge', 'infer', 'compact')),
    input         BLOB REFERENCES states (hash),
    output        BLOB NOT NULL REFERENCES states (hash),
    delta_tokens  INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    prefilled     INTEGER NOT NULL,
    reused        INTEGER NOT NULL,
    generated     INTEGER NOT NULL,
    prefill_us    INTEGER NOT NULL,
    decode_us     INTEGER NOT NULL,
    total_us      INTEGER NOT NULL,
    output_text   TEXT,
    created_at    INTEGER NOT NULL
);
