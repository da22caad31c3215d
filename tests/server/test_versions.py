"""Versions, aliases and history: numbering under concurrency, idempotent and optimistic commits,
every kind of bad commit (refused, nothing stored), keyset pagination, aliases, and history."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.support import Api, Deployment, at_the_same_moment, sha256_bytes


@dataclass
class Model:
    """A model with one file's bytes already uploaded to its project, ready to commit."""

    api: Api
    project: str
    name: str
    blob: str

    @property
    def path(self) -> str:
        return f"/projects/{self.project}/models/{self.name}"

    def manifest(self, path: str = "model.bin") -> list[dict[str, Any]]:
        return [{"path": path, "size": len(b"weights"), "sha256": self.blob}]

    def commit(self, **body: Any) -> requests.Response:
        body.setdefault("files", self.manifest())
        return self.api.post(f"{self.path}/versions", json=body)

    def numbers(self) -> list[int]:
        """Every version number, newest first."""
        return [
            v["number"]
            for v in self.api.get(f"{self.path}/versions", params={"limit": 1000}).json()["items"]
        ]


@pytest.fixture(scope="module")
def owner(deployment: Deployment) -> Api:
    """One user for the module (logging in costs an argon2 hash); each test has its own project."""
    return deployment.user("owner")


@pytest.fixture
def model(deployment: Deployment, owner: Api) -> Model:
    project = deployment.project(owner)
    blob = deployment.upload(owner, project, b"weights")
    assert owner.post(f"/projects/{project}/models", json={"name": "m"}).status_code == 201
    return Model(owner, project, "m", blob)


def _error(r: requests.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}, r.text
    error: dict[str, Any] = r.json()["error"]
    if code is not None:
        assert error["code"] == code, error
    return error


# --- numbering ----------------------------------------------------------------------------------


def test_concurrent_commits_to_one_model_get_distinct_consecutive_numbers(model: Model) -> None:
    def commit(i: int) -> requests.Response:
        api = Api(model.api.url, model.api.token)  # a session per thread, as clients would
        return api.post(
            f"{model.path}/versions", json={"files": model.manifest(), "message": f"thread {i}"}
        )

    responses = at_the_same_moment(8, commit)
    assert all(r.status_code == 201 for r in responses), [r.text for r in responses]
    assert sorted(r.json()["number"] for r in responses) == list(range(1, 9))
    assert model.numbers() == list(range(8, 0, -1))


def test_creating_one_model_name_at_once_makes_one_model(model: Model) -> None:
    # Two training hosts pushing the first checkpoint of a new model at the same moment.
    def create(_: int) -> int:
        api = Api(model.api.url, model.api.token)
        return api.post(f"/projects/{model.project}/models", json={"name": "fresh"}).status_code

    assert sorted(at_the_same_moment(4, create)) == [201, 409, 409, 409]
    names = [m["name"] for m in model.api.get(f"/projects/{model.project}/models").json()]
    assert names.count("fresh") == 1


def test_a_deleted_versions_number_is_never_handed_out_again(model: Model) -> None:
    for _ in range(3):
        assert model.commit().status_code == 201
    assert model.api.delete(f"{model.path}/versions/3").status_code == 204
    assert model.commit().json()["number"] == 4
    for n in (1, 2, 4):
        assert model.api.delete(f"{model.path}/versions/{n}").status_code == 204
    assert model.numbers() == []
    assert model.commit().json()["number"] == 5
    # Deleted versions wait in the trash, and say so.
    error = _error(model.api.get(f"{model.path}/versions/3"), 404, "in_trash")
    assert f"lmvp trash restore {model.project}/m:3" in error["message"]


def test_versions_are_immutable(model: Model) -> None:
    assert model.commit(message="as committed").status_code == 201
    for method in ("PUT", "PATCH"):
        r = model.api(method, f"{model.path}/versions/1", json={"message": "rewritten"})
        _error(r, 405)
    assert model.api.get(f"{model.path}/versions/1").json()["message"] == "as committed"


# --- idempotent and optimistic commits ----------------------------------------------------------


def test_a_retried_commit_with_the_same_idempotency_key_returns_the_first_version(
    model: Model,
) -> None:
    first = model.commit(idempotency_key="job-42-step-500", message="first try")
    assert first.status_code == 201, first.text
    retry = model.commit(idempotency_key="job-42-step-500", message="first try")
    assert retry.status_code == 200, retry.text
    assert retry.json() == first.json()
    assert model.numbers() == [1]


def test_simultaneous_retries_with_one_idempotency_key_make_one_version(model: Model) -> None:
    def commit(_: int) -> requests.Response:
        api = Api(model.api.url, model.api.token)
        return api.post(
            f"{model.path}/versions",
            json={"files": model.manifest(), "idempotency_key": "same-key"},
        )

    responses = at_the_same_moment(6, commit)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [201], [r.text for r in responses]
    assert {r.json()["number"] for r in responses} == {1}
    assert model.numbers() == [1]


def test_reusing_an_idempotency_key_for_different_files_is_a_conflict(model: Model) -> None:
    assert model.commit(idempotency_key="k1").status_code == 201
    r = model.commit(idempotency_key="k1", files=model.manifest("renamed.bin"))
    error = _error(r, 409, "idempotency_key_reused")
    assert "version 1" in error["message"]
    assert model.numbers() == [1]


def test_a_commit_whose_parent_is_not_the_latest_version_is_refused(model: Model) -> None:
    assert model.commit().status_code == 201
    assert model.commit(parent=1).status_code == 201
    stale = model.commit(parent=1, message="based on v1")
    error = _error(stale, 409, "parent_mismatch")
    assert error["details"]["latest"] == 2
    assert model.numbers() == [2, 1]

    rebased = model.commit(parent=2, message="based on v2")
    assert rebased.status_code == 201
    assert rebased.json()["number"] == 3 and rebased.json()["parent"] == 2


# --- bad commits: refused, nothing stored -------------------------------------------------------


@pytest.mark.parametrize(
    ("paths", "problem"),
    [
        (["/etc/passwd"], "absolute"),
        (["weights/../../escape.bin"], ".."),
        (["..", "ok.bin"], ".."),
        (["weights\\model.bin"], "backslash"),
        (["model\x00.bin"], "NUL"),
        (["model\x07.bin"], "control character"),
        (["model\n.bin"], "control character"),
        (["model\u202e.bin"], "control character"),  # right-to-left override
        (["a.bin", "b.bin", "a.bin"], "more than once"),
        (["weights//model.bin"], "empty"),
        (["weights/./model.bin"], "empty or '.'"),
        (["weights/"], "empty"),
        ([""], "empty"),
        (["C:/model.bin"], "drive letter"),
    ],
)
def test_a_manifest_with_an_unsafe_path_is_refused(
    model: Model, paths: list[str], problem: str
) -> None:
    assert model.commit().status_code == 201
    files = [{"path": p, "size": 7, "sha256": model.blob} for p in paths]
    error = _error(model.commit(files=files), 422, "invalid_manifest")
    assert problem in error["message"]
    assert error["details"]["paths"]
    assert model.numbers() == [1]


def test_a_commit_naming_blobs_the_project_lacks_lists_exactly_those(
    deployment: Deployment, model: Model
) -> None:
    # Bytes held only by another project do not count: knowing a hash proves nothing.
    elsewhere = deployment.project(model.api)
    foreign = deployment.upload(model.api, elsewhere, b"other project's weights")
    never_uploaded = sha256_bytes(b"never uploaded")
    files = [
        *model.manifest("present.bin"),
        {"path": "foreign.bin", "size": 23, "sha256": foreign},
        {"path": "absent.bin", "size": 14, "sha256": never_uploaded},
    ]
    error = _error(model.commit(files=files), 422, "missing_blobs")
    assert sorted(error["details"]["missing"]) == sorted([foreign, never_uploaded])
    assert model.numbers() == []


def test_a_size_that_is_not_the_uploaded_size_is_refused(model: Model) -> None:
    files = [{"path": "model.bin", "size": 8, "sha256": model.blob}]
    error = _error(model.commit(files=files), 422, "size_mismatch")
    assert error["details"]["paths"] == ["model.bin"]
    assert model.numbers() == []


def test_oversized_metadata_is_refused_with_413(model: Model) -> None:
    just_fits = {"notes": "x" * (64 * 1024 - 20)}
    assert model.commit(metadata=just_fits).status_code == 201
    r = model.commit(metadata={"notes": "x" * (64 * 1024 + 1)})
    _error(r, 413, "metadata_too_large")
    r = model.commit(metrics={"curve": list(range(20_000))})
    _error(r, 413, "metrics_too_large")
    assert model.numbers() == [1]


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_metadata_must_be_real_json(model: Model, bad: str) -> None:
    # Python's json module writes NaN for a diverged loss; no JSON parser elsewhere reads it.
    body = json.dumps({"files": model.manifest()})[:-1] + f', "metrics": {{"loss": {bad}}}}}'
    r = model.api.post(
        f"{model.path}/versions", data=body, headers={"Content-Type": "application/json"}
    )
    _error(r, 422)
    assert model.numbers() == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("message", "before\x00after"),
        ("metadata", {"note": "before\x00after"}),
        ("metadata", {"key\x00": 1}),
        ("metrics", {"loss": ["ok", "\x00"]}),
        ("source", {"host": "gpu\x001", "path": "/runs"}),
        ("message", "half a character: \ud800"),
        ("idempotency_key", "key\x00"),
    ],
)
def test_text_no_database_can_store_is_refused_on_every_backend(
    model: Model, field: str, value: Any
) -> None:
    # PostgreSQL cannot hold a NUL in text or JSON, and a lone surrogate is not UTF-8 at all:
    # refused at the door on both backends, rather than stored on one and a 500 on the other.
    _error(model.commit(**{field: value}), 422, "invalid_request")
    assert model.numbers() == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"files": [',
        b"not json at all",
        b'{"files": [{"path": "a", "size": 1, "sha256": "' + b"0" * 64 + b'"}],}',
        b"[1, 2, 3]",
        b"",
    ],
)
def test_a_malformed_json_body_gets_a_json_422_without_a_stack_trace(
    model: Model, body: bytes
) -> None:
    r = model.api.post(
        f"{model.path}/versions", data=body, headers={"Content-Type": "application/json"}
    )
    error = _error(r, 422, "invalid_request")
    assert "Traceback" not in r.text and 'File "' not in r.text
    assert len(error["message"]) < 2000
    assert model.numbers() == []


def test_absurdly_deep_json_gets_a_clean_client_error(model: Model) -> None:
    body = b'{"files": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = model.api.post(
        f"{model.path}/versions", data=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code in (400, 422), r.text
    assert set(r.json()) == {"error"}
    assert model.numbers() == []


def test_unknown_project_model_version_and_alias_get_404(model: Model) -> None:
    api, p = model.api, model.project
    assert model.commit().status_code == 201
    for method, path, body in [
        ("GET", "/projects/no-such-project/models/m/versions", None),
        ("POST", "/projects/no-such-project/models/m/versions", {"files": model.manifest()}),
        ("GET", f"/projects/{p}/models/no-such-model", None),
        ("GET", f"/projects/{p}/models/no-such-model/versions", None),
        ("POST", f"/projects/{p}/models/no-such-model/versions", {"files": model.manifest()}),
        ("GET", f"{model.path}/versions/99", None),
        ("GET", f"{model.path}/versions/v99", None),
        ("GET", f"{model.path}/versions/no-such-alias", None),
        ("GET", f"{model.path}/versions/bad%00ref", None),
        ("DELETE", f"{model.path}/versions/99", None),
        ("PUT", f"{model.path}/aliases/best", {"version": 99}),
        ("DELETE", f"{model.path}/aliases/no-such-alias", None),
        ("DELETE", f"{model.path}/aliases/bad%00alias", None),
    ]:
        r = api(method, path, json=body)
        assert r.status_code == 404, f"{method} {path}: {r.status_code} {r.text}"
        assert r.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("number", [2**31, 2**63, 10**30])
def test_numbers_beyond_what_the_database_holds_are_a_client_error(
    model: Model, number: int
) -> None:
    history = f"/projects/{model.project}/history"
    for method, path, kwargs in [
        ("GET", f"{model.path}/versions", {"params": {"before": number}}),
        # Event ids are 64-bit: 2**31 is a fine place to start paging history from.
        ("GET", history, {"params": {"before": number * 2**32}}),
        ("GET", f"{model.path}/versions/{number}", {}),
        ("PUT", f"{model.path}/aliases/best", {"json": {"version": number}}),
        ("POST", f"{model.path}/versions", {"json": {"files": model.manifest(), "parent": number}}),
        ("DELETE", f"/tokens/{number}", {}),
    ]:
        r = model.api(method, path, **kwargs)
        assert r.status_code in (404, 409, 422), f"{method} {path}: {r.status_code} {r.text}"
        assert set(r.json()) == {"error"}
    assert model.numbers() == []


def test_latest_of_a_model_without_versions_is_404(model: Model) -> None:
    _error(model.api.get(f"{model.path}/versions/latest"), 404, "not_found")


# --- listing ------------------------------------------------------------------------------------


def test_keyset_pagination_returns_every_version_once_newest_first(model: Model) -> None:
    for i in range(120):
        assert model.commit(message=f"v{i + 1}").status_code == 201

    seen: list[int] = []
    pages = 0
    params: dict[str, Any] = {"limit": 25}
    while True:
        page = model.api.get(f"{model.path}/versions", params=params).json()
        pages += 1
        seen += [v["number"] for v in page["items"]]
        if page["next"] is None:
            break
        # A version committed between pages must not shift the pages that follow.
        if pages == 2:
            assert model.commit(message="while paging").status_code == 201
        params["before"] = page["next"]
    assert pages == 5
    assert seen == list(range(120, 0, -1))

    newest = model.api.get(f"{model.path}/versions", params={"limit": 1}).json()
    assert [v["number"] for v in newest["items"]] == [121] and newest["next"] == 121
    _error(model.api.get(f"{model.path}/versions", params={"limit": 0}), 422)
    _error(model.api.get(f"{model.path}/versions", params={"before": "x"}), 422)


# --- aliases ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["latest", "v3", "3", "v007", "-best", ".hidden", "a" * 65, "with space", "ünïcode"]
)
def test_alias_names_that_could_be_mistaken_for_versions_or_are_malformed_are_refused(
    model: Model, name: str
) -> None:
    assert model.commit().status_code == 201
    r = model.api.put(f"{model.path}/aliases/{name}", json={"version": 1})
    _error(r, 422, "invalid_alias")
    assert model.api.get(f"{model.path}/aliases").json() == []


def test_an_alias_can_be_set_moved_and_deleted(model: Model) -> None:
    for _ in range(3):
        assert model.commit().status_code == 201
    aliases, versions = f"{model.path}/aliases", f"{model.path}/versions"

    r = model.api.put(f"{aliases}/production", json={"version": 1})
    assert r.status_code == 200 and r.json()["version"] == 1
    assert model.api.get(f"{versions}/production").json()["number"] == 1
    assert model.api.get(f"{versions}/1").json()["aliases"] == ["production"]

    assert model.api.put(f"{aliases}/production", json={"version": 3}).json()["version"] == 3
    moved = model.api.get(f"{versions}/production").json()
    assert moved["number"] == 3 and moved["aliases"] == ["production"]
    assert model.api.get(f"{versions}/1").json()["aliases"] == []
    assert [(a["name"], a["version"]) for a in model.api.get(aliases).json()] == [("production", 3)]

    assert model.api.put(f"{aliases}/best", json={"version": 3}).status_code == 200
    assert model.api.get(f"{versions}/latest").json()["aliases"] == ["best", "production"]

    assert model.api.delete(f"{aliases}/production").status_code == 204
    _error(model.api.get(f"{versions}/production"), 404, "not_found")
    assert [a["name"] for a in model.api.get(aliases).json()] == ["best"]


def test_setting_one_alias_at_once_from_several_places_just_sets_it(model: Model) -> None:
    for _ in range(4):
        assert model.commit().status_code == 201

    def point(i: int) -> int:
        api = Api(model.api.url, model.api.token)
        return api.put(f"{model.path}/aliases/production", json={"version": i + 1}).status_code

    assert at_the_same_moment(4, point) == [200] * 4
    aliases = model.api.get(f"{model.path}/aliases").json()
    assert [a["name"] for a in aliases] == ["production"]
    history = model.api.get(f"/projects/{model.project}/history").json()["items"]
    last_set = next(e for e in history if e["kind"] == "alias.set")
    assert aliases[0]["version"] == last_set["version"]


def test_deleting_one_version_twice_at_once_deletes_it_once(model: Model) -> None:
    for _ in range(2):
        assert model.commit().status_code == 201

    def delete(_: int) -> int:
        return Api(model.api.url, model.api.token).delete(f"{model.path}/versions/2").status_code

    assert sorted(at_the_same_moment(3, delete)) == [204, 404, 404]
    assert model.numbers() == [1]


def test_deleting_a_version_removes_the_aliases_on_it(model: Model) -> None:
    for _ in range(2):
        assert model.commit().status_code == 201
    model.api.put(f"{model.path}/aliases/best", json={"version": 2})
    assert model.api.delete(f"{model.path}/versions/best").status_code == 204
    _error(model.api.get(f"{model.path}/versions/best"), 404)
    assert model.api.get(f"{model.path}/aliases").json() == []
    assert model.api.get(f"{model.path}/versions/latest").json()["number"] == 1


def test_a_child_still_names_its_parent_while_the_parent_is_in_the_trash(model: Model) -> None:
    assert model.commit().status_code == 201
    assert model.commit(parent=1).json()["parent"] == 1
    assert model.api.delete(f"{model.path}/versions/1").status_code == 204
    # The lineage comes back whole with a restore; the purge unlinks it (tests/server/test_trash).
    assert model.api.get(f"{model.path}/versions/2").json()["parent"] == 1


def test_deleting_a_model_deletes_its_versions_and_aliases(model: Model) -> None:
    for parent in (None, 1, 2):
        assert model.commit(parent=parent).status_code == 201
    model.api.put(f"{model.path}/aliases/production", json={"version": 2})

    assert model.api.delete(model.path).status_code == 204
    _error(model.api.get(model.path), 404, "in_trash")
    _error(model.api.get(f"{model.path}/versions/production"), 404, "in_trash")
    assert model.api.get(f"/projects/{model.project}/models").json() == []
    # The bytes stay with the project for whatever commits them next.
    r = model.api.post(f"/projects/{model.project}/blobs/missing", json={"sha256": [model.blob]})
    assert r.json() == {"missing": []}


# --- history ------------------------------------------------------------------------------------


def test_history_lists_what_happened_newest_first_page_by_page(model: Model) -> None:
    for _ in range(3):
        assert model.commit().status_code == 201
    model.api.put(f"{model.path}/aliases/production", json={"version": 2})
    model.api.delete(f"{model.path}/versions/3")
    history = f"/projects/{model.project}/history"

    everything = model.api.get(history, params={"limit": 1000}).json()
    assert everything["next"] is None
    kinds = [(e["kind"], e["model"], e["version"]) for e in everything["items"]]
    assert kinds == [
        ("version.deleted", "m", 3),
        ("alias.set", "m", 2),
        ("version.created", "m", 3),
        ("version.created", "m", 2),
        ("version.created", "m", 1),
        ("model.created", "m", None),
        ("project.created", None, None),
    ]
    assert all(e["actor"] == model.api.username for e in everything["items"])  # type: ignore[attr-defined]
    assert everything["items"][1]["payload"]["alias"] == "production"

    paged: list[int] = []
    params: dict[str, Any] = {"limit": 3}
    while True:
        page = model.api.get(history, params=params).json()
        paged += [e["id"] for e in page["items"]]
        if page["next"] is None:
            break
        params["before"] = page["next"]
    assert paged == [e["id"] for e in everything["items"]]

    only_model = model.api.get(history, params={"model": "m", "limit": 1000}).json()["items"]
    assert len(only_model) == 6


def test_a_huge_json_body_is_refused_before_it_is_read(deployment: Deployment) -> None:
    api = deployment.user("huge")
    project = deployment.project(api)
    body = b'{"name": "m", "description": "' + b"x" * (17 * 1024 * 1024) + b'"}'
    r = api.post(
        f"/projects/{project}/models", data=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413, r.text[:200]
    assert r.json()["error"]["code"] == "body_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"name": "m", "description": "'
        for _ in range(17):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    r = api.post(
        f"/projects/{project}/models", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413, r.text[:200]
    assert r.json()["error"]["code"] == "body_too_large"
    assert api.get(f"/projects/{project}/models").json() == []
