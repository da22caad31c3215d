"""Retention policies: on a model of 200 versions with metrics, a policy keeps exactly the versions
each rule names (latest N, best K by a metric min and max, the first of every S steps and of
every H hours, everything younger than T, every aliased version) and nothing else; the preview
is what applying then does, bytes freed included; a policy applies by itself after a commit and
never removes an aliased version; who may set and see a policy."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from lmvp_server.models import Model, Project, Version
from tests.support import Api, Deployment, server_database

COUNT = 200
STEP = 500
HOUR = timedelta(hours=1)


@dataclass
class Built:
    """A model whose version n has step n*500, was made n hours after `start`, carries
    `val_loss` (absent on every 10th) and `accuracy`, and one file of its own of `sizes[n]`
    bytes beside a file all versions share."""

    api: Api
    project: str
    model: str
    start: datetime
    val_loss: dict[int, float]
    accuracy: dict[int, float]
    sizes: dict[int, int]

    @property
    def path(self) -> str:
        return f"/projects/{self.project}/models/{self.model}"

    def numbers(self) -> list[int]:
        items = self.api.get(f"{self.path}/versions", params={"limit": 1000}).json()["items"]
        return [v["number"] for v in items]


def _val_loss(n: int) -> float:
    return round(1.0 + math.sin(n * 1.7) * 0.5 + (n % 13) * 0.01, 6)


def _accuracy(n: int) -> float:
    return round(0.5 + math.cos(n * 0.9) * 0.3 + (n % 7) * 0.001, 6)


def _build(deployment: Deployment, api: Api, count: int = COUNT) -> Built:
    project = deployment.project(api)
    shared = deployment.upload(api, project, b'{"layers": 50}', filename="config.json")
    assert api.post(f"/projects/{project}/models", json={"name": "resnet"}).status_code == 201
    val_loss: dict[int, float] = {}
    accuracy: dict[int, float] = {}
    sizes: dict[int, int] = {}
    for n in range(1, count + 1):
        own = os.urandom(100 + n)
        sha = deployment.upload(api, project, own, filename="weights.bin")
        metrics: dict[str, Any] = {"accuracy": _accuracy(n)}
        if n % 10:
            metrics["val_loss"] = _val_loss(n)
            val_loss[n] = metrics["val_loss"]
        accuracy[n] = metrics["accuracy"]
        sizes[n] = len(own)
        files = [
            {"path": "config.json", "size": 14, "sha256": shared},
            {"path": "weights.bin", "size": len(own), "sha256": sha},
        ]
        r = api.post(
            f"/projects/{project}/models/resnet/versions",
            json={"files": files, "metrics": metrics, "step": n * STEP},
        )
        assert r.status_code == 201, r.text
        assert r.json()["number"] == n
    # Version n made n hours after the start, the last one an hour ago.
    start = datetime.now(UTC) - (count + 1) * HOUR
    with server_database(deployment.server) as db:
        model_id = db.scalar(
            select(Model.id)
            .join(Project, Project.id == Model.project_id)
            .where(Project.name == project, Model.name == "resnet")
        )
        for n in range(1, count + 1):
            db.execute(
                update(Version)
                .where(Version.model_id == model_id, Version.number == n)
                .values(created_at=start + n * HOUR)
            )
    return Built(api, project, "resnet", start, val_loss, accuracy, sizes)


@pytest.fixture(scope="module")
def owner(deployment: Deployment) -> Api:
    return deployment.user("keeper")


SMALL = 12


@pytest.fixture
def built(deployment: Deployment, owner: Api) -> Built:
    """A model of 12 versions built the same way, for the tests that need no 200."""
    return _build(deployment, owner, SMALL)


def _best(values: dict[int, float], count: int, mode: str) -> set[int]:
    sign = 1 if mode == "min" else -1
    return {n for n, _ in sorted(values.items(), key=lambda nv: (sign * nv[1], -nv[0]))[:count]}


POLICY: dict[str, Any] = {
    "keep_latest": 5,
    "keep_best": [
        {"count": 3, "metric": "val_loss", "mode": "min"},
        {"count": 2, "metric": "accuracy", "mode": "max"},
    ],
    "keep_every_steps": 25_000,
    "keep_every_hours": 48,
    "keep_within_hours": 20.5,
}


def _expected(b: Built) -> dict[str, set[int]]:
    """What each rule of POLICY keeps, worked out here from how the model was built."""
    numbers = range(1, COUNT + 1)
    # The first version of every stretch of 25,000 steps: steps 500..99,500 and 100,000.
    every_steps = {min(n for n in numbers if n * STEP // 25_000 == k) for k in range(0, 5)}
    bucket = 48 * 3600

    def hour_bucket(n: int) -> int:
        return math.floor((b.start + n * HOUR).timestamp() / bucket)

    buckets = {hour_bucket(n) for n in numbers}
    every_hours = {min(n for n in numbers if hour_bucket(n) == k) for k in buckets}
    return {
        "alias:production": {17},
        "alias:candidate": {42},
        "latest:5": set(range(196, 201)),
        "best:3:val_loss:min": _best(b.val_loss, 3, "min"),
        "best:2:accuracy:max": _best(b.accuracy, 2, "max"),
        "every-steps:25000": every_steps,
        "every-hours:48": every_hours,
        # Made 200 - n + 1 hours ago: younger than 20.5 hours from version 181 on.
        "within-hours:20.5": set(range(181, 201)),
    }


def test_a_policy_keeps_exactly_the_versions_each_rule_names_and_apply_does_what_preview_said(
    deployment: Deployment, owner: Api
) -> None:
    b = _build(deployment, owner)
    for alias, number in (("production", 17), ("candidate", 42)):
        assert owner.put(f"{b.path}/aliases/{alias}", json={"version": number}).status_code == 200
    r = owner.put(f"{b.path}/retention", json=POLICY)
    assert r.status_code == 200, r.text
    assert r.json()["source"] == "model" and r.json()["effective"]["keep_latest"] == 5
    # Setting a policy removes nothing yet.
    assert len(b.numbers()) == COUNT

    preview = owner.get(f"{b.path}/retention/preview").json()
    expected = _expected(b)
    kept = {k["number"]: set(k["rules"]) for k in preview["keep"]}
    for rule, numbers in expected.items():
        named = {n for n, rules in kept.items() if rule in rules}
        assert named == numbers, rule
    assert set().union(*expected.values()) == set(kept)
    assert all(kept.values())
    removed = [v["number"] for v in preview["remove"]]
    assert sorted(removed, reverse=True) == removed
    assert set(removed) == set(range(1, COUNT + 1)) - set(kept)
    # Bytes freed: each removed version's own file; the shared one stays with the kept ones.
    assert preview["bytes_freed"] == sum(b.sizes[n] for n in removed)
    assert preview["applied"] is False

    applied = owner.post(f"{b.path}/retention/apply").json()
    assert applied["applied"] is True
    assert applied["remove"] == preview["remove"] and applied["keep"] == preview["keep"]
    assert applied["bytes_freed"] == preview["bytes_freed"]
    assert b.numbers() == sorted(kept, reverse=True)
    # Applying again removes nothing more.
    assert owner.post(f"{b.path}/retention/apply").json()["remove"] == []

    # The removed versions are in the trash, each with an event naming the policy.
    trash = owner.get("/trash", params={"project": b.project}).json()
    assert {t["version"] for t in trash} == set(removed)
    assert {t["reason"] for t in trash} == {"retention policy of model"}
    events = owner.get(
        f"/projects/{b.project}/history", params={"limit": 1000, "model": "resnet"}
    ).json()["items"]
    deleted = [e for e in events if e["kind"] == "version.deleted"]
    assert sorted(e["version"] for e in deleted) == sorted(removed)
    assert all(e["payload"]["policy"]["keep_latest"] == 5 for e in deleted)
    assert any(e["kind"] == "retention.applied" for e in events)


def test_a_policy_to_try_is_previewed_without_being_set(built: Built) -> None:
    r = built.api.post(f"{built.path}/retention/preview", json={"keep_latest": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [k["number"] for k in body["keep"]] == [12, 11, 10, 9, 8]
    assert len(body["remove"]) == 7 and body["source"] is None
    assert built.api.get(f"{built.path}/retention").json()["policy"] is None
    assert len(built.numbers()) == SMALL


def test_the_project_default_applies_to_models_without_their_own(
    deployment: Deployment, built: Built
) -> None:
    project_path = f"/projects/{built.project}/retention"
    assert built.api.put(project_path, json={"keep_latest": 2}).json()["source"] == "project"
    shown = built.api.get(f"{built.path}/retention").json()
    assert shown["policy"] is None and shown["source"] == "project"
    assert shown["effective"]["keep_latest"] == 2
    body = built.api.post(f"{built.path}/retention/preview").json()
    assert [k["number"] for k in body["keep"]] == [12, 11]
    assert built.api.delete(project_path).json()["policy"] is None
    body = built.api.post(f"{built.path}/retention/preview").json()
    assert body["policy"] is None and body["remove"] == [] and len(body["keep"]) == SMALL


def test_a_policy_applies_after_a_commit_and_never_removes_an_aliased_version(
    deployment: Deployment, owner: Api
) -> None:
    project = deployment.project(owner)
    path = f"/projects/{project}/models/m"

    def commit(i: int) -> int:
        r = deployment.commit(owner, project, "m", {"w.bin": os.urandom(64)}, metrics={"i": i})
        assert r.status_code == 201, r.text
        return int(r.json()["number"])

    for i in range(1, 5):
        commit(i)
    assert owner.put(f"{path}/aliases/production", json={"version": 1}).status_code == 200
    assert owner.put(f"{path}/retention", json={"keep_latest": 2}).status_code == 200
    commit(5)

    def listed() -> list[int]:
        return [v["number"] for v in owner.get(f"{path}/versions").json()["items"]]

    deadline = time.monotonic() + 20
    while listed() != [5, 4, 1] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert listed() == [5, 4, 1]
    assert owner.get(f"{path}/versions/production").json()["number"] == 1
    trash = owner.get("/trash", params={"project": project}).json()
    assert sorted(t["version"] for t in trash) == [2, 3]
    # The version in the trash says so, and how to get it back.
    error = owner.get(f"{path}/versions/2").json()["error"]
    assert error["code"] == "in_trash" and f"lmvp trash restore {project}/m:2" in error["message"]


def test_a_policy_needs_a_rule(built: Built) -> None:
    r = built.api.put(f"{built.path}/retention", json={})
    assert r.status_code == 422
    assert "at least one rule" in r.json()["error"]["message"]
    for bad in (
        {"keep_latest": 0},
        {"keep_best": [{"count": 3, "metric": "val_loss", "mode": "lowest"}]},
        {"keep_every_steps": -5},
        {"keep_latest": 3, "keep_forever": True},
        {"keep_every_hours": 1.1125369292536007e-308},  # found by the fuzzer: a 500 before
    ):
        assert built.api.put(f"{built.path}/retention", json=bad).status_code == 422, bad
        assert built.api.post(f"{built.path}/retention/preview", json=bad).status_code == 422
    tiny = {"keep_every_hours": 0.01, "keep_within_hours": 9261073.039030716}
    assert built.api.post(f"{built.path}/retention/preview", json=tiny).status_code == 200


def test_maintainers_set_policies_and_everybody_who_reads_sees_them(
    deployment: Deployment, built: Built
) -> None:
    contributor, viewer = deployment.user("contrib"), deployment.user("viewer")
    deployment.add_member(built.project, contributor, "contributor")
    deployment.add_member(built.project, viewer, "viewer")
    outsider = deployment.user("outsider")
    policy = {"keep_latest": 3}
    for api in (contributor, viewer):
        for method, path in (
            ("PUT", f"{built.path}/retention"),
            ("PUT", f"/projects/{built.project}/retention"),
            ("DELETE", f"{built.path}/retention"),
            ("DELETE", f"/projects/{built.project}/retention"),
            ("POST", f"{built.path}/retention/apply"),
        ):
            r = api(method, path, json=policy if method == "PUT" else None)
            assert r.status_code == 403, (method, path, r.text)
            assert "maintainer" in r.json()["error"]["message"]
    assert built.api.put(f"{built.path}/retention", json=policy).status_code == 200
    try:
        for api in (contributor, viewer):
            assert api.get(f"{built.path}/retention").json()["policy"]["keep_latest"] == 3
            assert api.get(f"/projects/{built.project}/retention").status_code == 200
            preview = api.get(f"{built.path}/retention/preview")
            assert preview.status_code == 200 and len(preview.json()["keep"]) >= 3
            assert api.post(f"{built.path}/retention/preview").json() == preview.json()
        # A read-only token sees the policy and its preview too.
        token = viewer.post("/tokens", json={"scope": "read"}).json()["token"]
        reader = Api(deployment.url, token)
        assert reader.get(f"{built.path}/retention").json()["policy"]["keep_latest"] == 3
        assert reader.get(f"{built.path}/retention/preview").status_code == 200
        assert reader.put(f"{built.path}/retention", json=policy).status_code == 403
        assert outsider.get(f"{built.path}/retention").status_code == 404
        assert outsider.get(f"{built.path}/retention/preview").status_code == 404
        assert len(built.numbers()) == SMALL
    finally:
        assert built.api.delete(f"{built.path}/retention").status_code == 200


def test_the_cli_sets_shows_and_previews_a_policy(
    deployment: Deployment, built: Built, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmvp.cli import main

    monkeypatch.setenv("LMVP_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("LMVP_SERVER", deployment.url)
    assert built.api.token is not None
    monkeypatch.setenv("LMVP_TOKEN", built.api.token)
    ref = f"{built.project}/{built.model}"
    try:
        assert (
            main(
                [
                    "retention",
                    "set",
                    ref,
                    "--keep-latest",
                    "3",
                    "--keep-best",
                    "3:val_loss:min",
                    "--keep-every-steps",
                    "25000",
                ]
            )
            == 0
        )
        shown = built.api.get(f"{built.path}/retention").json()["policy"]
        assert shown["keep_latest"] == 3 and shown["keep_every_steps"] == 25_000
        assert shown["keep_best"] == [{"count": 3, "metric": "val_loss", "mode": "min"}]
        assert main(["retention", "show", ref]) == 0
        assert main(["--json", "retention", "preview", ref]) == 0
        assert main(["retention", "set", ref, "--keep-best", "3:val_loss:lowest"]) == 2
        assert main(["retention", "set", ref]) == 2
    finally:
        assert built.api.delete(f"{built.path}/retention").status_code == 200
    assert len(built.numbers()) == SMALL
