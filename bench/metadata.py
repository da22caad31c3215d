"""Throughput and server CPU of the metadata calls under concurrent keep-alive clients.

Starts a real server (SQLite, the embedded default; one process), commits --versions versions
of one model, then lets --clients threads, each with its own keep-alive connection, ask for
`GET .../versions/latest` and for the full 1,000-version listing for --seconds each. Prints
requests/s and the server's CPU time per request (user + system time of the server process, from
/proc/<pid>/stat, before and after the timed window, divided by the requests answered).

With --baseline REV (default: none) the same run is made first against the server code of that
git revision (checked out into a temporary worktree and put first on PYTHONPATH), so the figures
before and after a change come from the same machine in the same minute.
Usage: python bench/metadata.py [--versions 1000] [--clients 16] [--seconds 10] [--baseline REV]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from _server import BenchServer, bench_server

REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def request(
    server: BenchServer, method: str, path: str, body: object = None
) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
    headers = {"Authorization": f"Bearer {server.token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    out = resp.read()
    conn.close()
    return resp.status, out, dict(resp.getheaders())


@contextlib.contextmanager
def server_from(code_dir: Path) -> Iterator[BenchServer]:
    """`lmvp-server serve` of the code in `code_dir`, on a fresh data dir, with an admin."""
    data = Path(tempfile.mkdtemp(prefix="lmvp-bench-meta-"))
    try:
        with bench_server(data, code_dir=code_dir) as server:
            yield server
    finally:
        shutil.rmtree(data, ignore_errors=True)


def populate(server: BenchServer, versions: int) -> None:
    """A project `bench`, a model `resnet` with `versions` versions of one small file."""
    assert request(server, "POST", "/api/v1/projects", {"name": "bench"})[0] == 201
    assert request(server, "POST", "/api/v1/projects/bench/models", {"name": "resnet"})[0] == 201
    data = b"weights" * 1000
    digest = hashlib.sha256(data).hexdigest()
    meta = ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}"
        for k, v in {"project": "bench", "sha256": digest}.items()
    )
    conn = http.client.HTTPConnection(server.host, server.port)
    auth = {"Authorization": f"Bearer {server.token}", "Tus-Resumable": "1.0.0"}
    conn.request(
        "POST",
        "/api/v1/uploads",
        headers={**auth, "Upload-Length": str(len(data)), "Upload-Metadata": meta},
    )
    resp = conn.getresponse()
    resp.read()
    path = resp.getheader("Location", "").split(f":{server.port}", 1)[1]
    conn.request(
        "PATCH",
        path,
        body=data,
        headers={**auth, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 204
    files = [{"path": "model.safetensors", "size": len(data), "sha256": digest}]
    body = {"files": files, "metadata": {"framework": "torch"}, "metrics": {"loss": 0.5}}
    for i in range(versions):
        conn.request(
            "POST",
            "/api/v1/projects/bench/models/resnet/versions",
            body=json.dumps({**body, "message": f"checkpoint {i}"}),
            headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 201
    conn.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def load(server: BenchServer, path: str, clients: int, seconds: float) -> tuple[float, float]:
    """`clients` keep-alive connections asking for `path` for `seconds`; (requests/s, server CPU
    ms per request). Every answer must be 200."""
    stop = threading.Event()
    counts = [0] * clients
    failures: list[str] = []
    headers = {"Authorization": f"Bearer {server.token}"}

    def client(i: int) -> None:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
        while not stop.is_set():
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                failures.append(f"{resp.status}")
                return
            counts[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(min(2.0, seconds / 4))  # warm up: caches, connections
    start_count, start_cpu, start = sum(counts), cpu_seconds(server.pid), time.monotonic()
    time.sleep(seconds)
    done, cpu, elapsed = sum(counts), cpu_seconds(server.pid), time.monotonic()
    stop.set()
    for t in threads:
        t.join(60)
    if failures:
        raise SystemExit(f"{len(failures)} requests failed: {failures[:5]}")
    requests = done - start_count
    return requests / (elapsed - start), (cpu - start_cpu) * 1000 / max(1, requests)


def measure(code_dir: Path, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    base = "/api/v1/projects/bench/models/resnet/versions"
    cases = {
        "GET latest": f"{base}/latest",
        f"GET listing ({args.versions} versions)": f"{base}?limit={min(args.versions, 1000)}",
    }
    with server_from(code_dir) as server:
        populate(server, args.versions)
        return {
            label: load(server, path, args.clients, args.seconds) for label, path in cases.items()
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--baseline", help="a git revision to measure first, for comparison")
    args = parser.parse_args()
    runs: dict[str, dict[str, tuple[float, float]]] = {}
    if args.baseline:
        worktree = Path(tempfile.mkdtemp(prefix="lmvp-bench-baseline-"))
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            runs[f"baseline {args.baseline}"] = measure(worktree, args)
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
                check=False,
                capture_output=True,
            )
    runs["this tree"] = measure(REPO, args)
    print(
        f"{args.clients} keep-alive clients, {args.seconds:.0f} s per case, one server process "
        f"(SQLite), model with {args.versions} versions"
    )
    for name, figures in runs.items():
        print(f"  {name}:")
        for label, (rate, cpu_ms) in figures.items():
            print(f"    {label:32s} {rate:7.0f} requests/s   {cpu_ms:6.2f} ms server CPU each")


if __name__ == "__main__":
    main()
