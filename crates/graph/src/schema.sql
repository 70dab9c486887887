-- StateGraph checkpoints (src/graph/checkpoint.rs): one row per super-step of a thread.
-- A checkpoint stores what changed in its step (the node updates, in the order they were
-- merged), never a snapshot of the whole state; only a thread's root holds its input state.
-- The state at a checkpoint is the root's state with the updates of every checkpoint on its
-- parent chain merged in order, so storage grows with the updates, not with the history.
CREATE TABLE IF NOT EXISTS graph_checkpoints (
    id           INTEGER PRIMARY KEY,
    thread       TEXT NOT NULL,
    parent       INTEGER REFERENCES graph_checkpoints (id),
    -- super-step: -1 for the input, then 0, 1, ... along the parent chain
    step         INTEGER NOT NULL,
    -- 'input' | 'loop' | 'update' (a human's or a fork's update)
    source       TEXT NOT NULL CHECK (source IN ('input', 'loop', 'update')),
    -- JSON: the root's state ('input'), else null
    snapshot     BLOB,
    -- JSON: [[node, update], ...] merged in this order
    writes       BLOB NOT NULL,
    -- JSON: the tasks to run next, [[node, arg or null], ...]; [] when the graph ended
    next         BLOB NOT NULL,
    -- JSON: join edges' sources seen so far, {"target": ["source", ...]}
    joins        BLOB NOT NULL,
    -- receipts written while this step ran: seq in [receipts_from, receipts_to)
    receipts_from INTEGER NOT NULL,
    receipts_to   INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    CHECK ((source = 'input') = (parent IS NULL)),
    CHECK ((source = 'input') = (snapshot IS NOT NULL))
);

CREATE INDEX IF NOT EXISTS graph_checkpoints_thread ON graph_checkpoints (thread, id);
