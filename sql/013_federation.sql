-- Federation: other deployments this one trusts (互认), where records came from, the federation
-- pseudonym of each subject (for peers' vaccination look-ups) and the SMART Health Card keys.

-- The trust list. A peer is named by the `iss` its tokens carry; its keys are fetched from jwks_url.
CREATE TABLE peers (
    issuer             text        PRIMARY KEY CHECK (issuer ~ '^[A-Za-z0-9._:/-]{1,200}$'),
    display_name       text        NOT NULL,
    jwks_url           text        NOT NULL CHECK (jwks_url ~ '^https?://'),
    algorithms         text[]      NOT NULL DEFAULT '{ES256}' CHECK (algorithms <@ ARRAY['ES256', 'EdDSA'] AND cardinality(algorithms) > 0),
    vaccination_source boolean     NOT NULL DEFAULT false,
    -- Where its peer API answers (POST <api_base_url>/v1/peer/vaccinations); needed by a vaccination source.
    api_base_url       text        CHECK (api_base_url ~ '^https?://'),
    added_at           timestamptz NOT NULL DEFAULT now(),
    CHECK (NOT vaccination_source OR api_base_url IS NOT NULL)
);

-- Origin of a record. NULL means "issued here": this deployment's own region
-- (HEALTHCODE_REGION_CODE) and, for the agency, the client whose batch stored it. So existing rows and
-- every upload need no value, and a deployment that changes its region code does not rewrite history.
-- A record learnt from a peer names the peer (origin_peer) and the province or country that peer gave.
ALTER TABLE vaccinations
    ADD COLUMN origin_code   text CHECK (origin_code ~ '^[A-Z]{2}(-[A-Z0-9]{1,3})?$'),
    ADD COLUMN source_agency text,
    ADD COLUMN origin_peer   text,
    ADD COLUMN fetched_at    timestamptz,
    ADD CONSTRAINT vaccinations_peer_check CHECK ((origin_peer IS NULL) = (fetched_at IS NULL));
ALTER TABLE nucleic_tests
    ADD COLUMN origin_code   text CHECK (origin_code ~ '^[A-Z]{2}(-[A-Z0-9]{1,3})?$'),
    ADD COLUMN source_agency text;

-- A subject's federation pseudonym: HMAC of the identity under the key every deployment of the
-- federation shares (never the pepper), so a peer can ask for "this person" without either side
-- learning the other's pseudonyms or the number. Filled when population and vaccination rows arrive.
CREATE TABLE federation_subjects (
    federation_pseudonym bytea NOT NULL CHECK (octet_length(federation_pseudonym) = 16),
    pseudonym            bytea NOT NULL CHECK (octet_length(pseudonym) = 16),
    PRIMARY KEY (federation_pseudonym)
) PARTITION BY HASH (federation_pseudonym);
DO $$
BEGIN
    FOR i IN 0..7 LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF federation_subjects FOR VALUES WITH (MODULUS 8, REMAINDER %s)',
                       'federation_subjects_' || i, i);
    END LOOP;
END $$;

ALTER TABLE staging_population ADD COLUMN federation_pseudonym bytea;
ALTER TABLE staging_vaccination ADD COLUMN federation_pseudonym bytea;

-- SMART Health Card signing keys: apart from the status-token keys, with their own rotation. A card
-- lives for years, so a retired key stays published until it is revoked.
CREATE TABLE credential_keys (
    thumbprint   text        PRIMARY KEY,
    public_jwk   jsonb       NOT NULL,
    state        text        NOT NULL CHECK (state IN ('pending', 'active', 'retired', 'revoked')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    retired_at   timestamptz,
    revoked_at   timestamptz
);
CREATE UNIQUE INDEX credential_keys_one_active ON credential_keys ((true)) WHERE state = 'active';
