"""The daemon's journal: the :class:`~briefd.store.base.Store` interface and its SQLite backend."""
