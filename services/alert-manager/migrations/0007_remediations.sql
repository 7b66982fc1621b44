-- An incident's remediation: the actions of the rule that opened it, written in the
-- transaction that opens it (or by the leader's first record of the alert, when a replica that
-- no longer led opened it), then run by the leader. A leader that stops while they run leaves
-- the row 'running' under its term: the next leader records that and runs them again.
CREATE TABLE remediations (
    incident_id BIGINT PRIMARY KEY REFERENCES incidents (id),
    rule        TEXT   NOT NULL,
    alert       JSONB  NOT NULL,
    state       TEXT   NOT NULL CHECK (state IN ('pending', 'running', 'done')),
    term        BIGINT,
    created_ms  BIGINT NOT NULL
);
CREATE INDEX remediations_unfinished ON remediations (incident_id) WHERE state <> 'done';
