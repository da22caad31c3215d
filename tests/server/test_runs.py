"""Runs and metrics against the real server, on SQLite and PostgreSQL: create, list and finish
runs; ingest batches idempotently; read series exact or downsampled (minima and maxima kept, at
most N points); NaN and infinities round trip as JSON-safe strings; roles; and versions that
carry their run, step and a snapshot of the run's values."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from lmvp_server.db import make_engine
from lmvp_server.models import MetricKey, MetricPoint, MetricTile, Model, Project
from lmvp_server.services.trash import purge_expired_trash
from tests.support import Api, Deployment, at_the_same_moment, server_database


@dataclass
class RunCtx:
    api: Api
    project: str
    model: str
    run: int

    @property
    def path(self) -> str:
        return f"/runs/{self.run}"

    def log(self, body: dict[str, Any]) -> dict[str, Any]:
        r = self.api.post(f"{self.path}/metrics", json=body)
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    def series(self, **params: Any) -> dict[str, dict[str, Any]]:
        r = self.api.get(f"{self.path}/metrics", params=params)
        assert r.status_code == 200, r.text
        body = _strict_json(r)
        assert body["run"] == self.run
        return {s["key"]: s for s in body["series"]}


def _strict_json(r: requests.Response) -> Any:
    """The body parsed as standard JSON: `NaN` or `Infinity` literals are refused."""

    def refuse(name: str) -> None:
        raise AssertionError(f"the server sent {name}, which is not JSON")

    return json.loads(r.text, parse_constant=refuse)


@pytest.fixture(scope="module")
def owner(deployment: Deployment) -> Api:
    return deployment.user("runner")


@pytest.fixture
def ctx(deployment: Deployment, owner: Api) -> RunCtx:
    project = deployment.project(owner)
    assert owner.post(f"/projects/{project}/models", json={"name": "m"}).status_code == 201
    r = owner.post(
        f"/projects/{project}/runs",
        json={"model": "m", "name": "baseline", "host": "gpu-1", "params": {"lr": 0.001}},
    )
    assert r.status_code == 201, r.text
    return RunCtx(owner, project, "m", r.json()["id"])


# --- runs ---------------------------------------------------------------------------------------


def test_a_run_is_created_listed_and_finished_with_events(ctx: RunCtx) -> None:
    run = ctx.api.get(ctx.path).json()
    assert run["project"] == ctx.project and run["model"] == "m"
    assert (run["name"], run["host"], run["params"], run["status"]) == (
        "baseline",
        "gpu-1",
        {"lr": 0.001},
        "running",
    )
    assert run["ended_at"] is None and run["keys"] == [] and run["last_step"] is None

    second = ctx.api.post(f"/projects/{ctx.project}/runs", json={"model": "m"}).json()
    assert second["name"] == f"run-{second['id']}"
    page = ctx.api.get(f"/projects/{ctx.project}/models/m/runs").json()
    assert [r["id"] for r in page["items"]] == [second["id"], ctx.run] and page["next"] is None
    first_page = ctx.api.get(f"/projects/{ctx.project}/models/m/runs", params={"limit": 1}).json()
    assert [r["id"] for r in first_page["items"]] == [second["id"]]
    assert first_page["next"] == second["id"]

    finished = ctx.api.patch(ctx.path, json={"status": "finished"})
    assert finished.status_code == 200, finished.text
    assert finished.json()["status"] == "finished" and finished.json()["ended_at"] is not None
    kinds = [
        (e["kind"], e["payload"].get("run"))
        for e in ctx.api.get(f"/projects/{ctx.project}/history").json()["items"]
    ]
    assert ("run.created", ctx.run) in kinds
    assert ("run.finished", ctx.run) in kinds
    # Finishing again changes nothing and records nothing new.
    ctx.api.patch(ctx.path, json={"status": "finished"})
    history = ctx.api.get(f"/projects/{ctx.project}/history").json()["items"]
    assert sum(e["kind"] == "run.finished" for e in history) == 1


def test_a_run_of_a_model_that_does_not_exist_is_refused(ctx: RunCtx) -> None:
    r = ctx.api.post(f"/projects/{ctx.project}/runs", json={"model": "nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# --- ingestion ----------------------------------------------------------------------------------


def test_points_and_series_round_trip_exactly(ctx: RunCtx) -> None:
    result = ctx.log(
        {
            "points": [
                {"key": "loss", "step": 0, "value": 2.5, "wall_time": 1700000000.25},
                {"key": "loss", "step": 1, "value": 2.25, "wall_time": 1700000001.5},
                {"key": "eval/acc", "step": 1, "value": 0.5},
            ],
            "series": [
                {
                    "key": "lr",
                    "steps": [0, 1, 2],
                    "values": [0.1, 0.05, 0.025],
                    "wall_times": [1.0, 2.0, 3.0],
                }
            ],
        }
    )
    assert result == {"received": 6, "inserted": 6}
    series = ctx.series()
    assert sorted(series) == ["eval/acc", "loss", "lr"]
    loss = series["loss"]
    assert loss["steps"] == [0, 1] and loss["values"] == [2.5, 2.25]
    assert loss["wall_times"] == [1700000000.25, 1700000001.5]
    assert loss["count"] == 2 and loss["downsampled"] is False
    assert series["lr"]["values"] == [0.1, 0.05, 0.025]
    assert series["eval/acc"]["wall_times"][0] > 1.7e9  # stamped on arrival

    assert sorted(ctx.series(keys="loss,lr")) == ["loss", "lr"]
    only = ctx.api.get(f"{ctx.path}/metrics", params=[("keys", "lr"), ("keys", "eval/acc")])
    assert sorted(s["key"] for s in only.json()["series"]) == ["eval/acc", "lr"]

    run = ctx.api.get(ctx.path).json()
    assert run["last_step"] == 2 and run["point_count"] == 6
    assert {k["key"]: (k["count"], k["last_step"], k["last_value"]) for k in run["keys"]} == {
        "eval/acc": (1, 1, 0.5),
        "loss": (2, 1, 2.25),
        "lr": (3, 2, 0.025),
    }


def test_a_resent_batch_changes_nothing(ctx: RunCtx) -> None:
    batch = {"series": [{"key": "loss", "steps": list(range(100)), "values": [1.0] * 100}]}
    assert ctx.log(batch) == {"received": 100, "inserted": 100}
    before = ctx.series()
    assert ctx.log(batch) == {"received": 100, "inserted": 0}
    # Even with other values for the same steps: the first value stored stays.
    changed = {"series": [{"key": "loss", "steps": list(range(100)), "values": [9.0] * 100}]}
    assert ctx.log(changed)["inserted"] == 0
    # Overlapping batches store only what is new.
    overlap = {"series": [{"key": "loss", "steps": list(range(90, 110)), "values": [2.0] * 20}]}
    assert ctx.log(overlap)["inserted"] == 10
    after = ctx.series()["loss"]
    assert after["steps"] == list(range(110))
    assert after["values"] == before["loss"]["values"] + [2.0] * 10


def test_points_out_of_order_and_repeated_in_a_batch_are_sorted_first_one_wins(
    ctx: RunCtx,
) -> None:
    result = ctx.log(
        {
            "points": [
                {"key": "loss", "step": 5, "value": 5.0},
                {"key": "loss", "step": 1, "value": 1.0},
                {"key": "loss", "step": 5, "value": 50.0},
                {"key": "loss", "step": 3, "value": 3.0},
            ]
        }
    )
    assert result == {"received": 4, "inserted": 3}
    loss = ctx.series()["loss"]
    assert (loss["steps"], loss["values"]) == ([1, 3, 5], [1.0, 3.0, 5.0])


def test_nan_and_infinities_are_stored_and_returned_as_json_safe_strings(ctx: RunCtx) -> None:
    ctx.log(
        {
            "series": [
                {
                    "key": "loss",
                    "steps": [0, 1, 2, 3],
                    "values": [1.0, "NaN", "Infinity", "-Infinity"],
                }
            ]
        }
    )
    # Python's json module writes bare NaN / Infinity; the server takes those too.
    body = json.dumps({"points": [{"key": "loss", "step": 4, "value": float("nan")}]})
    r = ctx.api.post(f"{ctx.path}/metrics", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["inserted"] == 1, r.text
    loss = ctx.series()["loss"]
    assert loss["values"] == [1.0, "NaN", "Infinity", "-Infinity", "NaN"]
    keys = ctx.api.get(ctx.path).json()["keys"]
    assert keys[0]["last_value"] == "NaN"
    # Downsampled reads and tiles cope with them too.
    ctx.log(
        {
            "series": [
                {
                    "key": "loss",
                    "steps": list(range(5, 5000)),
                    "values": [float(i % 7) for i in range(5, 5000)],
                }
            ]
        }
    )
    down = ctx.series(max_points=40)["loss"]
    assert down["downsampled"] and len(down["steps"]) <= 40
    assert "Infinity" in down["values"] and "-Infinity" in down["values"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"points": [{"key": "loss", "step": -1, "value": 1.0}]}, 422),
        ({"points": [{"key": "", "step": 1, "value": 1.0}]}, 422),
        ({"points": [{"key": "loss", "step": 1, "value": "lots"}]}, 422),
        ({"points": [{"key": "loss", "step": 1.5, "value": 1.0}]}, 422),
        ({"points": [{"key": "a\u0000b", "step": 1, "value": 1.0}]}, 422),
        ({"series": [{"key": "loss", "steps": [1, 2], "values": [1.0]}]}, 422),
        ({"series": [{"key": "loss", "steps": [1], "values": [1.0], "wall_times": ["NaN"]}]}, 422),
        ({"series": [{"key": "loss", "steps": [2**63], "values": [1.0]}]}, 422),
        ({"rows": []}, 422),
    ],
)
def test_a_bad_batch_is_refused_whole(ctx: RunCtx, body: dict[str, Any], status: int) -> None:
    good = {"key": "loss", "step": 7, "value": 1.0}
    body = {**body, "points": [*body.get("points", []), good]}
    r = ctx.api.post(f"{ctx.path}/metrics", json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}
    assert ctx.series() == {}


def test_batches_sent_at_the_same_moment_are_stored_once_each(ctx: RunCtx) -> None:
    # Overlapping step ranges from eight senders: every point once, and the summaries the
    # downsampling reads (whose counts add up to `count`) saw each point exactly once.
    def send(i: int) -> int:
        api = Api(ctx.api.url, ctx.api.token)
        steps = list(range(i * 3000, i * 3000 + 6000))
        body = {"series": [{"key": "loss", "steps": steps, "values": [float(s) for s in steps]}]}
        r = api.post(f"{ctx.path}/metrics", json=body)
        assert r.status_code == 200, r.text
        return int(r.json()["inserted"])

    inserted = at_the_same_moment(8, send)
    assert sum(inserted) == 27_000, inserted
    loss = ctx.series(max_points=100)["loss"]
    assert loss["count"] == 27_000 and loss["downsampled"]
    assert (loss["values"][0], loss["values"][-1]) == (0.0, 26_999.0)
    assert ctx.series()["loss"]["steps"] == list(range(27_000))


def test_too_many_points_in_one_request_is_refused(ctx: RunCtx) -> None:
    n = 200_001
    body = {"series": [{"key": "x", "steps": list(range(n)), "values": [0] * n}]}
    r = ctx.api.post(f"{ctx.path}/metrics", json=body)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_points"


# --- downsampling -------------------------------------------------------------------------------


def _noisy(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    values = [math.sin(i / 500) + rng.random() * 0.1 for i in range(n)]
    values[12_345] = -50.0  # one sharp dip and one spike, far from the smooth extremes
    values[31_337] = 80.0
    return values


def test_downsampling_keeps_the_global_min_and_max_and_at_most_n_points(ctx: RunCtx) -> None:
    n = 60_000
    values = _noisy(n, 1)
    # Sent in batches, the last one first, as a retried upload might.
    for start in (40_000, 0, 20_000):
        chunk = list(range(start, start + 20_000))
        ctx.log({"series": [{"key": "loss", "steps": chunk, "values": [values[i] for i in chunk]}]})

    for max_points in (4, 10, 100, 2000):
        loss = ctx.series(max_points=max_points)["loss"]
        assert loss["downsampled"] and loss["count"] == n
        assert len(loss["steps"]) <= max_points
        assert loss["steps"] == sorted(set(loss["steps"]))
        assert -50.0 in loss["values"] and 80.0 in loss["values"]
        assert loss["steps"][0] == 0 and loss["steps"][-1] == n - 1
        for step, value in zip(loss["steps"], loss["values"], strict=True):
            assert values[step] == value  # real points, never averages

    window = ctx.series(max_points=100, step_min=10_000, step_max=20_000)["loss"]
    assert window["count"] == 10_001 and len(window["steps"]) <= 100
    assert window["steps"][0] == 10_000 and window["steps"][-1] == 20_000
    assert -50.0 in window["values"]
    inside = [values[i] for i in range(10_000, 20_001) if i != 12_345]
    assert max(inside) in window["values"]

    few = ctx.series(max_points=2000, step_min=100, step_max=1099)["loss"]
    assert few["downsampled"] is False and few["steps"] == list(range(100, 1100))


def test_downsampling_stays_true_to_batches_sent_in_any_order(ctx: RunCtx) -> None:
    """Random batches (appends, stragglers, re-sends, sparse jumps, NaN and infinities), then
    random windows read at random sizes, checked against the points themselves."""
    rng = random.Random(11)
    truth: dict[int, Any] = {}
    step = 0

    def value() -> Any:
        roll = rng.random()
        if roll < 0.02:
            return rng.choice(["NaN", "Infinity", "-Infinity"])
        return round(rng.gauss(0, 1), 2)  # ties are likely

    for _ in range(25):
        kind = rng.random()
        if kind < 0.5:
            steps = list(range(step, step + rng.randint(1, 3000)))
            step = steps[-1] + 1
        elif kind < 0.7:
            steps = [rng.randint(0, step + 10) for _ in range(rng.randint(1, 300))]
        elif kind < 0.8:
            step += rng.randint(1000, 100_000)
            steps = [step]
            step += 1
        else:
            steps = list(range(max(0, step - 1000), step))
        values = [value() for _ in steps]
        ctx.log({"series": [{"key": "loss", "steps": steps, "values": values}]})
        for s, v in zip(steps, values, strict=True):
            truth.setdefault(s, v)

    def number(v: Any) -> float:
        return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(v, v)

    last = max(truth)
    for _ in range(30):
        lo, hi = sorted(rng.sample(range(last + 1), 2))
        max_points = rng.choice([4, 9, 100, 1000])
        loss = ctx.series(max_points=max_points, step_min=lo, step_max=hi).get("loss")
        inside = {s: v for s, v in truth.items() if lo <= s <= hi}
        if not inside:
            assert loss is None or loss["count"] == 0
            continue
        assert loss is not None and loss["count"] == len(inside)
        assert len(loss["steps"]) <= max_points
        assert all(inside[s] == v for s, v in zip(loss["steps"], loss["values"], strict=True))
        if len(inside) <= max_points:
            assert loss["steps"] == sorted(inside)
            continue
        assert (loss["steps"][0], loss["steps"][-1]) == (min(inside), max(inside))
        numbers = [number(v) for v in inside.values() if v != "NaN"]
        if numbers:
            shown = [number(v) for v in loss["values"] if v != "NaN"]
            assert min(numbers) in shown and max(numbers) in shown


def test_reading_metrics_validates_its_parameters(ctx: RunCtx) -> None:
    for params in ({"max_points": 3}, {"max_points": 100_001}, {"step_min": -1}):
        r = ctx.api.get(f"{ctx.path}/metrics", params=params)
        assert r.status_code == 422, (params, r.text)
    assert ctx.series(keys="nothing") == {}
    assert ctx.series(step_min=10, step_max=5) == {}


# --- roles --------------------------------------------------------------------------------------


def test_viewers_read_runs_contributors_log_and_others_get_404(
    deployment: Deployment, ctx: RunCtx
) -> None:
    ctx.log({"points": [{"key": "loss", "step": 1, "value": 0.5}]})
    viewer, contributor, stranger = (deployment.user(p) for p in ("viewer", "contrib", "stranger"))
    deployment.add_member(ctx.project, viewer, "viewer")
    deployment.add_member(ctx.project, contributor, "contributor")
    point = {"points": [{"key": "loss", "step": 2, "value": 0.4}]}

    assert viewer.get(ctx.path).status_code == 200
    assert viewer.get(f"{ctx.path}/metrics").json()["series"][0]["steps"] == [1]
    assert viewer.get(f"/projects/{ctx.project}/models/m/runs").status_code == 200
    assert viewer.post(f"{ctx.path}/metrics", json=point).status_code == 403
    assert viewer.patch(ctx.path, json={"status": "failed"}).status_code == 403
    r = viewer.post(f"/projects/{ctx.project}/runs", json={"model": "m"})
    assert r.status_code == 403

    assert contributor.post(f"{ctx.path}/metrics", json=point).json()["inserted"] == 1
    assert contributor.post(f"/projects/{ctx.project}/runs", json={"model": "m"}).status_code == 201

    for method, path, body in [
        ("GET", ctx.path, None),
        ("GET", f"{ctx.path}/metrics", None),
        ("POST", f"{ctx.path}/metrics", point),
        ("PATCH", ctx.path, {"status": "failed"}),
        ("GET", f"/projects/{ctx.project}/models/m/runs", None),
        ("GET", "/runs/999999", None),
    ]:
        r = stranger(method, path, json=body)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "not_found"

    read_only = ctx.api.post("/tokens", json={"scope": "read"}).json()["token"]
    reader = Api(deployment.url, read_only)
    assert reader.get(f"{ctx.path}/metrics").status_code == 200
    assert reader.post(f"{ctx.path}/metrics", json=point).status_code == 403
    assert ctx.series()["loss"]["steps"] == [1, 2]


# --- versions -----------------------------------------------------------------------------------


def test_a_version_carries_its_run_step_and_a_snapshot_of_the_runs_values(
    deployment: Deployment, ctx: RunCtx
) -> None:
    ctx.log(
        {
            "series": [
                {"key": "loss", "steps": [0, 100, 200, 300], "values": [4.0, 3.0, 2.0, 1.0]},
                {"key": "eval/acc", "steps": [100, 300], "values": [0.5, "NaN"]},
                {"key": "late", "steps": [250], "values": [7.0]},
            ]
        }
    )
    r = deployment.commit(ctx.api, ctx.project, "m", {"w.bin": b"at 200"}, run=ctx.run, step=200)
    assert r.status_code == 201, r.text
    version = r.json()
    assert (version["run"], version["step"]) == (ctx.run, 200)
    assert version["metrics"] == {"loss": 2.0, "eval/acc": 0.5}

    end = deployment.commit(ctx.api, ctx.project, "m", {"w.bin": b"end"}, run=ctx.run, step=300)
    assert end.json()["metrics"] == {"loss": 1.0, "eval/acc": "NaN", "late": 7.0}

    # Metrics the client gives win over the snapshot.
    own = deployment.commit(
        ctx.api, ctx.project, "m", {"w.bin": b"own"}, run=ctx.run, step=300, metrics={"x": 1}
    )
    assert own.json()["metrics"] == {"x": 1}

    listed = ctx.api.get(f"/projects/{ctx.project}/models/m/versions").json()["items"]
    assert [(v["number"], v["run"], v["step"]) for v in listed] == [
        (3, ctx.run, 300),
        (2, ctx.run, 300),
        (1, ctx.run, 200),
    ]
    assert ctx.api.get(f"/projects/{ctx.project}/models/m/versions/1").json()["run"] == ctx.run
    run = ctx.api.get(ctx.path).json()
    assert run["versions"] == [
        {"number": 1, "step": 200},
        {"number": 2, "step": 300},
        {"number": 3, "step": 300},
    ]


def test_a_version_cannot_name_a_run_of_another_model(deployment: Deployment, ctx: RunCtx) -> None:
    assert (
        ctx.api.post(f"/projects/{ctx.project}/models", json={"name": "other"}).status_code == 201
    )
    r = deployment.commit(ctx.api, ctx.project, "other", {"w.bin": b"x"}, run=ctx.run, step=1)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_run"
    r = deployment.commit(ctx.api, ctx.project, "other", {"w.bin": b"x"}, run=999_999)
    assert r.status_code == 422


def test_deleting_the_model_deletes_its_runs_and_points(
    deployment: Deployment, ctx: RunCtx
) -> None:
    ctx.log({"series": [{"key": "loss", "steps": list(range(1000)), "values": [1.0] * 1000}]})
    with server_database(deployment.server) as db:
        key_id = db.scalar(select(MetricKey.id).where(MetricKey.run_id == ctx.run))
    assert ctx.api.delete(f"/projects/{ctx.project}/models/m").status_code == 204
    assert ctx.api.get(ctx.path).status_code == 404
    assert ctx.api.get(f"{ctx.path}/metrics").status_code == 404
    # In the trash, the points wait for a restore; the purge removes them.
    with server_database(deployment.server) as db:
        db.execute(
            update(Model)
            .where(
                Model.deleted_name == "m",
                Model.project_id
                == select(Project.id).where(Project.name == ctx.project).scalar_subquery(),
            )
            .values(deleted_at=datetime.now(UTC) - timedelta(days=30))
        )
    engine = make_engine(deployment.server.database_url)
    with Session(engine) as session:
        assert purge_expired_trash(session, 7).models == 1
    engine.dispose()
    with server_database(deployment.server) as db:
        for table in (MetricPoint, MetricTile):
            left = db.scalar(select(func.count()).select_from(table).where(table.key_id == key_id))
            assert left == 0, table


def test_the_openapi_document_describes_the_metrics_batch(deployment: Deployment) -> None:
    doc = requests.get(f"{deployment.url}/api/v1/openapi.json", timeout=30).json()
    body = doc["paths"]["/api/v1/runs/{run_id}/metrics"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"points", "series"}
    assert "$ref" not in json.dumps(schema)
