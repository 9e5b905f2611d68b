-- Scans of tokens that failed verification, counted per hour, checkpoint, client and reason instead of
-- stored one by one: junk from one scanner key costs a counter, and cannot crowd real scans out of
-- the capped scan stream. Several processes add to one row (an upsert that adds).
CREATE TABLE scan_refusals (
    hour       timestamptz NOT NULL,
    checkpoint text        NOT NULL,
    client_id  bigint      NOT NULL,
    reason     text        NOT NULL,
    scans      bigint      NOT NULL CHECK (scans > 0),
    PRIMARY KEY (hour, checkpoint, client_id, reason)
);
