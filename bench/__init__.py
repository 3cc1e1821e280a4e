"""splice's bench suite: splice against direct and peer proxies, on loopback only."""
