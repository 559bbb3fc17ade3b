"""Development tooling: embedded PostgreSQL and Redis, the `make run` supervisor and the
process launcher shared by `make run`, the benchmarks and the tests. Never deployed."""
