-- Silences: alerts whose labels match every matcher are not notified between start and end.
CREATE TABLE silences (
    id            BIGSERIAL PRIMARY KEY,
    matchers      JSONB  NOT NULL,
    starts_at_ms  BIGINT NOT NULL,
    ends_at_ms    BIGINT NOT NULL,
    author        TEXT   NOT NULL,
    comment       TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- The outbox: a notification is written here in the transaction that decides it, and delivered
-- (at least once) by a worker that retries with back-off until the receiver accepts it.
CREATE TABLE notifications (
    id              BIGSERIAL PRIMARY KEY,
    incident_id     BIGINT REFERENCES incidents (id),
    receiver        TEXT   NOT NULL,
    url             TEXT   NOT NULL,
    payload         JSONB  NOT NULL,
    attempts        INT    NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    delivered_ms    BIGINT,
    last_error      TEXT,
    created_ms      BIGINT NOT NULL
);
CREATE INDEX notifications_pending ON notifications (id) WHERE delivered_ms IS NULL;
