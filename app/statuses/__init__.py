"""Statuses: computed from records, published through one write path (Postgres, then Redis), read on a miss."""
