"""Signing keys: their lifecycle in Postgres and key files, and the signer state of a running process."""
