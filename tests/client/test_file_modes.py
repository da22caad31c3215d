"""Who may read what the client keeps on disk: the token file of `lmvp login`, the cache and the
upload state stay the user's alone, whatever was left in their folders before and whatever the
umask (audit, issue 12 findings 7 and 9)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import lmvp
from lmvp.cache import server_slug
from tests.client.test_cli import Terminal
from tests.support import Deployment, unique


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


def test_the_cache_and_upload_state_are_private_under_umask_022(
    deployment_sqlite: Deployment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    umask_022: None,
) -> None:
    # The cache holds checkpoints of private projects and a memo of the user's files; the upload
    # state, where each upload goes on the server. A cache root that already exists as 0755 (an
    # older client made it) must not leave them readable.
    cache_root = tmp_path / "cache"
    cache_root.mkdir(mode=0o755)
    os.chmod(cache_root, 0o755)
    old_server_dir = cache_root / server_slug(deployment_sqlite.url)
    old_server_dir.mkdir(mode=0o755)
    os.chmod(old_server_dir, 0o755)
    monkeypatch.setenv("LMVP_CACHE_DIR", str(cache_root))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("LMVP_LOCAL_UPLOADS", "0")  # the upload state of an HTTP upload too
    user = deployment_sqlite.user("modes")
    checkpoint = tmp_path / "checkpoint"
    (checkpoint / "sub").mkdir(parents=True)
    (checkpoint / "sub" / "weights.bin").write_bytes(os.urandom(300_000))
    (checkpoint / "config.json").write_text("{}")

    with lmvp.Client(deployment_sqlite.url, user.token) as client:
        project = client.create_project(unique("modes")).name
        client.update(f"{project}/m", checkpoint)
        client.download(f"{project}/m", local_dir=tmp_path / "out")
        client.download(f"{project}/m")  # the snapshot in the cache

    assert any(cache_root.rglob("blobs/*")) and any(cache_root.rglob("manifests/*/*/*.json"))
    assert (cache_root / "hashes.sqlite3").exists()
    assert readable_by_others(cache_root) == []
    assert stat.S_IMODE(old_server_dir.stat().st_mode) == 0o700
    assert readable_by_others(tmp_path / "state") == []
