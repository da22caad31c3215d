"""Who may read what the client keeps on disk: the token file of `lmvp login` stays the user's
alone, whatever was left in the config dir before and whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.test_cli import Terminal
from tests.support import Deployment


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common default umask, under which files are created group/world-readable."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def readable_by_others(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and stat.S_IMODE(p.stat().st_mode) & 0o077]


def test_a_stale_0644_temp_file_does_not_make_the_token_file_readable(
    deployment_sqlite: Deployment, tmp_path: Path, umask_022: None
) -> None:
    # Audit, issue 12 finding 9: a temporary file left at the fixed name an earlier lmvp wrote
    # the token to first, with mode 0644, was opened with O_CREAT (which keeps the mode), written
    # and renamed into place: the token file came out 0644.
    terminal = Terminal(tmp_path)
    terminal.config_dir.mkdir(mode=0o755)
    os.chmod(terminal.config_dir, 0o755)
    stale = terminal.config_dir / "tokens.tmp"
    stale.write_text("{}")
    os.chmod(stale, 0o644)
    username = deployment_sqlite.account("stale")

    terminal.ok(
        "login",
        deployment_sqlite.url,
        "--username",
        username,
        "--password-stdin",
        stdin=f"password-{username}\n",
    )

    tokens_file = terminal.config_dir / "tokens.json"
    assert stat.S_IMODE(tokens_file.stat().st_mode) == 0o600
    token = tokens_file.read_text()
    assert deployment_sqlite.url in token
    # Nothing another user can read holds the token (the stale file was not reused).
    for path in readable_by_others(terminal.config_dir):
        assert deployment_sqlite.url not in path.read_text(), path
    # A second login rewrites the file, still 0600, leaving no temporary file behind.
    terminal.ok(
        "login",
        deployment_sqlite.url,
        "--username",
        username,
        "--password-stdin",
        stdin=f"password-{username}\n",
    )
    assert stat.S_IMODE(tokens_file.stat().st_mode) == 0o600
    assert not [p.name for p in terminal.config_dir.iterdir() if p.name.endswith(".tmp")]
