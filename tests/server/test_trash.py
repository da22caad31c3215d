"""The trash: a deleted version, model or project is hidden (404 `in_trash` saying how to restore
it), listed, and restored whole (files downloadable and verified, aliases back, lineage intact)
until the trash period ends; then it is purged (its rows gone, its children unlinked, the
restore refused). Who may delete, list and restore."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import lmvp
from tests.support import Api, Deployment, ServerProcess

# The trash period of the server of the purge test: two seconds.
SHORT_TRASH_DAYS = 2 / 86400


def _client(deployment_url: str, api: Api, tmp_path: Path) -> lmvp.Client:
    return lmvp.Client(deployment_url, api.token, cache_dir=tmp_path / "cache")


def _folder(root: Path, seed: int) -> dict[str, bytes]:
    """A checkpoint folder of three files, written under `root`; returns path → bytes."""
    files = {
        "model.safetensors": os.urandom(300_000 + seed),
        "config.json": b'{"seed": %d}' % seed,
        "tokenizer/vocab.txt": os.urandom(5_000),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _error(r: Any, code: str) -> dict[str, Any]:
    assert r.status_code == 404, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == code, error
    return error


def test_a_trashed_version_restores_with_every_file_downloadable_and_verified(
    deployment: Deployment, tmp_path: Path
) -> None:
    owner = deployment.user("trash")
    project = deployment.project(owner)
    ref = f"{project}/resnet"
    path = f"/projects/{project}/models/resnet"
    files = _folder(tmp_path / "ckpt", 1)
    with _client(deployment.url, owner, tmp_path) as client:
        first = client.update(ref, tmp_path / "ckpt", message="first", aliases=["production"])
        second = client.update(ref, tmp_path / "ckpt", message="second", parent=first)
        client.delete_version(ref, first)

        error = _error(owner.get(f"{path}/versions/1"), "in_trash")
        assert f"`lmvp trash restore {ref}:1`" in error["message"]
        assert _error(owner.get(f"{path}/versions/production"), "not_found")
        assert [v.number for v in client.versions(ref)] == [2]
        assert client.version(ref).number == 2
        assert client.aliases(ref) == []
        # Its child still names it: the lineage comes back with it.
        assert client.version(f"{ref}:2").parent == 1
        with pytest.raises(lmvp.NotFound, match="in the trash"):
            client.download(f"{ref}:1")

        (item,) = client.trash(project)
        assert (item.kind, item.ref, item.version) == ("version", f"{ref}:1", 1)
        assert item.deleted_by == owner.username  # type: ignore[attr-defined]
        assert item.reason == "by hand"
        assert item.size == first.size
        assert 6.9 < (item.purge_at - item.deleted_at).total_seconds() / 86400 < 7.1
        assert [i.ref for i in client.trash()] == [f"{ref}:1"]

        restored = client.restore(f"{ref}:1")
        assert isinstance(restored, lmvp.Version)
        assert (restored.number, restored.message, restored.aliases) == (
            1,
            "first",
            ("production",),
        )
        assert client.trash(project) == []
        assert [v.number for v in client.versions(ref)] == [2, 1]
        # Every file, by number and by the alias it had, downloaded and verified afresh.
        for which in (f"{ref}:1", f"{ref}@production"):
            folder = client.download(which, force=True)
            got = {
                p.relative_to(folder).as_posix(): p.read_bytes()
                for p in folder.rglob("*")
                if p.is_file()
            }
            assert got == files
            for f in restored.files:
                assert hashlib.sha256(got[f.path]).hexdigest() == f.sha256
        assert second.number == 2
    history = owner.get(f"/projects/{project}/history").json()["items"]
    kinds = [e["kind"] for e in history]
    assert kinds.index("version.restored") < kinds.index("version.deleted")
    deleted = next(e for e in history if e["kind"] == "version.deleted")
    assert deleted["payload"]["aliases"] == ["production"] and deleted["payload"]["trash"]


def test_a_restore_leaves_an_alias_that_moved_meanwhile(deployment: Deployment) -> None:
    owner = deployment.user("alias")
    project = deployment.project(owner)
    path = f"/projects/{project}/models/m"
    for data in (b"a", b"b"):
        assert deployment.commit(owner, project, "m", {"w.bin": data}).status_code == 201
    assert owner.put(f"{path}/aliases/best", json={"version": 1}).status_code == 200
    assert owner.delete(f"{path}/versions/1").status_code == 204
    assert owner.put(f"{path}/aliases/best", json={"version": 2}).status_code == 200
    r = owner.post(f"{path}/versions/1/restore")
    assert r.status_code == 200 and r.json()["aliases"] == []
    assert owner.get(f"{path}/versions/best").json()["number"] == 2
    # Not in the trash (any more), or never there: 404 saying so.
    r = owner.post(f"{path}/versions/1/restore")
    assert r.status_code == 404 and "not in the trash" in r.json()["error"]["message"]
    assert owner.post(f"{path}/versions/9/restore").status_code == 404


def test_a_deleted_model_goes_to_the_trash_with_everything_in_it_and_comes_back(
    deployment: Deployment,
) -> None:
    owner = deployment.user("model")
    project = deployment.project(owner)
    path = f"/projects/{project}/models/m"
    for data in (b"1", b"2", b"3"):
        assert deployment.commit(owner, project, "m", {"w.bin": data}).status_code == 201
    assert owner.delete(f"{path}/versions/2").status_code == 204
    assert owner.put(f"{path}/aliases/production", json={"version": 3}).status_code == 200
    run = owner.post(f"/projects/{project}/runs", json={"model": "m"}).json()["id"]

    assert owner.delete(path).status_code == 204
    error = _error(owner.get(path), "in_trash")
    assert f"lmvp trash restore {project}/m`" in error["message"]
    _error(owner.get(f"{path}/versions/latest"), "in_trash")
    _error(owner.get(f"/runs/{run}"), "in_trash")
    assert owner.get(f"/projects/{project}/models").json() == []
    trash = owner.get("/trash", params={"project": project}).json()
    assert [(t["kind"], t["ref"]) for t in trash] == [("model", f"{project}/m")]

    r = owner.post(f"{path}/restore")
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "m" and r.json()["latest_version"] == 3
    numbers = [v["number"] for v in owner.get(f"{path}/versions").json()["items"]]
    # Version 2, in the trash on its own before, stays there.
    assert numbers == [3, 1]
    assert owner.get(f"{path}/versions/production").json()["number"] == 3
    assert owner.get(f"/runs/{run}").status_code == 200
    assert [t["ref"] for t in owner.get("/trash", params={"project": project}).json()] == [
        f"{project}/m:2"
    ]


def test_a_model_in_the_trash_gives_up_its_name(deployment: Deployment) -> None:
    owner = deployment.user("name")
    project = deployment.project(owner)
    path = f"/projects/{project}/models/m"
    assert deployment.commit(owner, project, "m", {"w.bin": b"old"}).status_code == 201
    assert owner.delete(path).status_code == 204
    r = deployment.commit(owner, project, "m", {"w.bin": b"new"}, message="fresh start")
    assert r.status_code == 201 and r.json()["number"] == 1
    r = owner.post(f"{path}/restore")
    assert r.status_code == 409 and "delete or rename the new one" in r.json()["error"]["message"]
    assert owner.get(f"{path}/versions/latest").json()["message"] == "fresh start"


def test_a_deleted_project_goes_to_the_trash_and_only_its_owners_restore_it(
    deployment: Deployment,
) -> None:
    owner, maintainer = deployment.user("powner"), deployment.user("pmaint")
    outsider = deployment.user("poutsider")
    project = deployment.project(owner)
    deployment.add_member(project, maintainer, "maintainer")
    assert deployment.commit(owner, project, "m", {"w.bin": b"p"}).status_code == 201

    assert maintainer.delete(f"/projects/{project}").status_code == 403
    assert owner.delete(f"/projects/{project}").status_code == 204
    _error(maintainer.get(f"/projects/{project}"), "in_trash")
    _error(maintainer.get(f"/projects/{project}/models/m/versions/1"), "in_trash")
    # Nobody outside learns that it was there.
    _error(outsider.get(f"/projects/{project}"), "not_found")
    assert project not in [p["name"] for p in owner.get("/projects").json()]
    for api in (owner, maintainer):
        assert [(t["kind"], t["ref"]) for t in api.get("/trash").json()] == [("project", project)]
    assert outsider.get("/trash").json() == []
    assert outsider.get("/trash", params={"project": project}).status_code == 404

    assert maintainer.post(f"/projects/{project}/restore").status_code == 403
    r = owner.post(f"/projects/{project}/restore")
    assert r.status_code == 200 and r.json()["name"] == project
    assert maintainer.get(f"/projects/{project}/models/m/versions/1").status_code == 200
    assert owner.get("/trash").json() == []


def test_a_project_in_the_trash_gives_up_its_name_and_says_so_in_the_api_document(
    deployment: Deployment,
) -> None:
    owner = deployment.user("pname")
    project = deployment.project(owner)
    assert deployment.commit(owner, project, "m", {"w.bin": b"old"}).status_code == 201
    assert owner.delete(f"/projects/{project}").status_code == 204
    assert owner.post("/projects", json={"name": project}).status_code == 201
    r = owner.post(f"/projects/{project}/restore")
    assert r.status_code == 409 and "delete the new one first" in r.json()["error"]["message"]
    assert owner.get(f"/projects/{project}/models").json() == []
    # Clients generated from the OpenAPI document must expect that refusal (the fuzzer found
    # it undocumented once), for a model's restore as for a project's.
    paths = owner.get("/openapi.json").json()["paths"]
    for path in (
        "/api/v1/projects/{project}/restore",
        "/api/v1/projects/{project}/models/{model}/restore",
    ):
        assert "409" in paths[path]["post"]["responses"], path


def test_contributors_can_neither_delete_nor_restore_and_viewers_see_the_trash(
    deployment: Deployment,
) -> None:
    owner, contributor = deployment.user("rowner"), deployment.user("rcontrib")
    viewer = deployment.user("rviewer")
    project = deployment.project(owner)
    deployment.add_member(project, contributor, "contributor")
    deployment.add_member(project, viewer, "viewer")
    path = f"/projects/{project}/models/m"
    for data in (b"1", b"2"):
        assert deployment.commit(owner, project, "m", {"w.bin": data}).status_code == 201
    assert contributor.delete(f"{path}/versions/1").status_code == 403
    assert owner.delete(f"{path}/versions/1").status_code == 204
    for api in (contributor, viewer):
        assert api.post(f"{path}/versions/1/restore").status_code == 403
        assert [t["ref"] for t in api.get("/trash", params={"project": project}).json()] == [
            f"{project}/m:1"
        ]


@pytest.fixture
def short_trash_server(
    backend: str, make_server: Callable[[str], ServerProcess]
) -> Iterator[ServerProcess]:
    """A server of its own whose trash keeps things two seconds, looked at every half second."""
    server = make_server(backend)
    server.extra_env.update(
        LMVP_TRASH_DAYS=str(SHORT_TRASH_DAYS), LMVP_RETENTION_INTERVAL_SECONDS="0.5"
    )
    server.start()
    yield server
    server.stop()


def test_the_trash_is_purged_after_its_period(short_trash_server: ServerProcess) -> None:
    from tests.support import ADMIN_PASSWORD

    admin = Api(short_trash_server.url).login("admin", ADMIN_PASSWORD)
    deployment = Deployment(server=short_trash_server, admin=admin)
    owner = deployment.user("purge")
    project = deployment.project(owner)
    path = f"/projects/{project}/models/m"
    assert deployment.commit(owner, project, "m", {"w.bin": b"1"}).status_code == 201
    r = deployment.commit(owner, project, "m", {"w.bin": b"2"}, parent=1)
    assert r.status_code == 201 and r.json()["parent"] == 1
    assert deployment.commit(owner, project, "gone", {"w.bin": b"3"}).status_code == 201
    assert owner.delete(f"{path}/versions/1").status_code == 204
    assert owner.delete(f"/projects/{project}/models/gone").status_code == 204
    other = deployment.project(owner)
    assert deployment.commit(owner, other, "m", {"w.bin": b"4"}).status_code == 201
    assert owner.delete(f"/projects/{other}").status_code == 204
    assert len(owner.get("/trash").json()) == 3

    deadline = time.monotonic() + 30
    while owner.get("/trash").json() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert owner.get("/trash").json() == []
    # Gone for good: nothing to restore, the child no longer names it, and the log says so.
    r = owner.post(f"{path}/versions/1/restore")
    assert r.status_code == 404 and "purged" in r.json()["error"]["message"]
    _error(owner.get(f"{path}/versions/1"), "not_found")
    assert owner.get(f"{path}/versions/2").json()["parent"] is None
    _error(owner.get(f"/projects/{project}/models/gone"), "not_found")
    assert owner.post(f"/projects/{project}/models/gone/restore").status_code == 404
    history = owner.get(f"/projects/{project}/history").json()["items"]
    purged = {(e["kind"], e["model"], e["version"], e["actor"]) for e in history}
    assert ("version.purged", "m", 1, None) in purged
    assert ("model.purged", "gone", None, None) in purged
    _error(owner.get(f"/projects/{other}"), "not_found")
    assert owner.post(f"/projects/{other}/restore").status_code == 404
    # What was not in the trash stays.
    assert [v["number"] for v in owner.get(f"{path}/versions").json()["items"]] == [2]


def test_the_cli_lists_and_restores_the_trash(
    deployment: Deployment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lmvp.cli import main

    owner = deployment.user("cli")
    project = deployment.project(owner)
    path = f"/projects/{project}/models/m"
    for data in (b"1", b"2"):
        assert deployment.commit(owner, project, "m", {"w.bin": data}).status_code == 201
    assert owner.delete(f"{path}/versions/1").status_code == 204
    monkeypatch.setenv("LMVP_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("LMVP_SERVER", deployment.url)
    monkeypatch.setenv("LMVP_TOKEN", str(owner.token))
    capsys.readouterr()
    assert main(["trash", "list", project]) == 0
    listed = capsys.readouterr().out
    assert f"{project}/m:1" in listed and "by hand" in listed
    assert main(["trash", "restore", f"{project}/m:1"]) == 0
    assert f"restored {project}/m:1" in capsys.readouterr().out
    assert [v["number"] for v in owner.get(f"{path}/versions").json()["items"]] == [2, 1]
    assert main(["trash", "list", project]) == 0
    assert "the trash is empty" in capsys.readouterr().out
    # Restoring what is not in the trash fails with the server's sentence.
    assert main(["trash", "restore", f"{project}/m:1"]) == 1
    assert "not in the trash" in capsys.readouterr().err
    assert main(["trash", "restore", f"{project}/m@best"]) == 2
