"""Load tests and benchmarks.

Locust scenarios, the synthetic population, the capacity report and the check of every answer import
`signing` (to verify what the service returns) and never `app`: they see the service as its clients
do. Only the benchmarks under `loadtests/bench/` import `app`, where they measure our own code (the
ingest pipeline beside a raw COPY, the status endpoint's servers).
"""
