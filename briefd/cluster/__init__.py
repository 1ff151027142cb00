"""Several daemons on one PostgreSQL database: one token budget, and waking each other.

``tokens`` is the SQL of the shared limiter (:class:`~briefd.cluster.tokens.ClusterTokens`),
``shared`` loads the limiter's policies from their row and saves them back, ``rows`` reads
the other rows into the plain ``records``, ``state`` is what one daemon's limiter actor
keeps (:mod:`briefd.actors.cluster_limiter`), ``listen`` wakes a daemon on ``NOTIFY``
(:class:`~briefd.cluster.listen.Listener`).

Nothing is imported here: the modules that talk to PostgreSQL need the ``postgres``
extra, and a daemon on SQLite must be able to import what it uses from this package
without it.
"""
