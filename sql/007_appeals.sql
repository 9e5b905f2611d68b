-- Appeals (申诉) against a health code, and the operators who review them.
--
-- A citizen backend files an appeal for a person (pseudonym only); operators (a client kind of their
-- own) decide it. A colour change takes two operators: one proposes (colour, reason, expiry), another
-- approves, and the approval becomes a status override. A rejection takes one. Every step is also in
-- audit_log; `appeal_decisions` is the appeal's own record of who decided what.
ALTER TABLE api_clients DROP CONSTRAINT api_clients_kind_check;
ALTER TABLE api_clients ADD CONSTRAINT api_clients_kind_check
    CHECK (kind IN ('citizen-backend', 'scanner', 'agency', 'operator'));

-- An override ended before its expiry keeps the expiry it was given; ended_at says it no longer applies.
ALTER TABLE status_overrides ADD COLUMN ended_at timestamptz;

CREATE TABLE appeals (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id   bigint      NOT NULL REFERENCES api_clients (id),
    pseudonym   bytea       NOT NULL CHECK (octet_length(pseudonym) = 16),
    category    text        NOT NULL CHECK (category IN ('wrong_test_result', 'not_in_risk_area', 'not_a_contact',
                                                         'quarantine_completed', 'not_my_record', 'other')),
    -- Refused by the service when it holds anything shaped like an identity number (app.appeals.free_text).
    text        text        NOT NULL CHECK (length(text) BETWEEN 1 AND 2000),
    contact_ref text        NOT NULL CHECK (length(contact_ref) BETWEEN 1 AND 200),
    state       text        NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'proposed', 'upheld', 'rejected')),
    override_id bigint      REFERENCES status_overrides (id),
    filed_at    timestamptz NOT NULL DEFAULT now(),
    decided_at  timestamptz,
    CHECK ((state = 'upheld') = (override_id IS NOT NULL)),
    CHECK ((state IN ('upheld', 'rejected')) = (decided_at IS NOT NULL))
);
CREATE INDEX appeals_state_idx ON appeals (state, id);
CREATE INDEX appeals_client_idx ON appeals (client_id, id);

CREATE TABLE appeal_decisions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    appeal_id   bigint      NOT NULL REFERENCES appeals (id),
    action      text        NOT NULL CHECK (action IN ('propose', 'approve', 'reject', 'end')),
    operator_id bigint      NOT NULL REFERENCES api_clients (id),
    reason      text        NOT NULL CHECK (length(reason) BETWEEN 3 AND 500),
    colour      text        CHECK (colour IN ('green', 'yellow', 'red')),
    expires_at  timestamptz,
    proposal_id bigint      REFERENCES appeal_decisions (id),
    decided_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((action = 'propose') = (colour IS NOT NULL AND expires_at IS NOT NULL)),
    CHECK ((action = 'approve') = (proposal_id IS NOT NULL))
);
CREATE INDEX appeal_decisions_appeal_idx ON appeal_decisions (appeal_id, id);
