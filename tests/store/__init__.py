"""The journal's backends, held to one contract: the promises of ``briefd.store.base``."""
