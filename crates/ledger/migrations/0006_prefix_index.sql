-- The prefix index (PrefixHash, crates/ledger/src/hash.rs): each state's tokens keyed by
-- their chain hash on the state's model, so that a request's tokens find the stored states
-- they begin with by index lookups (the OpenAI-compatible endpoints continue a re-sent
-- history from the longest such state). Derived from `states` and not signed: the store
-- fills rows missing from older databases when it opens, and every hit is checked against
-- the state's own tokens before it is used.
CREATE TABLE state_prefixes (
    state  BLOB PRIMARY KEY REFERENCES states (hash),
    prefix BLOB NOT NULL UNIQUE CHECK (length(prefix) = 32),
    length INTEGER NOT NULL CHECK (length > 0)
) WITHOUT ROWID;
