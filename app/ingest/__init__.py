"""Batch ingestion: agencies' uploads streamed into staging, merged into the record tables, and the
statuses of the people they touch recomputed and refreshed in Redis."""
