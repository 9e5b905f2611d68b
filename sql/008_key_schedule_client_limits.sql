-- Scheduled key activation and per-client rate limits.
--
-- A pending key with `activate_at` becomes the signing key at that moment: the first process to
-- refresh its keys after it promotes the key (and retires the previous one as of `activate_at`), so a
-- new key can be published for a while before it signs, and every host switches at the same time.
ALTER TABLE signing_keys ADD COLUMN activate_at timestamptz;
ALTER TABLE signing_keys ADD CONSTRAINT signing_keys_scheduled_only_when_pending
    CHECK (activate_at IS NULL OR state = 'pending');

-- Per-client overrides of the request limits of its kind: {"status": {"per_second": 50, "burst": 100}}.
ALTER TABLE api_clients ADD COLUMN rate_limits jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(rate_limits) = 'object');
