-- Corrections and retractions of records by the agency that sent them.
--
-- A row whose natural key matches a stored record but whose value differs is a correction: it replaces
-- the record. A row with `action` = 'retract' withdraws the record. Either way the previous record is
-- kept here, with who changed it (the client), by which batch and when, so a wrong result that was
-- corrected can still be explained. Only the client whose batch stored a record (or the operator) may
-- change it; the merge rejects anyone else's attempt row by row.
ALTER TABLE staging_vaccination ADD COLUMN action text NOT NULL DEFAULT 'upsert';
ALTER TABLE staging_test ADD COLUMN action text NOT NULL DEFAULT 'upsert';
ALTER TABLE staging_travel ADD COLUMN action text NOT NULL DEFAULT 'upsert';
ALTER TABLE staging_designation ADD COLUMN action text NOT NULL DEFAULT 'upsert';

ALTER TABLE batches
    ADD COLUMN corrected integer NOT NULL DEFAULT 0,
    ADD COLUMN retracted integer NOT NULL DEFAULT 0;

CREATE TABLE record_history (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind              text        NOT NULL CHECK (kind IN ('vaccination', 'test', 'travel', 'designation')),
    pseudonym         bytea       NOT NULL CHECK (octet_length(pseudonym) = 16),
    change            text        NOT NULL CHECK (change IN ('corrected', 'retracted')),
    previous          jsonb       NOT NULL,  -- the record as it was, pseudonym aside
    previous_batch_id bigint,                -- the batch that had stored it
    batch_id          bigint      NOT NULL,  -- the batch that changed it
    client_id         bigint      NOT NULL,  -- who sent that batch
    changed_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX record_history_pseudonym_idx ON record_history (pseudonym, changed_at);
