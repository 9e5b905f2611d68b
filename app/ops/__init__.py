"""What an on-call engineer reads: Prometheus metrics, JSON log lines, the dashboard and the alert rules."""
