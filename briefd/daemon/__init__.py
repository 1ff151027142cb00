"""``briefd serve``, the long-running daemon.

Its life and signals, the HTTP API and ``/metrics``, the Python client and its CLI commands.
"""
