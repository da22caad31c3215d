"""Shared bench plumbing: a real `lmvp-server` process on a temporary data dir, and login."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PASSWORD = "bench-password"


@dataclass
class BenchServer:
    url: str
    host: str
    port: int
    token: str
    pid: int
    data_dir: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _call(url: str, body: dict[str, object], token: str | None = None) -> dict[str, object]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"content-type": "application/json"},
    )
    if token:
        req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read() or b"{}")  # type: ignore[no-any-return]


@contextlib.contextmanager
def bench_server(
    data_dir: Path | None = None, database_url: str = "", code_dir: Path | None = None
) -> Iterator[BenchServer]:
    """Start a server with an admin user (on SQLite in its data dir, or on `database_url`);
    yields its URL and a write token. With `code_dir`, the server runs the lmvp_server of that
    directory (another revision's checkout) instead of this tree's."""
    owned = data_dir is None  # a folder of our own goes when the server stops
    tmp = Path(data_dir or tempfile.mkdtemp(prefix="lmvp-bench-"))
    env = dict(os.environ, LMVP_DATA_DIR=str(tmp), LMVP_INITIAL_ADMIN="0")
    env.pop("LMVP_DATABASE_URL", None)
    if database_url:
        env["LMVP_DATABASE_URL"] = database_url
    if code_dir is not None:
        env["PYTHONPATH"] = str(code_dir)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lmvp_server",
            "user",
            "create",
            "bench",
            "--admin",
            "--password-stdin",
        ],
        input=PASSWORD + "\n",
        text=True,
        env=env,
        cwd=code_dir,
        check=True,
        capture_output=True,
    )
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmvp_server",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=code_dir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/api/v1/health", timeout=1)
                break
            time.sleep(0.05)
        token = str(
            _call(f"{url}/api/v1/auth/login", {"username": "bench", "password": PASSWORD})["token"]
        )
        yield BenchServer(url, "127.0.0.1", port, token, proc.pid, tmp)
    finally:
        proc.terminate()
        proc.wait(30)
        if owned:
            shutil.rmtree(tmp, ignore_errors=True)


def post_json(server: BenchServer, path: str, body: dict[str, object]) -> dict[str, object]:
    return _call(f"{server.url}/api/v1{path}", body, server.token)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
