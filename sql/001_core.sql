-- Core schema: subjects, their records, computed statuses, clients, signing keys, scans, audit.
-- The only identity key is the 16-byte pseudonym (HMAC-SHA-256 of the document, truncated).
-- Tables keyed by person are hash-partitioned on the pseudonym so they can be spread out later.

CREATE TABLE subjects (
    pseudonym     bytea       NOT NULL CHECK (octet_length(pseudonym) = 16),
    id_type       text        NOT NULL CHECK (id_type IN ('resident', 'passport', 'hk_macao_permit', 'taiwan_permit', 'foreign_permanent')),
    masked_name   text        NOT NULL DEFAULT '',
    masked_number text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pseudonym)
) PARTITION BY HASH (pseudonym);

CREATE TABLE vaccinations (
    pseudonym     bytea       NOT NULL,
    product       text        NOT NULL,
    dose          smallint    NOT NULL CHECK (dose BETWEEN 1 AND 10),
    vaccinated_on date        NOT NULL,
    site          text        NOT NULL DEFAULT '',
    batch_id      bigint,
    PRIMARY KEY (pseudonym, product, dose)
) PARTITION BY HASH (pseudonym);

CREATE TABLE nucleic_tests (
    pseudonym   bytea       NOT NULL,
    sampled_at  timestamptz NOT NULL,
    result      text        NOT NULL CHECK (result IN ('negative', 'positive')),
    lab         text        NOT NULL,
    reported_at timestamptz,
    sample_id   text,
    batch_id    bigint,
    PRIMARY KEY (pseudonym, sampled_at, lab)
) PARTITION BY HASH (pseudonym);

CREATE TABLE travel_arrivals (
    pseudonym  bytea       NOT NULL,
    area_code  text        NOT NULL CHECK (area_code ~ '^[0-9]{6}$'),
    arrived_at timestamptz NOT NULL,
    mode       text        NOT NULL CHECK (mode IN ('rail', 'air', 'road', 'water', 'telecom')),
    batch_id   bigint,
    PRIMARY KEY (pseudonym, arrived_at, area_code)
) PARTITION BY HASH (pseudonym);

CREATE TABLE designations (
    pseudonym   bytea       NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('confirmed', 'close_contact', 'secondary_contact', 'quarantine', 'cleared')),
    valid_from  timestamptz NOT NULL,
    valid_until timestamptz,
    authority   text        NOT NULL,
    reason      text        NOT NULL DEFAULT '',
    batch_id    bigint,
    PRIMARY KEY (pseudonym, kind, valid_from),
    CHECK (valid_until IS NULL OR valid_until > valid_from)
) PARTITION BY HASH (pseudonym);

CREATE TABLE statuses (
    pseudonym        bytea       NOT NULL,
    colour           text        NOT NULL CHECK (colour IN ('green', 'yellow', 'red')),
    reasons          text[]      NOT NULL DEFAULT '{}',
    popup            boolean     NOT NULL DEFAULT false,
    vaccine_doses    smallint    NOT NULL DEFAULT 0,
    vaccine_complete boolean     NOT NULL DEFAULT false,
    last_test_at     timestamptz,
    last_test_result text CHECK (last_test_result IN ('negative', 'positive')),
    ruleset          text        NOT NULL,
    computed_at      timestamptz NOT NULL,
    valid_until      timestamptz NOT NULL,
    PRIMARY KEY (pseudonym)
) PARTITION BY HASH (pseudonym);

-- Eight partitions per person-keyed table; created in a loop so the count lives in one place.
DO $$
DECLARE
    t text;
    i int;
BEGIN
    FOREACH t IN ARRAY ARRAY['subjects', 'vaccinations', 'nucleic_tests', 'travel_arrivals', 'designations', 'statuses'] LOOP
        FOR i IN 0..7 LOOP
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES WITH (MODULUS 8, REMAINDER %s)',
                           t || '_p' || i, t, i);
        END LOOP;
    END LOOP;
END
$$;

CREATE INDEX statuses_valid_until_idx ON statuses (valid_until);

CREATE TABLE risk_areas (
    area_code   text        NOT NULL CHECK (area_code ~ '^[0-9]{6}$'),
    level       text        NOT NULL CHECK (level IN ('high', 'medium', 'low')),
    valid_from  timestamptz NOT NULL,
    valid_until timestamptz,
    batch_id    bigint,
    PRIMARY KEY (area_code, valid_from)
);

-- API clients: mini-program backends, scanners, agencies. Only a SHA-256 of the secret is kept;
-- secrets are 256-bit random strings, so a slow password hash would add nothing but latency.
CREATE TABLE api_clients (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text        NOT NULL UNIQUE,
    kind       text        NOT NULL CHECK (kind IN ('citizen-backend', 'scanner', 'agency')),
    key_prefix text        NOT NULL,
    key_hash   bytea       NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    scopes     text[]      NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- Public halves and life cycle of signing keys. Private keys live in files, never here.
CREATE TABLE signing_keys (
    thumbprint   text        PRIMARY KEY,
    kid          text        NOT NULL,
    alg          text        NOT NULL CHECK (alg IN ('ES256', 'EdDSA')),
    public_jwk   jsonb       NOT NULL,
    state        text        NOT NULL CHECK (state IN ('pending', 'active', 'retired', 'revoked')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    retired_at   timestamptz,
    revoked_at   timestamptz
);
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((true)) WHERE state = 'active';
CREATE INDEX signing_keys_kid_idx ON signing_keys (kid);

-- Every online scan, partitioned by day; partitions are created ahead by the scan writer.
CREATE TABLE scan_events (
    scanned_at     timestamptz NOT NULL,
    checkpoint     text        NOT NULL,
    client_id      bigint      NOT NULL,
    pseudonym      bytea,
    valid          boolean     NOT NULL,
    reason         text        NOT NULL,
    token_colour   text,
    current_colour text,
    stream_id      text        NOT NULL,
    PRIMARY KEY (scanned_at, stream_id)
) PARTITION BY RANGE (scanned_at);
CREATE TABLE scan_events_default PARTITION OF scan_events DEFAULT;

-- Append-only record of manual and administrative changes.
CREATE TABLE audit_log (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text        NOT NULL,
    action    text        NOT NULL,
    pseudonym bytea,
    detail    jsonb       NOT NULL DEFAULT '{}'
);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();
