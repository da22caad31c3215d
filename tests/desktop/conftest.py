"""Qt runs offscreen in every desktop test (no display here, nor in CI), and the keyring is an
in-memory backend so that no test ever reaches a real one (which could hang on a dialog)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from collections.abc import Iterator

import keyring
import pytest

from tests.support import MemoryKeyring


@pytest.fixture(autouse=True)
def memory_keyring() -> Iterator[MemoryKeyring]:
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)
