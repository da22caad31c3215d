"""Metric ingestion and downsampling through a real server (SQLite, the embedded default).

1. Ingest rate through the client: a training loop calls `run.log` with five metrics per step
   for 200,000 steps, then `run.finish()`; the clock runs from the first `log` until every
   point is stored. The daemon's path (`Client.log_metrics` with a list of points) is timed too.
2. Query time: one key with 1,000,000 stored points, downsampled on the server to 2,000
   points (`GET /runs/{id}/metrics?max_points=2000`), over keep-alive HTTP; median and p95.
   For scale, the time SQLite takes merely to scan those points for their min and max.

Targets (issue 5): at least 200,000 points/s ingested, a median under 50 ms per query.
Usage: python bench/metrics.py [--steps 200000] [--points 1000000] [--samples 50]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import BenchServer, bench_server, median, post_json, rss_mb

import lmvp

INGEST_TARGET = 200_000  # points per second
QUERY_TARGET_MS = 50.0
KEYS = ("loss", "accuracy", "lr", "grad_norm", "tokens_per_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000, help="run.log calls (5 keys each)")
    parser.add_argument("--points", type=int, default=1_000_000, help="points of the queried key")
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    with bench_server() as server:
        post_json(server, "/projects", {"name": "bench"})
        with lmvp.Client(server.url, server.token) as client:
            print(f"ingest through the client (SQLite server on {server.url})")
            rate = bench_run_log(client, args.steps)
            print(
                f"  run.log, {len(KEYS)} metrics x {args.steps:,} steps, until finish(): "
                f"{rate:,.0f} points/s ({rate / INGEST_TARGET:.2f}x the {INGEST_TARGET:,}/s "
                "target)"
            )
            rate = bench_log_metrics(client, 200_000)
            print(f"  Client.log_metrics(200,000 points), the daemon's path: {rate:,.0f} points/s")

            run_id, rate = ingest_one_key(client, args.points)
            print(f"  one key, {args.points:,} points through run.log: {rate:,.0f} points/s")
            print()
            bench_queries(server, client, run_id, args.points, args.samples)
        print(f"\nserver RSS at the end: {rss_mb(server.pid):.0f} MB")


def bench_run_log(client: lmvp.Client, steps: int) -> float:
    run = client.init_run("bench/resnet", name="five-metrics")
    start = time.perf_counter()
    for step in range(steps):
        run.log(
            {
                "loss": 2.0 / (1 + step / 1000),
                "accuracy": step / steps,
                "lr": 3e-4,
                "grad_norm": 1.0 + (step % 100) / 100,
                "tokens_per_s": 51234.5,
            },
            step,
        )
    info = run.finish()
    elapsed = time.perf_counter() - start
    assert info.point_count == steps * len(KEYS), info.point_count
    return info.point_count / elapsed


def bench_log_metrics(client: lmvp.Client, count: int) -> float:
    info = client.create_run("bench/resnet", name="daemon-path")
    now = time.time()
    points = [lmvp.MetricPoint("loss", step, 1.0 / (step + 1), now) for step in range(count)]
    start = time.perf_counter()
    inserted = client.log_metrics(info.id, points)
    elapsed = time.perf_counter() - start
    assert inserted == count
    client.finish_run(info.id)
    return count / elapsed


def ingest_one_key(client: lmvp.Client, points: int) -> tuple[int, float]:
    """A million points of a noisy loss curve with one spike and one dip to find again."""
    rng = random.Random(5)
    spike, dip = points // 3, 2 * points // 3
    run = client.init_run("bench/resnet", name="one-key")
    start = time.perf_counter()
    for step in range(points):
        value = 2.0 * math.exp(-step / (points / 4)) + rng.random() * 0.05
        if step == spike:
            value = 50.0
        elif step == dip:
            value = -5.0
        run.log({"loss": value}, step)
    run.finish()
    return run.id, points / (time.perf_counter() - start)


def bench_queries(
    server: BenchServer, client: lmvp.Client, run_id: int, points: int, samples: int
) -> None:
    path = f"/api/v1/runs/{run_id}/metrics?keys=loss&max_points=2000"
    times, body = timed_gets(server, path, samples)
    series = json.loads(body)["series"][0]
    assert series["count"] == points and len(series["steps"]) <= 2000
    assert 50.0 in series["values"] and -5.0 in series["values"], "lost the spike or the dip"
    med = median(times)
    print(f"query: 1 key, {points:,} stored points -> {len(series['steps'])} points (max 2,000)")
    print(
        f"  GET .../metrics?max_points=2000   median {med:6.2f} ms   p95 {p95(times):6.2f} ms"
        f"   ({QUERY_TARGET_MS / med:.1f}x under the {QUERY_TARGET_MS:.0f} ms target)"
    )
    window = []
    rng = random.Random(7)
    for _ in range(samples):
        lo = rng.randrange(0, points // 2)
        span = f"&step_min={lo}&step_max={lo + points // 3}"
        window.extend(timed_gets(server, path + span, 1, warmup=0)[0])
    print(
        f"  a third of the range, anywhere      median {median(window):6.2f} ms"
        f"   p95 {p95(window):6.2f} ms"
    )
    through = []
    for _ in range(samples):
        start = time.perf_counter()
        client.metrics(run_id, keys=["loss"], max_points=2000)
        through.append((time.perf_counter() - start) * 1000)
    print(f"  lmvp Client.metrics (parse incl.)   median {median(through):6.2f} ms")
    scan = scan_ms(server.data_dir / "lmvp.db", run_id)
    print(
        f"  for scale: SQLite scanning the {points:,} points for min and max alone takes "
        f"{scan:.0f} ms ({scan / med:.0f}x the downsampled query)"
    )


def timed_gets(
    server: BenchServer, path: str, samples: int, warmup: int = 3
) -> tuple[list[float], bytes]:
    conn = http.client.HTTPConnection(server.host, server.port)
    headers = {"Authorization": f"Bearer {server.token}"}
    times = []
    body = b""
    for _ in range(samples + warmup):
        start = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        times.append((time.perf_counter() - start) * 1000)
        assert resp.status == 200, body[:200]
    conn.close()
    return times[warmup:], body


def scan_ms(database: Path, run_id: int) -> float:
    """Median time of the naive query (every point read) straight on the server's database."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    key_id = db.execute(
        "SELECT id FROM metric_keys WHERE run_id = ? AND key = 'loss'", (run_id,)
    ).fetchone()[0]
    times = []
    for _ in range(5):
        start = time.perf_counter()
        db.execute(
            "SELECT min(value), max(value) FROM metric_points WHERE key_id = ?", (key_id,)
        ).fetchone()
        times.append((time.perf_counter() - start) * 1000)
    db.close()
    return median(times)


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.95) - 1)]


if __name__ == "__main__":
    main()
