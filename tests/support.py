"""Test support: real server processes on loopback ports and a real PostgreSQL cluster.

Nothing here is mocked. Each `ServerProcess` is `lmvp-server serve` in a process of its own
(through tests/server_main.py, which only makes password hashing cheap), on its own data
directory and database, so tests can cut connections to it, kill it with SIGKILL and start it
again on the same data.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from keyring.backend import KeyringBackend

ADMIN_PASSWORD = "admin-password-for-tests"
_names = itertools.count(1)
# `lmvp-server` with cheap password hashing, which is how test servers run (see the file).
SERVER_MAIN = Path(__file__).with_name("server_main.py")


def unique(prefix: str) -> str:
    """A name no other test in this run uses (the session server is shared)."""
    return f"{prefix}-{os.getpid()}-{next(_names)}"


def _port_pool() -> range:
    """The loopback ports this process chooses from: below the kernel's ephemeral range, so no
    outgoing connection (the suite makes thousands) can take one between choosing it and the
    server binding it; and a slice of its own for each parallel test worker, so two workers
    never choose the same one."""
    low, _ = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    pool = range(12000, max(low, 16000))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2:
        return pool
    size = len(pool) // count
    start = pool.start + int(worker[2:]) % count * size
    return range(start, start + size)


_ports = _port_pool()
# A random start: a process run just before, or a helper process of this worker, chose from
# the same slice; ports are then taken in turn, so this process never hands one out twice.
_next_port = itertools.count(random.randrange(len(_ports)))


def free_port() -> int:
    """A loopback port nothing listens on, that no other test process will choose.

    Not the kernel's pick (port 0): that comes from the ephemeral range, where a connection
    made elsewhere in the suite may take it before the server binds it (CI failed on that:
    "address already in use")."""
    for _ in range(len(_ports)):
        port = _ports[next(_next_port) % len(_ports)]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, or in TIME_WAIT
            return port
    raise RuntimeError(f"no free loopback port in {_ports.start}-{_ports.stop - 1}")


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports."""
    return [free_port() for _ in range(count)]


def _die_with_parent() -> None:
    # If pytest is killed, its servers must not linger holding ports and pipes.
    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_random_file(path: Path, size: int, seed: int = 0) -> str:
    """Write `size` pseudo-random bytes (cheaply) and return their sha256."""
    block = hashlib.sha512(str(seed).encode()).digest() * 16384  # 1 MiB
    h = hashlib.sha256()
    with path.open("wb") as f:
        written = 0
        counter = 0
        while written < size:
            piece = (counter.to_bytes(8, "little") + block)[: min(len(block), size - written)]
            f.write(piece)
            h.update(piece)
            written += len(piece)
            counter += 1
    return h.hexdigest()


@dataclass
class ServerProcess:
    """A real `lmvp-server serve` process."""

    data_dir: Path
    database_url: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    # Extra environment for the server process, e.g. {"LMVP_MAX_UPLOAD_SIZE": "1000"}.
    extra_env: dict[str, str] = field(default_factory=dict)
    # `serve` through tests/server_main.py: argon2 at its cheapest cost, which makes creating
    # and logging in users nearly free; False runs `python -m lmvp_server` exactly as users do.
    cheap_password_hashing: bool = True
    # Put before the server's command line, e.g. ["prlimit", "--nofile=1024", "--"] (which
    # execs the server: `proc.pid` is still the server's).
    command_prefix: list[str] = field(default_factory=list)
    # Put after `serve`'s own arguments, e.g. ["--workers", "2"].
    serve_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            LMVP_DATA_DIR=str(self.data_dir),
            LMVP_DATABASE_URL=self.database_url,
            LMVP_INITIAL_ADMIN="0",
        )
        env.update(self.extra_env)
        return env

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lmvp_server", *args],
            env=self.env(),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start(self, timeout: float = 30.0) -> None:
        self.log_path = self.data_dir / "server.log"
        log = self.log_path.open("ab")
        entry = [str(SERVER_MAIN)] if self.cheap_password_hashing else ["-m", "lmvp_server"]
        self.proc = subprocess.Popen(
            [
                *self.command_prefix,
                sys.executable,
                *entry,
                "serve",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                *self.serve_args,
            ],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited at start:\n{self.log_path.read_text()}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{self.url}/api/v1/health", timeout=1).ok:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"server did not answer in {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no cleanup, no flushing; what a crash or an OOM kill does."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


class Api:
    """A thin requests session bound to a server and a token; returns raw responses."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"
        self.token = token

    def __call__(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.http.request(method, f"{self.url}/api/v1{path}", **kwargs)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> requests.Response:
        return self("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> requests.Response:
        return self("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self("DELETE", path, **kw)

    def login(self, username: str, password: str) -> Api:
        r = requests.post(
            f"{self.url}/api/v1/auth/login",
            json={"username": username, "password": password},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return Api(self.url, r.json()["token"])


@dataclass
class Deployment:
    """A running server with an admin and helpers to make users, projects and versions."""

    server: ServerProcess
    admin: Api

    @property
    def url(self) -> str:
        return self.server.url

    def user(self, prefix: str = "user") -> Api:
        """A fresh non-admin user, logged in."""
        name = unique(prefix)
        r = self.admin.post("/users", json={"username": name, "password": "password-" + name})
        assert r.status_code == 201, r.text
        api = self.admin.login(name, "password-" + name)
        api.username = name  # type: ignore[attr-defined]
        return api

    def account(self, prefix: str = "user") -> str:
        """A fresh non-admin user that nobody logs in as (saves the argon2 work of a login);
        returns the username."""
        name = unique(prefix)
        r = self.admin.post("/users", json={"username": name, "password": "password-" + name})
        assert r.status_code == 201, r.text
        return name

    def project(self, owner: Api | None = None, prefix: str = "proj") -> str:
        name = unique(prefix)
        r = (owner or self.admin).post("/projects", json={"name": name})
        assert r.status_code == 201, r.text
        return name

    def add_member(self, project: str, api: Api, role: str) -> None:
        r = self.admin.put(f"/projects/{project}/members/{api.username}", json={"role": role})  # type: ignore[attr-defined]
        assert r.status_code == 200, r.text

    def upload(self, api: Api, project: str, data: bytes, filename: str = "model.bin") -> str:
        """Upload bytes with plain tus requests (one PATCH); returns the sha256."""
        digest = sha256_bytes(data)
        location = tus_create(api, project, digest, len(data), filename)
        r = api.http.patch(location, data=data, headers=tus_patch_headers(0), timeout=60)
        assert r.status_code == 204, r.text
        return digest

    def commit(
        self, api: Api, project: str, model: str, files: dict[str, bytes], **body: Any
    ) -> requests.Response:
        """Upload `files` (path → bytes) and commit them as a version of `model`."""
        manifest = []
        for path, data in files.items():
            digest = self.upload(api, project, data, filename=path)
            manifest.append({"path": path, "size": len(data), "sha256": digest})
        if api.get(f"/projects/{project}/models/{model}").status_code == 404:
            assert api.post(f"/projects/{project}/models", json={"name": model}).status_code == 201
        return api.post(
            f"/projects/{project}/models/{model}/versions", json={"files": manifest, **body}
        )


def tus_metadata(**values: str) -> str:
    import base64

    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def tus_create(api: Api, project: str, sha256: str, length: int, filename: str = "f") -> str:
    r = api.post(
        "/uploads",
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(length),
            "Upload-Metadata": tus_metadata(project=project, sha256=sha256, filename=filename),
        },
    )
    assert r.status_code == 201, r.text
    return r.headers["Location"]


def tus_patch_headers(offset: int) -> dict[str, str]:
    return {
        "Tus-Resumable": "1.0.0",
        "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream",
    }


# --- PostgreSQL ---------------------------------------------------------------------------------


def find_pg_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresCluster:
    """A throwaway PostgreSQL cluster on a loopback port, owned by the test run.

    initdb refuses to run as root, so as root the cluster belongs to the `postgres` user.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="lmvp-pg-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]

    def start(self) -> None:
        data = self.dir / "data"
        subprocess.run(
            [
                *self._as,
                str(self.bin / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
        )
        self._launch()

    def restart(self) -> None:
        """Stop the cluster as an administrator's restart or a failover does, then start it
        again, same port and data."""
        self.halt()
        self._launch()

    def halt(self) -> None:
        """Stop the cluster with every session ended at once (pg_ctl's fast mode); its data
        stays for `restart`."""
        data = str(self.dir / "data")
        stop = [*self._as, str(self.bin / "pg_ctl"), "stop", "-D", data, "-m", "fast"]
        subprocess.run(stop, check=True, capture_output=True)
        assert self.proc is not None
        self.proc.wait(30)

    def _launch(self) -> None:
        data = self.dir / "data"
        self.proc = subprocess.Popen(
            [
                *self._as,
                str(self.bin / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.dir),
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "log").open("ab") if not self._as else subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                self.connect("postgres").close()
                return
            time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not start")

    def connect(self, db: str) -> Any:
        import psycopg

        return psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname={db}", autocommit=True
        )

    def new_database(self, *, copy_of: str | None = None) -> str:
        """A fresh database, empty or a copy of the database at the URL `copy_of` (which nothing
        may be connected to); returns its SQLAlchemy URL."""
        name = f"lmvp_{os.getpid()}_{next(_names)}"
        template = f' TEMPLATE "{copy_of.rsplit("/", 1)[1]}"' if copy_of else ""
        with self.connect("postgres") as conn:
            conn.execute(f'CREATE DATABASE "{name}"{template}')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
            if self.proc.poll() is None:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- the server's own database, for checks no API exposes ---------------------------------------


@contextlib.contextmanager
def server_database(server: ServerProcess) -> Iterator[Any]:
    """A SQLAlchemy session on the server's real database (its SQLite file or its PostgreSQL
    database), for tests that must look at or change what the API never shows: stored hashes,
    a token's expiry in the past."""
    from sqlalchemy.orm import Session

    from lmvp_server.db import make_engine

    engine = make_engine(server.database_url)
    try:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            yield session
    finally:
        engine.dispose()


# --- the live event stream ----------------------------------------------------------------------


@dataclass
class SseEvent:
    id: int
    kind: str
    data: dict[str, Any]


class EventStream:
    """`GET /api/v1/events` read with httpx as a real client would: opened once, events parsed
    from the Server-Sent Events wire format as they arrive (by a reader thread, so that a test
    can wait for an event with a deadline while keep-alive pings keep the connection busy)."""

    def __init__(self, url: str, token: str, last_event_id: int | None = None) -> None:
        import queue
        import threading

        import httpx

        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self._client = httpx.Client(timeout=httpx.Timeout(10.0, read=None))
        self._cm = self._client.stream("GET", f"{url}/api/v1/events", headers=headers)
        self.response = self._cm.__enter__()
        self._queue: queue.Queue[SseEvent | BaseException] = queue.Queue()
        self._closing = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Hang up; the reader thread, blocked in a read, wakes up as the socket shuts."""
        self._closing = True
        stream = self.response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self._cm.__exit__(None, None, None)
        self._client.close()
        self._reader.join(5)

    def next_event(self, timeout: float = 10.0) -> SseEvent:
        """The next event (comments and keep-alive pings skipped); EOFError once the server
        hangs up, TimeoutError when none comes in `timeout` seconds."""
        import queue

        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no event in {timeout}s") from None
        if isinstance(item, BaseException):
            self._queue.put(item)  # every later call fails the same way
            raise item
        return item

    def read_until(self, stop: Any, timeout: float = 10.0) -> list[SseEvent]:
        """Every event up to and including the first one for which `stop(event)` is true."""
        deadline = time.monotonic() + timeout
        seen: list[SseEvent] = []
        while True:
            try:
                event = self.next_event(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise TimeoutError(f"no matching event in {timeout}s; saw {seen}") from None
            seen.append(event)
            if stop(event):
                return seen

    def _read(self) -> None:
        import json

        fields: dict[str, str] = {}
        try:
            for line in self.response.iter_lines():
                if not line:
                    if "data" in fields:
                        self._queue.put(
                            SseEvent(
                                int(fields.get("id", "0")),
                                fields.get("event", "message"),
                                json.loads(fields["data"]),
                            )
                        )
                    fields = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
            self._queue.put(EOFError("the server closed the event stream"))
        except Exception as exc:
            self._queue.put(
                EOFError("the server closed the event stream") if self._closing else exc
            )


def at_the_same_moment(count: int, work: Any) -> list[Any]:
    """Run `work(i)` for i in range(count) in threads released together by a barrier, to make
    requests race; returns each result (or the exception it raised)."""
    import threading

    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


class MemoryKeyring(KeyringBackend):
    """A keyring that keeps passwords in a dict: tests must never reach a real keyring, which
    cannot run unattended here and may hang on a dialog (HEADLESS.md)."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.passwords.pop((service, username), None)
