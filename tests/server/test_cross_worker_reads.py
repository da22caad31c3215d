"""No stale read across workers: two servers on one PostgreSQL database (what two workers or two
hosts are), each request sent to the one the test chooses.

A listing or `latest` right after a commit, an alias move or a deletion on the other server shows
it, every time (the listing caches are keyed on the model's revision read in the request's own
query; the version rows they keep never change); a token revoked, or a member removed, on one
server is refused by the other at the very next request (nothing about tokens or members is
cached)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support import ADMIN_PASSWORD, Api, Deployment, ServerProcess, running

# Several processes on one database: PostgreSQL's case (one SQLite file is one host's).
pytestmark = pytest.mark.backends("postgres")

ROUNDS = 50


@pytest.fixture
def two(make_server: Callable[[str], ServerProcess]) -> Iterator[tuple[Deployment, Deployment]]:
    """Two servers on one database and data dir, both logged in as the admin."""
    first = make_server("postgres")
    second = ServerProcess(first.data_dir, first.database_url)
    with running(first), running(second):
        yield (
            Deployment(first, Api(first.url).login("admin", ADMIN_PASSWORD)),
            Deployment(second, Api(second.url).login("admin", ADMIN_PASSWORD)),
        )


def _as(api: Api, server: Deployment) -> Api:
    """The same token, sent to another server."""
    return Api(server.url, api.token)


def test_a_change_on_one_worker_shows_at_once_on_the_other(
    two: tuple[Deployment, Deployment],
) -> None:
    one, other = two
    project = one.project()
    digest = one.upload(one.admin, project, b"weights" * 100)
    manifest = [{"path": "model.bin", "size": 700, "sha256": digest}]
    base = f"/projects/{project}/models/m"
    assert one.admin.post(f"/projects/{project}/models", json={"name": "m"}).status_code == 201
    apis = [one.admin, other.admin]
    etags: dict[int, str] = {}
    for i in range(ROUNDS):
        writer, reader = apis[i % 2], apis[(i + 1) % 2]
        # The reader's caches are warm with the listing as it was.
        r = reader.get(f"{base}/versions", params={"limit": 1000})
        assert r.status_code == 200, r.text
        etags[i % 2] = r.headers["ETag"]
        r = writer.post(f"{base}/versions", json={"files": manifest, "message": f"v{i + 1}"})
        assert r.status_code == 201, r.text
        number = r.json()["number"]
        listing = reader.get(f"{base}/versions", params={"limit": 1000})
        assert listing.status_code == 200, listing.text
        assert [v["number"] for v in listing.json()["items"]][:1] == [number], f"round {i}"
        assert len(listing.json()["items"]) == i + 1
        again = reader.get(
            f"{base}/versions",
            params={"limit": 1000},
            headers={"If-None-Match": etags[i % 2]},
        )
        assert again.status_code == 200, f"round {i}: 304 for a listing that changed"
        latest = reader.get(f"{base}/versions/latest")
        assert latest.status_code == 200 and latest.json()["number"] == number, f"round {i}"

    # An alias moved, then a version deleted, on one: the other shows both at once.
    for target in (3, 7):
        r = one.admin.put(f"{base}/aliases/prod", json={"version": target})
        assert r.status_code == 200, r.text
        items = other.admin.get(f"{base}/versions", params={"limit": 1000}).json()["items"]
        assert [v["number"] for v in items if "prod" in v["aliases"]] == [target]
        assert other.admin.get(f"{base}/versions/prod").json()["number"] == target
    assert other.admin.get(f"{base}/versions/7").json()["aliases"] == ["prod"]
    assert one.admin.delete(f"{base}/versions/{ROUNDS}").status_code == 204
    items = other.admin.get(f"{base}/versions", params={"limit": 1000}).json()["items"]
    assert items[0]["number"] == ROUNDS - 1
    assert other.admin.get(f"{base}/versions/latest").json()["number"] == ROUNDS - 1

    # Restored from the trash, an alias removed: the other's answers, asked just before (and
    # kept for the revision they were given at), follow at once.
    r = one.admin.post(f"{base}/versions/{ROUNDS}/restore")
    assert r.status_code == 200, r.text
    assert other.admin.get(f"{base}/versions/latest").json()["number"] == ROUNDS
    assert one.admin.delete(f"{base}/aliases/prod").status_code == 204
    assert other.admin.get(f"{base}/versions/7").json()["aliases"] == []
    assert other.admin.get(f"{base}/versions/prod").status_code == 404


def test_a_revoked_token_is_refused_by_the_other_worker_at_the_next_request(
    two: tuple[Deployment, Deployment],
) -> None:
    one, other = two
    project = one.project()
    r = one.commit(one.admin, project, "m", {"model.bin": b"bytes" * 100})
    assert r.status_code == 201, r.text
    user = one.user("reader")
    one.add_member(project, user, "viewer")
    latest = f"/projects/{project}/models/m/versions/latest"
    listing = f"/projects/{project}/models/m/versions"
    for _ in range(3):
        token = user.post("/tokens", json={"name": "ci"}).json()
        on_one, on_other = Api(one.url, token["token"]), Api(other.url, token["token"])
        # Warm: the token works on both, many times over.
        for _ in range(20):
            for api in (on_one, on_other):
                assert api.get(latest).status_code == 200
                assert api.get(listing).status_code == 200
        assert user.delete(f"/tokens/{token['id']}").status_code == 204
        for api in (on_other, on_one):
            for path in (latest, listing):
                r = api.get(path)
                assert r.status_code == 401, f"{path} on {api.url}: {r.status_code}"
                assert r.json()["error"]["code"] == "token_revoked"

    # A member removed on one server is a stranger to the other at once.
    on_other = _as(user, other)
    assert on_other.get(latest).status_code == 200
    r = one.admin.delete(f"/projects/{project}/members/{user.username}")  # type: ignore[attr-defined]
    assert r.status_code == 204, r.text
    assert on_other.get(latest).status_code == 404
    assert on_other.get(listing).status_code == 404


def test_a_parent_purged_from_the_trash_is_gone_from_every_workers_listing(
    two: tuple[Deployment, Deployment],
) -> None:
    from sqlalchemy.orm import Session

    from lmvp_server.db import make_engine
    from lmvp_server.services.trash import purge_expired_trash

    one, other = two
    project = one.project()
    base = f"/projects/{project}/models/m"
    assert one.commit(one.admin, project, "m", {"a": b"first"}).status_code == 201
    r = one.commit(one.admin, project, "m", {"a": b"second"}, parent=1)
    assert r.status_code == 201 and r.json()["parent"] == 1, r.text
    for api in (one.admin, other.admin):  # both cache the listing, and version 2's row
        items = api.get(f"{base}/versions").json()["items"]
        assert [(v["number"], v["parent"]) for v in items] == [(2, 1), (1, None)]
        assert api.get(f"{base}/versions/2").json()["parent"] == 1
    assert one.admin.delete(f"{base}/versions/1").status_code == 204
    for api in (one.admin, other.admin):  # in the trash, version 1 is still 2's parent
        items = api.get(f"{base}/versions").json()["items"]
        assert [(v["number"], v["parent"]) for v in items] == [(2, 1)]
    engine = make_engine(one.server.database_url)
    try:
        with Session(engine) as session:  # the purge commits by itself
            assert purge_expired_trash(session, 0).versions == 1
    finally:
        engine.dispose()
    for api in (other.admin, one.admin):
        items = api.get(f"{base}/versions").json()["items"]
        assert [(v["number"], v["parent"]) for v in items] == [(2, None)], api.url
        assert api.get(f"{base}/versions/2").json()["parent"] is None
        assert api.get(f"{base}/versions/latest").json()["parent"] is None
