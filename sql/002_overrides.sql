-- Manual status overrides by an authority: who, why, when, and until when. Kept forever; the newest
-- unexpired one for a person wins over the rules.
CREATE TABLE status_overrides (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pseudonym  bytea       NOT NULL CHECK (octet_length(pseudonym) = 16),
    colour     text        NOT NULL CHECK (colour IN ('green', 'yellow', 'red')),
    reason     text        NOT NULL CHECK (length(reason) >= 3),
    actor      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    CHECK (expires_at > created_at)
);
CREATE INDEX status_overrides_pseudonym_idx ON status_overrides (pseudonym, expires_at);
