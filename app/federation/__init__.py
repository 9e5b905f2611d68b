"""Federation between deployments: the trust list of peers (互认), their published keys, the peer API
for cross-province vaccination look-ups, and the federation pseudonym those look-ups are keyed by."""
