-- Self-declarations (申领): a person the agencies hold no records of declares their last 14 days of
-- travel to get a code. The declaration keeps only the masked name and a keyed hash of the phone number
-- (never the number); the declared arrivals are travel records of source 'declared', tied to the
-- declaration that made them so that a second declaration within a day replaces exactly those rows.
CREATE TABLE declarations (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pseudonym   bytea       NOT NULL CHECK (octet_length(pseudonym) = 16),
    client_id   bigint      NOT NULL,
    masked_name text        NOT NULL,
    phone_ref   bytea       NOT NULL CHECK (octet_length(phone_ref) = 16),
    travel      jsonb       NOT NULL,
    declared_at timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updates     integer     NOT NULL DEFAULT 0
);
CREATE INDEX declarations_subject_idx ON declarations (pseudonym, declared_at DESC);

-- Agency rows keep the default; a declared row always names its declaration.
ALTER TABLE travel_arrivals
    ADD COLUMN source text NOT NULL DEFAULT 'agency' CHECK (source IN ('agency', 'declared')),
    ADD COLUMN declaration_id bigint,
    ADD CONSTRAINT travel_arrivals_declared_check CHECK ((source = 'declared') = (declaration_id IS NOT NULL));
