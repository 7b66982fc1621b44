-- The diagnosis report written when an incident opens, and the summary written when it resolves.
ALTER TABLE incidents
    ADD COLUMN report       JSONB,
    ADD COLUMN report_text  TEXT,
    ADD COLUMN summary      JSONB,
    ADD COLUMN summary_text TEXT;
