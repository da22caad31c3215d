"""Latency of the metadata calls people make all day, on a model with 1,000 versions.

Starts a real server (SQLite, the embedded default), commits 1,000 versions of one model, then
times listing them (the first page, and all 1,000 at once), fetching `latest` and the project
history, over keep-alive HTTP like any client. Prints medians and p95 in milliseconds, and the
server's RSS when idle. Usage: python bench/versions.py [--versions 1000] [--samples 200]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import BenchServer, bench_server, median, post_json, rss_mb


def upload_small(server: BenchServer, project: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    meta = ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}"
        for k, v in {"project": project, "sha256": digest}.items()
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
    assert conn.getresponse().status == 204
    return digest


def timed_gets(server: BenchServer, path: str, samples: int, warmup: int = 5) -> list[float]:
    conn = http.client.HTTPConnection(server.host, server.port)
    headers = {"Authorization": f"Bearer {server.token}"}
    times = []
    for _ in range(samples + warmup):
        start = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        times.append((time.perf_counter() - start) * 1000)
        assert resp.status == 200, body[:200]
    conn.close()
    return times[warmup:]  # the first few warm caches up


def p95(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.95) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    with bench_server() as server:
        post_json(server, "/projects", {"name": "bench"})
        post_json(server, "/projects/bench/models", {"name": "resnet"})
        digest = upload_small(server, "bench", b"weights" * 1000)
        files = [{"path": "model.safetensors", "size": 7000, "sha256": digest}]
        start = time.perf_counter()
        for i in range(args.versions):
            post_json(
                server,
                "/projects/bench/models/resnet/versions",
                {
                    "files": files,
                    "message": f"checkpoint {i}",
                    "metadata": {"step": i * 100, "framework": "torch"},
                    "metrics": {"loss": 1 / (i + 1)},
                },
            )
        commit_ms = (time.perf_counter() - start) * 1000 / args.versions
        idle_rss = rss_mb(server.pid)
        base = "/api/v1/projects/bench/models/resnet/versions"
        cases = {
            "list versions (first page, 50)": base,
            f"list versions (all {args.versions})": f"{base}?limit=1000",
            "get latest version": f"{base}/latest",
            "project history (first page)": "/api/v1/projects/bench/history",
        }
        print(f"model with {args.versions} versions; {args.samples} samples each, keep-alive HTTP")
        print(f"  commit a version (one file): {commit_ms:.1f} ms on average")
        for label, path in cases.items():
            times = timed_gets(server, path, args.samples)
            print(f"  {label:36s} median {median(times):6.2f} ms   p95 {p95(times):6.2f} ms")
        # The listing is cached until the model changes; time it right after a change too.
        cold = []
        for i in range(args.samples // 10):
            post_json(
                server,
                "/projects/bench/models/resnet/versions",
                {"files": files, "message": f"extra {i}"},
            )
            cold.extend(timed_gets(server, f"{base}?limit=1000", 1, warmup=0))
        print(
            f"  {'list versions (all, right after a commit)':36s} median {median(cold):6.2f} ms"
            f"   p95 {p95(cold):6.2f} ms"
        )
        size = len(json.dumps(json.loads(_get(server, f"{base}?limit=1000"))))
        print(f"  (all-versions response: {size / 1024:.0f} KiB of JSON)")
        print(
            f"  server RSS after the run: {rss_mb(server.pid):.0f} MB (idle at start of "
            f"reads: {idle_rss:.0f} MB)"
        )


def _get(server: BenchServer, path: str) -> bytes:
    conn = http.client.HTTPConnection(server.host, server.port)
    conn.request("GET", path, headers={"Authorization": f"Bearer {server.token}"})
    return conn.getresponse().read()


if __name__ == "__main__":
    main()
