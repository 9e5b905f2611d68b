-- Statuses stored in Postgres whose publication to Redis failed (Redis down or restarting): owed a
-- refresh. Batch processing does not wait for Redis: Postgres is the source of truth, and a periodic
-- job publishes what is owed, through the same version guard, once Redis answers again.
CREATE TABLE status_refresh_owed (
    pseudonym bytea       PRIMARY KEY CHECK (octet_length(pseudonym) = 16),
    since     timestamptz NOT NULL DEFAULT now()
);
