"""Fixtures of the API front-door tests (``test_api_guards``, ``test_api_origins``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from faults.api_stub import StubBackend


@pytest.fixture
def backend() -> StubBackend:
    return StubBackend()


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False  # loopback only, never through a proxy
        yield session
