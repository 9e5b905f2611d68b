-- Family members (代查 / 亲友码): a person may look up a relative's status only through a registered
-- relation, and every such look-up is recorded for the relative to see. Pseudonyms only; the holder's
-- masked number is kept so the relative can be shown who looked without anything that identifies them
-- further.
CREATE TABLE relations (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    holder               bytea       NOT NULL CHECK (octet_length(holder) = 16),    -- who may look
    relative             bytea       NOT NULL CHECK (octet_length(relative) = 16),  -- who is looked up
    kind                 text        NOT NULL CHECK (kind IN ('guardian', 'carer')),
    holder_id_type       text        NOT NULL,
    holder_masked_number text        NOT NULL,
    relative_id_type     text        NOT NULL,
    relative_masked_number text      NOT NULL,
    attestation_ref      text,       -- a carer's: the backend's reference to the power of attorney or similar
    client_id            bigint      NOT NULL,  -- the citizen backend that registered it
    created_at           timestamptz NOT NULL DEFAULT now(),
    valid_until          timestamptz,           -- a guardian's: the minor's 18th birthday
    ended_at             timestamptz,
    ended_by             text,                  -- 'holder', 'relative', or 'lapsed' (came of age)
    ended_client_id      bigint,
    CHECK (holder <> relative),
    CHECK ((kind = 'carer') = (attestation_ref IS NOT NULL)),
    CHECK ((kind = 'guardian') = (valid_until IS NOT NULL)),
    CHECK ((ended_at IS NULL) = (ended_by IS NULL) AND ended_by IN ('holder', 'relative', 'lapsed'))
);
-- One live relation per pair; an ended one stays for the look-up log to name.
CREATE UNIQUE INDEX relations_live_idx ON relations (holder, relative) WHERE ended_at IS NULL;
CREATE INDEX relations_relative_idx ON relations (relative);

CREATE TABLE relation_lookups (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relation_id bigint      NOT NULL REFERENCES relations (id),
    relative    bytea       NOT NULL CHECK (octet_length(relative) = 16),  -- who was looked up
    holder      bytea       NOT NULL CHECK (octet_length(holder) = 16),    -- who looked
    kind        text        NOT NULL,
    client_id   bigint      NOT NULL,                                      -- through which backend
    looked_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX relation_lookups_relative_idx ON relation_lookups (relative, looked_at DESC, id DESC);
