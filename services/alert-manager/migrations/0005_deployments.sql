-- The deployment timeline: canary changes that remediation actions made (rollbacks to weight 0,
-- promotions to all traffic, other weight changes), with the incident and rule behind them.
CREATE TABLE deployment_events (
    id          BIGSERIAL PRIMARY KEY,
    model       TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    kind        TEXT   NOT NULL,
    message     TEXT   NOT NULL,
    incident_id BIGINT REFERENCES incidents (id),
    rule        TEXT   NOT NULL,
    at_ms       BIGINT NOT NULL
);
CREATE INDEX deployment_events_model ON deployment_events (model, id DESC);
