-- Each replica that takes the lead starts a new term. A notification carries the term of the
-- replica that decided it, and is put in the outbox only while that term is the current one:
-- a replica that lost the lead (while the database was down, say) never adds to what the new
-- leader decides for itself.
CREATE TABLE leadership (
    id          INT PRIMARY KEY CHECK (id = 1),
    term        BIGINT NOT NULL,
    taken_at_ms BIGINT NOT NULL
);

-- Each group's notification timing as of its last notification, written in the transaction
-- that puts the notification in the outbox (`state` is NULL once the group's resolution has
-- been notified). The saved evaluation state supersedes these rows and removes them; a new
-- leader applies those still here over the state it restores, so a notification written after
-- the last save is never decided again.
CREATE TABLE notification_groups (
    group_key TEXT PRIMARY KEY,
    state     JSONB,
    at_ms     BIGINT NOT NULL
);

-- A notification being sent is claimed until this time (the database's clock, Unix ms): no
-- other replica sends it meanwhile.
ALTER TABLE notifications ADD COLUMN claimed_until_ms BIGINT;
