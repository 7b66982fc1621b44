-- Incidents: one per alert group while it is open or acknowledged; a group that fires again
-- after a resolution opens a new incident linked to the previous one.
CREATE TABLE incidents (
    id                   BIGSERIAL PRIMARY KEY,
    group_key            TEXT   NOT NULL,
    title                TEXT   NOT NULL,
    state                TEXT   NOT NULL CHECK (state IN ('open', 'acknowledged', 'resolved')),
    severity             TEXT   NOT NULL DEFAULT '',
    labels               JSONB  NOT NULL,
    opened_at_ms         BIGINT NOT NULL,
    acknowledged_at_ms   BIGINT,
    resolved_at_ms       BIGINT,
    previous_incident_id BIGINT REFERENCES incidents (id)
);

-- At most one active incident per group, whatever the number of alert-manager replicas or
-- restarts.
CREATE UNIQUE INDEX incidents_one_active_per_group ON incidents (group_key) WHERE state <> 'resolved';
CREATE INDEX incidents_by_time ON incidents (id DESC);

-- The timeline: every event of an incident, in order.
CREATE TABLE incident_events (
    id          BIGSERIAL PRIMARY KEY,
    incident_id BIGINT NOT NULL REFERENCES incidents (id),
    kind        TEXT   NOT NULL,
    actor       TEXT   NOT NULL,
    message     TEXT   NOT NULL,
    at_ms       BIGINT NOT NULL
);
CREATE INDEX incident_events_by_incident ON incident_events (incident_id, id);
