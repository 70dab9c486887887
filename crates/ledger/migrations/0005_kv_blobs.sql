-- States can come back from KV blobs on disk (src/kv_blob.rs): of an operation's reused
-- tokens, how many were loaded from a blob, and how long loading took.
ALTER TABLE operations ADD COLUMN restored INTEGER NOT NULL DEFAULT 0;
ALTER TABLE operations ADD COLUMN restore_us INTEGER NOT NULL DEFAULT 0;
