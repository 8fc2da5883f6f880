//! Multi-process Redis set-ups for tests: a Redis Cluster, a primary with a
//! replica watched by Sentinels, a TLS-enabled server.
