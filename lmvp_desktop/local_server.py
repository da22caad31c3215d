"""A server on this machine for one person: started by the desktop app when asked to ("start a
local server" at login, and `make run`), stopped with it.

`LocalServer` runs `lmvp-server serve` as a child process on 127.0.0.1 (port 8470, or
LMVP_PORT) with its data in the server's default data dir (the same as `lmvp-server serve`
uses), or reuses one that already answers there. On a first start the server creates the
`admin` user and keeps its password in a 0600 file in the data dir; `admin_login` uses it so
that nobody has to type it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

import lmvp
from lmvp.errors import LMVPError

log = logging.getLogger(__name__)

DEFAULT_PORT = 8470
ADMIN = "admin"


class LocalServerError(LMVPError):
    """The local server could not be started or logged into."""


class LocalServer:
    """`lmvp-server serve` on 127.0.0.1:`port`, data in `data_dir`."""

    def __init__(self, data_dir: Path | None = None, port: int | None = None) -> None:
        self.data_dir = data_dir or Path(platformdirs.user_data_dir("lmvp-server", appauthor=False))
        # LMVP_PORT is the server's own setting for its port (`lmvp-server serve`).
        self.port = port or int(os.environ.get("LMVP_PORT") or DEFAULT_PORT)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def for_url(cls, url: str) -> LocalServer | None:
        """The local server that would answer at `url` (http on 127.0.0.1/localhost with a
        port), None for any other address."""
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost"):
            return None
        return cls(port=parts.port or 80)

    def answers(self) -> bool:
        """Whether an LMVP server answers at `url` now."""
        return _answers(self.url)

    def start(self, timeout: float = 60.0) -> None:
        """Start the server, or use the one already answering on the port. Raises
        `LocalServerError` when the port is taken by something else or it does not come up."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the server process and return at once (`wait_ready` waits for it), so that the
        app can load its own code meanwhile; nothing if one already answers on the port."""
        if self.proc is not None:
            return
        if _answers(self.url):
            log.info("using the LMVP server already running at %s", self.url)
            return
        if _port_taken(self.port):
            raise LocalServerError(
                f"port {self.port} on this machine is taken by another program: stop it, or "
                "give the desktop app a server address instead"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_file = (self.data_dir / "desktop-server.log").open("ab")
        env = dict(os.environ, LMVP_DATA_DIR=str(self.data_dir))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmvp_server", "serve", "--port", str(self.port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(
        self, timeout: float = 60.0, on_wait: Callable[[], object] | None = None
    ) -> None:
        """Wait until the server `launch` started answers, calling `on_wait()` (a window
        painting itself) every 0.1 s meanwhile; raises `LocalServerError` if it stops or does
        not answer within `timeout` seconds."""
        if self.proc is None:
            return
        deadline = time.monotonic() + timeout
        while not _answers(self.url):
            if self.proc.poll() is not None:
                raise LocalServerError(
                    f"the local server stopped at start (exit {self.proc.returncode}); see "
                    f"{self.data_dir / 'desktop-server.log'}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise LocalServerError(f"the local server did not answer within {timeout:.0f} s")
            if on_wait is not None:
                on_wait()
            time.sleep(0.1)

    def admin_login(self) -> lmvp.Client:
        """A client logged in as `admin` with the password the server kept at its first start.
        Raises `LocalServerError` when that file is gone (someone changed the password)."""
        secret = self.data_dir / "initial-admin-password"
        try:
            password = secret.read_text().strip()
        except OSError:
            raise LocalServerError(
                f"{secret} is gone, so the admin password is not known here: log in with your "
                "username and password instead"
            ) from None
        return lmvp.Client.login(self.url, ADMIN, password, label="lmvp desktop")

    def stop(self) -> None:
        """Stop the server this object started (one it reused keeps running)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _answers(url: str) -> bool:
    try:
        # `url` is always http://127.0.0.1:<port>, built in this module.
        # /health, not openapi.json: FastAPI builds that document on its first request.
        with urllib.request.urlopen(f"{url}/api/v1/health", timeout=2) as resp:  # noqa: S310
            reply = json.loads(resp.read())
            return isinstance(reply, dict) and reply.get("status") == "ok" and "version" in reply
    except (OSError, ValueError, urllib.error.URLError):
        return False


def _port_taken(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


__all__ = ["LocalServer", "LocalServerError"]
