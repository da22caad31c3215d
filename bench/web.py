"""Server-side time of the web console's pages on a model with 1,000 versions.

Starts a real server (SQLite, the embedded default), commits 1,000 versions of one model (each
tied to a run of 20,000 logged points, with metrics and metadata) and two aliases, logs in
through the console's own login form, then fetches each page over keep-alive HTTP with the
session cookie like a browser would. The server's time per page is what the console's
`Server-Timing` header reports (authenticating the session, the queries and rendering the
template); the round trip seen by the client is printed beside it. Target: median under 50 ms.

The pages of issue 18 are measured too: the audit log filtered, search, tokens and the
confirmation pages of deletions; and (issue 16) the model's page once it has a retention policy
that would remove all but 11 of its versions.

Usage: python bench/web.py [--versions 1000] [--samples 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import re
import sys
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import PASSWORD, BenchServer, bench_server, median, post_json
from versions import p95, upload_small

TARGET_MS = 50.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    with bench_server() as server:
        run = seed(server, args.versions)
        cookie = log_in(server)
        n = args.versions
        model = "/projects/bench/models/resnet"
        cases = {
            "projects": "/",
            "project (models, history)": "/projects/bench",
            "model, newest 50 versions": model,
            "model, versions below 500": f"{model}?before=500",
            f"version {n} (latest)": f"{model}/versions/{n}",
            "version 1 (oldest)": f"{model}/versions/1",
            "run (page; charts load after)": f"/projects/bench/runs/{run}",
            "run metrics.json (2,000 pts/key)": f"/projects/bench/runs/{run}/metrics.json",
            "members": "/projects/bench/members",
            "audit log (first page)": "/projects/bench/audit",
            "audit log, versions by bench": "/projects/bench/audit?kind=version&who=bench",
            "search 'checkpoint 9'": "/search?q=checkpoint+9",
            "search by metadata 'torch'": "/search?q=torch",
            "your tokens": "/tokens",
            "trash": "/projects/bench/trash",
            "compare v1 and the latest": f"{model}/compare?a=1&b={n}",
            f"delete v{n}: confirmation": f"{model}/versions/{n}/delete",
            "delete model: confirmation": f"{model}/delete",
        }
        print(f"web console, model with {n} versions; {args.samples} samples per page")
        print(f"  {'page':34s} {'server median':>14s} {'p95':>8s} {'round trip':>11s}")
        worst = 0.0
        for label, path in cases.items():
            server_ms, trip_ms = time_page(server, path, cookie, args.samples)
            worst = max(worst, median(server_ms))
            print(
                f"  {label:34s} {median(server_ms):11.2f} ms {p95(server_ms):6.2f} ms"
                f" {median(trip_ms):8.2f} ms"
            )
        # Issue 16: the model's page with a retention policy that would remove nearly every
        # version (its preview: the rules keeping each, the removals and the bytes they free).
        set_policy(
            server,
            {"keep_latest": 10, "keep_best": [{"count": 3, "metric": "loss", "mode": "min"}]},
        )
        for label, path in {
            "model with a policy (preview)": model,
            "model with a policy, below 500": f"{model}?before=500",
        }.items():
            server_ms, trip_ms = time_page(server, path, cookie, args.samples)
            worst = max(worst, median(server_ms))
            print(
                f"  {label:34s} {median(server_ms):11.2f} ms {p95(server_ms):6.2f} ms"
                f" {median(trip_ms):8.2f} ms"
            )
        verdict = "meets" if worst < TARGET_MS else "MISSES"
        print(f"  slowest median {worst:.2f} ms: {verdict} the {TARGET_MS:.0f} ms target")
        return 0 if worst < TARGET_MS else 1


def seed(server: BenchServer, versions: int) -> int:
    """The project, model, run (20,000 points over two keys) and versions; returns the run."""
    post_json(server, "/projects", {"name": "bench"})
    post_json(server, "/projects/bench/models", {"name": "resnet"})
    run = int(
        str(post_json(server, "/projects/bench/runs", {"model": "resnet", "name": "r"})["id"])
    )
    steps = list(range(0, 10 * versions, 1))[:10_000]
    post_json(
        server,
        f"/runs/{run}/metrics",
        {
            "series": [
                {"key": "loss", "steps": steps, "values": [math.exp(-s / 3000) for s in steps]},
                {"key": "acc", "steps": steps, "values": [1 - math.exp(-s / 2000) for s in steps]},
            ]
        },
    )
    digest = upload_small(server, "bench", b"weights" * 1000)
    files = [{"path": "model.safetensors", "size": 7000, "sha256": digest}]
    start = time.perf_counter()
    for i in range(1, versions + 1):
        post_json(
            server,
            "/projects/bench/models/resnet/versions",
            {
                "files": files,
                "message": f"checkpoint {i}",
                "metadata": {"framework": "torch", "epoch": i},
                "metrics": {"loss": 1 / i, "acc": 1 - 1 / i, "lr": 0.001},
                "run": run,
                "step": i * 10,
            },
        )
    print(f"committed {versions} versions in {time.perf_counter() - start:.1f} s")
    for alias, number in (("production", versions // 2), ("best", versions - 3)):
        conn = http.client.HTTPConnection(server.host, server.port)
        conn.request(
            "PUT",
            f"/api/v1/projects/bench/models/resnet/aliases/{alias}",
            body=f'{{"version": {number}}}',
            headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"},
        )
        assert conn.getresponse().status == 200
    return run


def set_policy(server: BenchServer, policy: dict[str, object]) -> None:
    """Set the bench model's retention policy (applied only at a commit or the hourly pass,
    so the versions stay while the pages are timed)."""
    conn = http.client.HTTPConnection(server.host, server.port)
    conn.request(
        "PUT",
        "/api/v1/projects/bench/models/resnet/retention",
        body=json.dumps(policy),
        headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()[:300]
    conn.close()


def log_in(server: BenchServer) -> str:
    """Log in through the form; returns the Cookie header a browser would send."""
    conn = http.client.HTTPConnection(server.host, server.port)
    conn.request("GET", "/login")
    resp = conn.getresponse()
    html = resp.read().decode()
    login_cookie = resp.getheader("set-cookie", "").split(";")[0]
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF token in the login form"
    form = urllib.parse.urlencode(
        {"csrf": match.group(1), "username": "bench", "password": PASSWORD}
    )
    conn.request(
        "POST",
        "/login",
        body=form,
        headers={"Cookie": login_cookie, "Content-Type": "application/x-www-form-urlencoded"},
    )
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 303, resp.status
    session = next(
        value.split(";")[0]
        for name, value in resp.getheaders()
        if name.lower() == "set-cookie" and value.startswith("lmvp_session=")
    )
    return session


def time_page(
    server: BenchServer, path: str, cookie: str, samples: int, warmup: int = 5
) -> tuple[list[float], list[float]]:
    """(server-side ms, round-trip ms) of `samples` GETs of `path`, after `warmup` ones."""
    conn = http.client.HTTPConnection(server.host, server.port)
    on_server, round_trip = [], []
    for i in range(samples + warmup):
        start = time.perf_counter()
        conn.request("GET", path, headers={"Cookie": cookie})
        resp = conn.getresponse()
        body = resp.read()
        took = (time.perf_counter() - start) * 1000
        assert resp.status == 200, (path, resp.status, body[:300])
        timing = resp.getheader("server-timing", "")
        match = re.match(r"app;dur=([0-9.]+)", timing)
        assert match, f"{path} sent no Server-Timing header"
        if i >= warmup:
            on_server.append(float(match.group(1)))
            round_trip.append(took)
    conn.close()
    return on_server, round_trip


if __name__ == "__main__":
    sys.exit(main())
