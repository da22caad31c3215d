"""Fixtures for the daemon tests."""

from __future__ import annotations

import pytest

from tests.support import Deployment


@pytest.fixture(scope="session")
def server(sqlite_deployment: Deployment) -> Deployment:
    """The shared real SQLite server (tests that stop a server make their own)."""
    return sqlite_deployment
