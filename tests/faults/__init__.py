"""Fault suites of briefd's own: upstreams that misbehave the way real servers and proxies do."""
