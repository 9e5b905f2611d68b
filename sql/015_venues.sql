-- Place codes (场所码): venues with a printed, signed code, and the visits people check in with.
-- A venue's public id is random (not a sequence), so a poster does not tell how many venues exist.
-- `serial` is the token's `vs` claim: reissuing a venue's code bumps it and ends the old posters.
CREATE TABLE venues (
    id         text        PRIMARY KEY CHECK (id ~ '^v[A-Za-z0-9_-]{8,32}$'),
    name       text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    address    text        NOT NULL CHECK (length(address) BETWEEN 1 AND 500),
    area_code  text        NOT NULL CHECK (area_code ~ '^[0-9]{6}$'),
    serial     integer     NOT NULL DEFAULT 1 CHECK (serial > 0),
    client_id  bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Check-ins, by pseudonym only (never the number), partitioned by day like scan_events so that the
-- retention sweep drops whole partitions. id_type and the masked number come along so an exposure
-- query can stage a designation batch without ever seeing an identity number.
CREATE TABLE venue_visits (
    visited_at    timestamptz NOT NULL,
    venue_id      text        NOT NULL,
    pseudonym     bytea       NOT NULL CHECK (octet_length(pseudonym) = 16),
    id_type       text        NOT NULL,
    masked_number text        NOT NULL,
    client_id     bigint      NOT NULL
) PARTITION BY RANGE (visited_at);
CREATE TABLE venue_visits_default PARTITION OF venue_visits DEFAULT;
CREATE INDEX venue_visits_venue_idx ON venue_visits (venue_id, visited_at);

-- Exposure designations are batches like any other (kind `designation`); their rows are staged by the
-- service from visits, not uploaded, and the format says so.
ALTER TABLE batches DROP CONSTRAINT batches_format_check;
ALTER TABLE batches ADD CONSTRAINT batches_format_check CHECK (format IN ('csv', 'ndjson', 'visits'));
