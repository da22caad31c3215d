"""A fleet as a team runs it: nginx with the shipped site (deploy/nginx/lmvp.conf) over HTTPS,
in front of several `lmvp-server serve` processes on one PostgreSQL database and one S3-compatible
store (SeaweedFS, tests/s3.py), each with a data directory of its own.

Each server process stands for a host of the fleet: it has its own port, so nginx's upstream
lists them one by one as an operator lists hosts, and a test can take one out of rotation
(`NginxProxy.reload`) or kill it. The last one runs `--workers 2`, so the fleet also has two
workers behind one address. nginx's access log says which server answered each request."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import requests

from tests.nginx import NginxProxy, find_nginx, trusting
from tests.s3 import SeaweedFS
from tests.support import (
    ADMIN_PASSWORD,
    SERVER_MAIN,
    Api,
    Deployment,
    ServerProcess,
    _die_with_parent,
    unique,
)


@dataclass
class Fleet:
    """Servers on one database and store, behind `proxy`; `deployment` speaks through nginx."""

    servers: list[ServerProcess]
    proxy: NginxProxy
    deployment: Deployment
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.proxy.url

    def only(self, *servers: ServerProcess) -> None:
        """Take every other server out of nginx's rotation (requests in flight stay)."""
        self.proxy.reload([s.port for s in servers])

    def restore(self) -> None:
        """Every server running and in rotation again, as the next test expects."""
        down = [s for s in self.servers if s.proc is None or s.proc.poll() is not None]
        if down:
            launch(down)
        if self.proxy.upstreams != [s.port for s in self.servers]:
            self.proxy.reload([s.port for s in self.servers])

    def address(self, server: ServerProcess) -> str:
        """How nginx's access log names `server`."""
        return f"127.0.0.1:{server.port}"

    def served_by(
        self, method: str, path_start: str, since: int = 0, *, at_least: int = 1
    ) -> list[str]:
        """The server that answered each logged `method` request under `path_start`, once at
        least `at_least` are logged (or after 10 s): nginx writes a request's line after its
        answer has gone, so a client can read the log before the line of its last request."""
        deadline = time.monotonic() + 10
        while True:
            found = [
                s.upstreams[-1]
                for s in self.proxy.served()[since:]
                if s.method == method and s.path.startswith(path_start) and s.upstreams
            ]
            if len(found) >= at_least or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def launch(servers: list[ServerProcess], timeout: float = 60) -> None:
    """Start every server at once (from this thread: a server started by a thread dies with
    it) and wait until each answers."""
    for server in servers:
        server.log_path = server.data_dir / f"server-{server.port}.log"
        with server.log_path.open("ab") as log:
            server.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(SERVER_MAIN),
                    "serve",
                    "--port",
                    str(server.port),
                    "--log-level",
                    "warning",
                    *server.serve_args,
                ],
                env=server.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
    deadline = time.monotonic() + timeout
    for server in servers:
        assert server.proc is not None and server.log_path is not None
        while True:
            assert server.proc.poll() is None, server.log_path.read_text()
            assert time.monotonic() < deadline, f"no answer:\n{server.log_path.read_text()}"
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{server.url}/api/v1/health", timeout=1).ok:
                    break
            time.sleep(0.05)


@pytest.fixture(scope="session")
def _fleet(
    make_server: Callable[[str], ServerProcess],
    tmp_path_factory: pytest.TempPathFactory,
    seaweedfs: SeaweedFS,
) -> Iterator[Fleet]:
    """Two hosts, three workers (the second serves with `--workers 2`), each host with a data
    directory of its own, on one PostgreSQL database and one S3 bucket (SeaweedFS), behind
    nginx over HTTPS; started once per test process (about 5 s of CPU)."""
    if find_nginx() is None:
        pytest.skip("nginx is not installed (apt-get install nginx; `make test` installs it)")
    first = make_server("postgres")
    store_env = {
        **seaweedfs.server_env(unique("fleet")),
        # Clients on this machine would hand their files to a server over a Unix socket,
        # around nginx; a fleet's clients are elsewhere.
        "LMVP_LOCAL_UPLOADS": "0",
    }
    # Another host: a data directory of its own (uploads in progress live in the store).
    second = ServerProcess(tmp_path_factory.mktemp("fleet-host-2"), first.database_url)
    servers = [first, second]
    servers[-1].serve_args = ["--workers", "2"]
    for server in servers:
        server.extra_env.update(store_env)
    proxy = NginxProxy(tmp_path_factory.mktemp("nginx"), [s.port for s in servers])
    try:
        launch(servers)
        proxy.start()
        with trusting(proxy.cert):
            admin = Api(proxy.url).login("admin", ADMIN_PASSWORD)
        yield Fleet(servers, proxy, Deployment(first, admin))
    finally:
        proxy.stop()
        for server in servers:
            server.stop()


@pytest.fixture
def fleet(_fleet: Fleet) -> Iterator[Fleet]:
    """The fleet whole (a server an earlier test killed restarted, every server in rotation),
    its certificate trusted by the test's clients."""
    _fleet.restore()
    with trusting(_fleet.proxy.cert):
        yield _fleet
