-- Batch ingestion: batches, their per-row rejections, durable staging per record kind, and samples.
--
-- An upload is streamed into a staging table in one transaction together with its batch row, so a batch
-- exists (state `received`) only once every row of it is durable. Processing merges staging into the
-- record tables in one transaction (state `loading` until `merged_at` is set), then recomputes statuses
-- and marks the batch `done`, deleting its staging rows. Staging rows hold pseudonyms, never raw numbers.

CREATE TABLE batches (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id       bigint      NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('population', 'vaccination', 'test', 'travel', 'designation', 'risk_area')),
    format          text        NOT NULL CHECK (format IN ('csv', 'ndjson')),
    idempotency_key text        NOT NULL,
    state           text        NOT NULL DEFAULT 'received' CHECK (state IN ('received', 'loading', 'done', 'failed')),
    rows_read       integer     NOT NULL DEFAULT 0,
    accepted        integer     NOT NULL DEFAULT 0,
    rejected        integer     NOT NULL DEFAULT 0,
    duplicates      integer     NOT NULL DEFAULT 0,
    subjects        integer     NOT NULL DEFAULT 0,
    error           text,
    received_at     timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    merged_at       timestamptz,
    finished_at     timestamptz,
    UNIQUE (client_id, idempotency_key)
);
CREATE INDEX batches_unfinished_idx ON batches (id) WHERE state IN ('received', 'loading');

CREATE TABLE batch_rejections (
    batch_id bigint  NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    row_no   integer NOT NULL,
    field    text    NOT NULL,
    code     text    NOT NULL,
    message  text    NOT NULL,
    PRIMARY KEY (batch_id, row_no)
);

CREATE TABLE staging_population (
    batch_id      bigint  NOT NULL,
    row_no        integer NOT NULL,
    pseudonym     bytea   NOT NULL,
    id_type       text    NOT NULL,
    masked_name   text    NOT NULL,
    masked_number text    NOT NULL
);

CREATE TABLE staging_vaccination (
    batch_id      bigint  NOT NULL,
    row_no        integer NOT NULL,
    pseudonym     bytea   NOT NULL,
    id_type       text    NOT NULL,
    masked_number text    NOT NULL,
    product       text    NOT NULL,
    dose          smallint NOT NULL,
    vaccinated_on date    NOT NULL,
    site          text    NOT NULL
);

-- A test names a person by identity (pseudonym) or by a registered sample id, or both.
CREATE TABLE staging_test (
    batch_id      bigint      NOT NULL,
    row_no        integer     NOT NULL,
    pseudonym     bytea,
    id_type       text,
    masked_number text,
    sample_id     text,
    sampled_at    timestamptz NOT NULL,
    result        text        NOT NULL,
    lab           text        NOT NULL,
    reported_at   timestamptz
);

CREATE TABLE staging_travel (
    batch_id      bigint      NOT NULL,
    row_no        integer     NOT NULL,
    pseudonym     bytea       NOT NULL,
    id_type       text        NOT NULL,
    masked_number text        NOT NULL,
    area_code     text        NOT NULL,
    arrived_at    timestamptz NOT NULL,
    mode          text        NOT NULL
);

CREATE TABLE staging_designation (
    batch_id      bigint      NOT NULL,
    row_no        integer     NOT NULL,
    pseudonym     bytea       NOT NULL,
    id_type       text        NOT NULL,
    masked_number text        NOT NULL,
    kind          text        NOT NULL,
    valid_from    timestamptz NOT NULL,
    valid_until   timestamptz,
    authority     text        NOT NULL,
    reason        text        NOT NULL
);

CREATE TABLE staging_risk_area (
    batch_id    bigint      NOT NULL,
    row_no      integer     NOT NULL,
    area_code   text        NOT NULL,
    level       text        NOT NULL,
    valid_from  timestamptz NOT NULL,
    valid_until timestamptz
);

CREATE INDEX staging_population_batch_idx ON staging_population (batch_id);
CREATE INDEX staging_vaccination_batch_idx ON staging_vaccination (batch_id);
CREATE INDEX staging_test_batch_idx ON staging_test (batch_id);
CREATE INDEX staging_travel_batch_idx ON staging_travel (batch_id);
CREATE INDEX staging_designation_batch_idx ON staging_designation (batch_id);
CREATE INDEX staging_risk_area_batch_idx ON staging_risk_area (batch_id);

-- Nucleic-acid samples registered by a collector against a citizen's test-registration code.
CREATE TABLE samples (
    sample_id     text        PRIMARY KEY CHECK (length(sample_id) BETWEEN 1 AND 64),
    pseudonym     bytea       NOT NULL CHECK (octet_length(pseudonym) = 16),
    code_id       text        NOT NULL,
    client_id     bigint      NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now()
);

-- Arrivals by area code, for recomputing everyone who arrived from an area whose risk level changed.
CREATE INDEX travel_arrivals_area_idx ON travel_arrivals (area_code text_pattern_ops);
