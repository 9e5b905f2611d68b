"""Development tooling kept out of the production import graph: local servers, the demo, synthetic people."""
