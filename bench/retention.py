"""The garbage collector at scale: a full pass over 100,000 blobs and 10,000 versions, and what
it costs the people using the server meanwhile.

Starts a real server (SQLite by default, or PostgreSQL with --postgres: a cluster of its own,
as the tests start one), fills its store and
database directly (the fast way to get there: 100,000 small blob files in the local store and
their rows; 10 models of 1,000 versions, 10 files each), then deletes every other version for
good, which leaves 50,000 blobs that nothing references. It then measures, over keep-alive
HTTP like any client, with a committer and a reader running at once:

1. without GC for --baseline seconds: the p50/p99 of a commit (upload one small new blob, then
   commit it as a version of a model whose listing is read) and of that listing (first page,
   not cacheable since commits keep changing it), and of the project listing with its sizes;
2. the same while one full pass runs (POST /api/v1/admin/gc), and the pass's own figures.

Prints the figures and the ratios of p99 during GC over p99 without (target: no more than 2).
Usage: python bench/retention.py [--versions 10000] [--files 10] [--baseline 15]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import BenchServer, bench_server, median, post_json
from versions import upload_small


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def populate(
    server: BenchServer, database_url: str, project: str, versions: int, files: int
) -> int:
    """Blobs on disk and rows in the database, as uploads and commits would have left them;
    returns how many blobs."""
    from sqlalchemy import insert, select, update

    from lmvp_server.db import make_engine
    from lmvp_server.models import Blob, Model, Project, ProjectBlob, Version, VersionFile

    engine = make_engine(database_url)
    created = datetime.now(UTC) - timedelta(days=1)
    blobs_root = server.data_dir / "blobs"
    models = 10
    per_model = versions // models
    with engine.begin() as conn:
        project_id = conn.scalar(select(Project.id).where(Project.name == project))
        model_ids = []
        for m in range(models):
            model_id = conn.execute(
                insert(Model).values(
                    project_id=project_id,
                    name=f"m{m}",
                    description="",
                    created_at=created,
                    version_counter=per_model,
                    revision=per_model,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
            model_ids.append(model_id)
    count = 0
    for m, model_id in enumerate(model_ids):
        blob_rows: list[dict[str, Any]] = []
        file_rows: list[tuple[int, str, int, str]] = []  # (number, path, size, sha)
        for n in range(1, per_model + 1):
            for f in range(files):
                data = f"blob {m} {n} {f} ".encode() * 8
                sha = hashlib.sha256(data).hexdigest()
                path = blobs_root / sha[:2] / sha[2:4] / sha
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                blob_rows.append({"sha256": sha, "size": len(data), "created_at": created})
                file_rows.append((n, f"layer{f}.bin", len(data), sha))
                count += 1
        with engine.begin() as conn:
            conn.execute(insert(Blob), blob_rows)
            conn.execute(
                insert(ProjectBlob),
                [
                    {
                        "project_id": project_id,
                        "sha256": r["sha256"],
                        "size": r["size"],
                        "created_at": created,
                    }
                    for r in blob_rows
                ],
            )
            conn.execute(
                insert(Version),
                [
                    {
                        "model_id": model_id,
                        "number": n,
                        "message": f"step {n * 500}",
                        "metadata": {},
                        "metrics": {"loss": 1.0 / n},
                        "source_host": "",
                        "source_path": "",
                        "size": files * 64,
                        "file_count": files,
                        "created_at": created,
                        "step": n * 500,
                    }
                    for n in range(1, per_model + 1)
                ],
            )
            ids = dict(
                conn.execute(
                    select(Version.number, Version.id).where(Version.model_id == model_id)
                ).all()
            )
            conn.execute(
                insert(VersionFile),
                [
                    {"version_id": ids[n], "path": p, "size": s, "sha256": sha}
                    for n, p, s, sha in file_rows
                ],
            )
            conn.execute(update(Model).where(Model.id == model_id).values(revision=per_model + 1))
    engine.dispose()
    return count


def delete_every_other_version(database_url: str) -> None:
    from sqlalchemy import delete, text

    from lmvp_server.db import make_engine
    from lmvp_server.models import Version

    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(delete(Version).where(Version.number % 2 == 1, Version.step.is_not(None)))
    # Statistics for the planner, as autovacuum (or SQLite's `ANALYZE`) would have them after
    # tables grew this way over months; without them PostgreSQL plans the collector's queries
    # as if the tables were empty.
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    engine.dispose()


class Load:
    """A committer and a reader over keep-alive connections, timing every call."""

    def __init__(self, server: BenchServer, project: str, model: str) -> None:
        self.server, self.project, self.model = server, project, model
        self.stop = threading.Event()
        self.commits: list[float] = []
        self.listings: list[float] = []
        self.projects: list[float] = []
        self.errors: list[str] = []
        self._seq = 0

    def _commit_loop(self) -> None:
        headers = {
            "Authorization": f"Bearer {self.server.token}",
            "Content-Type": "application/json",
        }
        conn = http.client.HTTPConnection(self.server.host, self.server.port)
        while not self.stop.is_set():
            self._seq += 1
            data = f"live {os.getpid()} {self._seq} {time.time()}".encode()
            start = time.perf_counter()
            try:
                sha = upload_small(self.server, self.project, data)
                body = json.dumps({"files": [{"path": "w.bin", "size": len(data), "sha256": sha}]})
                conn.request(
                    "POST",
                    f"/api/v1/projects/{self.project}/models/{self.model}/versions",
                    body=body,
                    headers=headers,
                )
                resp = conn.getresponse()
                resp.read()
                assert resp.status == 201, resp.status
            except (OSError, http.client.HTTPException) as exc:
                self.errors.append(f"commit: {exc!r}")
                conn = http.client.HTTPConnection(self.server.host, self.server.port)
                continue
            self.commits.append((time.perf_counter() - start) * 1000)

    def _read_loop(self) -> None:
        conn = http.client.HTTPConnection(self.server.host, self.server.port)
        headers = {"Authorization": f"Bearer {self.server.token}"}
        paths = [
            (
                f"/api/v1/projects/{self.project}/models/{self.model}/versions?limit=50",
                self.listings,
            ),
            ("/api/v1/projects", self.projects),
        ]
        i = 0
        while not self.stop.is_set():
            path, into = paths[i % 2]
            i += 1
            start = time.perf_counter()
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                assert resp.status == 200, resp.status
            except (OSError, http.client.HTTPException) as exc:
                self.errors.append(f"read: {exc!r}")
                conn = http.client.HTTPConnection(self.server.host, self.server.port)
                continue
            into.append((time.perf_counter() - start) * 1000)
            time.sleep(0.005)

    def __enter__(self) -> Load:
        self.threads = [
            threading.Thread(target=self._commit_loop, daemon=True),
            threading.Thread(target=self._read_loop, daemon=True),
        ]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def summary(self) -> dict[str, tuple[int, float, float]]:
        return {
            name: (len(v), median(v) if v else float("nan"), percentile(v, 0.99))
            for name, v in (
                ("commit", self.commits),
                ("listing", self.listings),
                ("projects", self.projects),
            )
        }


def full_pass(server: BenchServer) -> dict[str, Any]:
    """POST /api/v1/admin/gc, waiting as long as the pass takes."""
    conn = http.client.HTTPConnection(server.host, server.port)
    conn.request("POST", "/api/v1/admin/gc", headers={"Authorization": f"Bearer {server.token}"})
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200, body[:300]
    report: dict[str, Any] = json.loads(body)
    return report


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A database in a PostgreSQL cluster of its own (tests/support.py's), for the run."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.support import PostgresCluster, find_pg_bin

    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise SystemExit("--postgres: no PostgreSQL binaries found (see tests/support.py)")
    cluster = PostgresCluster(bin_dir)
    cluster.start()
    try:
        yield cluster.new_database()
    finally:
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=10, help="blobs per version")
    parser.add_argument("--baseline", type=float, default=15.0, help="seconds without GC")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="PostgreSQL (a cluster of its own) instead of SQLite",
    )
    args = parser.parse_args()

    os.environ.update(LMVP_GC_GRACE_SECONDS="0", LMVP_GC_INTERVAL="0")
    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(postgres_database()) if args.postgres else ""
        server = stack.enter_context(bench_server(database_url=database_url))
        database_url = database_url or f"sqlite:///{server.data_dir / 'lmvp.db'}"
        print(f"database: {database_url.split('://')[0]}")
        project = "bench"
        post_json(server, "/projects", {"name": project})
        post_json(server, f"/projects/{project}/models", {"name": "live"})
        started = time.perf_counter()
        blobs = populate(server, database_url, project, args.versions, args.files)
        print(
            f"store: {blobs} blobs, {args.versions} versions in 10 models "
            f"(filled in {time.perf_counter() - started:.0f} s)"
        )
        delete_every_other_version(database_url)
        print(f"deleted every other version: {blobs // 2} blobs unreferenced")

        with Load(server, project, "live") as quiet:
            time.sleep(args.baseline)
        report: dict[str, Any] = {}
        with Load(server, project, "live") as busy:
            start = time.perf_counter()
            report = full_pass(server)
            wall = time.perf_counter() - start
        print(
            f"GC pass: {report['blobs_freed']} blobs, {report['bytes_freed']} bytes freed, "
            f"{report['project_blobs_released']} project rows released in "
            f"{report['duration_seconds']:.1f} s ({wall:.1f} s wall)"
        )
        q, b = quiet.summary(), busy.summary()
        print(f"{'':10} {'without GC':>30} {'during GC':>30} {'p99 ratio':>10}")
        for name in ("commit", "listing", "projects"):
            (nq, mq, pq), (nb, mb, pb) = q[name], b[name]
            print(
                f"{name:10} n={nq:5} p50={mq:7.1f} p99={pq:7.1f} ms   "
                f"n={nb:5} p50={mb:7.1f} p99={pb:7.1f} ms   {pb / pq:9.2f}x"
            )
        for load in (quiet, busy):
            if load.errors:
                print(f"{len(load.errors)} failed calls, e.g. {load.errors[0]}")
        left = sum(1 for _ in (server.data_dir / "blobs").glob("??/??/*"))
        print(f"blob files left on disk: {left}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
