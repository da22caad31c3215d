"""Version listings are cached by the server until the model changes: every change a user
makes must show in the very next listing, and clients may revalidate with the ETag."""

from __future__ import annotations

import gzip
import json

import urllib3

from tests.support import Deployment


def _listing(api, project: str, **params):  # type: ignore[no-untyped-def]
    r = api.get(f"/projects/{project}/models/m/versions", params=params)
    assert r.status_code == 200, r.text
    return r


def test_listing_shows_each_change_at_once(deployment: Deployment) -> None:
    owner = deployment.user("lister")
    project = deployment.project(owner)
    assert deployment.commit(owner, project, "m", {"a.bin": b"one"}).status_code == 201
    assert [v["number"] for v in _listing(owner, project).json()["items"]] == [1]

    assert deployment.commit(owner, project, "m", {"a.bin": b"two"}).status_code == 201
    assert [v["number"] for v in _listing(owner, project).json()["items"]] == [2, 1]

    base = f"/projects/{project}/models/m"
    assert owner.put(f"{base}/aliases/best", json={"version": 1}).status_code == 200
    assert _listing(owner, project).json()["items"][1]["aliases"] == ["best"]
    assert owner.put(f"{base}/aliases/best", json={"version": 2}).status_code == 200
    items = _listing(owner, project).json()["items"]
    assert items[0]["aliases"] == ["best"] and items[1]["aliases"] == []
    assert owner.delete(f"{base}/aliases/best").status_code == 204
    assert _listing(owner, project).json()["items"][0]["aliases"] == []

    assert owner.delete(f"{base}/versions/2").status_code == 204
    assert [v["number"] for v in _listing(owner, project).json()["items"]] == [1]

    # SQLite hands the deleted version's row id to the next one: it must not look like it.
    r = deployment.commit(owner, project, "m", {"a.bin": b"three"}, message="third")
    assert r.status_code == 201
    items = _listing(owner, project).json()["items"]
    assert [(v["number"], v["message"]) for v in items] == [(3, "third"), (1, "")]
    assert items[0]["files"][0]["size"] == len(b"three")


def test_listing_revalidates_with_its_etag(deployment: Deployment) -> None:
    owner = deployment.user("etag")
    project = deployment.project(owner)
    assert deployment.commit(owner, project, "m", {"a.bin": b"one"}).status_code == 201
    first = _listing(owner, project)
    etag = first.headers["ETag"]

    unchanged = owner.get(f"/projects/{project}/models/m/versions", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b""

    assert deployment.commit(owner, project, "m", {"a.bin": b"two"}).status_code == 201
    changed = owner.get(f"/projects/{project}/models/m/versions", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag
    assert [v["number"] for v in changed.json()["items"]] == [2, 1]

    # Pages are separate resources with separate tags.
    assert _listing(owner, project, limit=1).headers["ETag"] != changed.headers["ETag"]


def test_listing_of_a_recreated_model_is_not_the_old_one(deployment: Deployment) -> None:
    owner = deployment.user("recreate")
    project = deployment.project(owner)
    assert deployment.commit(owner, project, "m", {"a.bin": b"old"}).status_code == 201
    assert _listing(owner, project).json()["items"][0]["message"] == ""
    assert owner.delete(f"/projects/{project}/models/m").status_code == 204
    r = deployment.commit(owner, project, "m", {"a.bin": b"new"}, message="fresh start")
    assert r.status_code == 201
    items = _listing(owner, project).json()["items"]
    assert [(v["number"], v["message"]) for v in items] == [(1, "fresh start")]


def test_a_long_listing_goes_gzipped_to_clients_that_accept_it(deployment: Deployment) -> None:
    """Compressed once per change of the model, served to every client that accepts gzip (as
    requests, httpx and browsers do); the same listing, revalidated with either form of its
    tag; plain for clients that refuse gzip."""
    owner = deployment.user("gzipped")
    project = deployment.project(owner)
    for i in range(30):
        data = {"w.bin": f"weights {i}".encode()}
        assert deployment.commit(owner, project, "m", data, message=f"step {i}").status_code == 201
    path = f"/projects/{project}/models/m/versions"

    def raw(**headers: str) -> urllib3.BaseHTTPResponse:
        return urllib3.request(
            "GET",
            f"{deployment.url}/api/v1{path}",
            headers={"Authorization": owner.http.headers["Authorization"], **headers},
            decode_content=False,
        )

    plain = raw(**{"Accept-Encoding": "identity"})
    assert plain.status == 200 and "Content-Encoding" not in plain.headers
    assert len(plain.data) > 4096
    packed = raw(**{"Accept-Encoding": "gzip, deflate"})
    assert packed.headers["Content-Encoding"] == "gzip"
    assert packed.headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(packed.data) == plain.data and len(packed.data) < len(plain.data) / 4
    assert packed.headers["ETag"] == f"W/{plain.headers['ETag']}"
    assert raw(**{"Accept-Encoding": "gzip;q=0, identity"}).data == plain.data
    # Either form of the tag revalidates; the client's library decodes the body by itself.
    for tag in (plain.headers["ETag"], packed.headers["ETag"]):
        assert raw(**{"Accept-Encoding": "gzip", "If-None-Match": tag}).status == 304
    assert [v["message"] for v in _listing(owner, project).json()["items"]][:2] == [
        "step 29",
        "step 28",
    ]
    # A change is in the next compressed listing too.
    assert (
        deployment.commit(owner, project, "m", {"w.bin": b"new"}, message="last").status_code == 201
    )
    again = raw(**{"Accept-Encoding": "gzip"})
    assert json.loads(gzip.decompress(again.data))["items"][0]["message"] == "last"
