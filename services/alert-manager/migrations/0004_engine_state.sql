-- The evaluation state that lives in memory between evaluations: every alert with its timers
-- (pending `for`, `keep_firing_for`) and each group's notification timing. It is saved when it
-- changes, so that a restart, or another replica that takes over, carries on from it.
CREATE TABLE engine_state (
    id          INT PRIMARY KEY CHECK (id = 1),
    state       JSONB  NOT NULL,
    saved_at_ms BIGINT NOT NULL
);
