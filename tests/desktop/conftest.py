"""Qt runs offscreen in every desktop test (no display here, nor in CI), the keyring is an
in-memory backend so that no test ever reaches a real one (which could hang on a dialog), and
the LMVP config directory is a temporary one."""

from __future__ import annotations

import gc
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from collections.abc import Iterator

import keyring
import pytest

from tests.support import MemoryKeyring


@pytest.fixture(autouse=True)
def own_config_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app's config (remembered column widths, settings) never goes to the real home; a
    test that sets LMVP_CONFIG_DIR itself overrides this."""
    monkeypatch.setenv("LMVP_CONFIG_DIR", str(tmp_path_factory.mktemp("lmvp-config")))


@pytest.fixture(autouse=True)
def cycles_collected_on_the_ui_thread() -> Iterator[None]:
    """As in the app (`lmvp_desktop.gc_guard`): no cycle collection on a worker thread while a
    test's widgets live (a collected Qt object's destructor there can deadlock against the UI
    thread); their cycles are collected here, on the UI thread, when the test ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    yield
    gc.collect()
    if was_enabled:
        gc.enable()


@pytest.fixture(autouse=True)
def memory_keyring() -> Iterator[MemoryKeyring]:
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)
