"""Roles: what a viewer, contributor, maintainer, owner, a non-member and a server admin may do
in a project, endpoint family by endpoint family; and that a project never loses its last owner.

Each role is at least what the one below it is: viewer < contributor < maintainer < owner. A
server admin acts as an owner everywhere. Someone who is not a member gets 404 for everything in
the project, never 403, so that project names do not leak.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import Api, Deployment, at_the_same_moment, unique

RANK = {"viewer": 1, "contributor": 2, "maintainer": 3, "owner": 4, "admin": 4, "non-member": 0}


@dataclass(frozen=True)
class Call:
    """One request, the least role that may make it, and the status it gets when allowed."""

    method: str
    path: str
    needs: str
    ok: int
    body: Any = None


def _calls(p: str, *, newcomer: str, leaver: str, blob: str) -> list[Call]:
    """Every endpoint family of a project, in an order where the destructive calls come last.
    `p` is the project; `newcomer` a user to add, `leaver` a member to remove."""
    m = f"/projects/{p}/models/m"
    manifest = {"files": [{"path": "w.bin", "size": 7, "sha256": blob}]}
    return [
        Call("GET", f"/projects/{p}", "viewer", 200),
        Call("PATCH", f"/projects/{p}", "owner", 200, {"description": "new words"}),
        Call("GET", f"/projects/{p}/members", "viewer", 200),
        Call("PUT", f"/projects/{p}/members/{newcomer}", "owner", 200, {"role": "viewer"}),
        Call("DELETE", f"/projects/{p}/members/{leaver}", "owner", 204),
        Call("GET", f"/projects/{p}/models", "viewer", 200),
        Call("GET", m, "viewer", 200),
        Call("POST", f"/projects/{p}/models", "contributor", 201, {"name": "fresh"}),
        Call("PATCH", m, "maintainer", 200, {"description": "resnet"}),
        Call("DELETE", f"/projects/{p}/models/spare", "maintainer", 204),
        Call("GET", f"{m}/versions", "viewer", 200),
        Call("GET", f"{m}/versions/1", "viewer", 200),
        Call("GET", f"{m}/versions/latest", "viewer", 200),
        Call("GET", f"{m}/versions/production", "viewer", 200),
        Call("GET", f"{m}/aliases", "viewer", 200),
        Call("POST", f"{m}/versions", "contributor", 201, manifest),
        Call("PUT", f"{m}/aliases/best", "maintainer", 200, {"version": 1}),
        Call("DELETE", f"{m}/aliases/production", "maintainer", 204),
        Call("DELETE", f"{m}/versions/2", "maintainer", 204),
        Call("GET", f"/projects/{p}/history", "viewer", 200),
        Call("GET", f"/projects/{p}/blobs/{blob}", "viewer", 200),
        Call("POST", f"/projects/{p}/blobs/missing", "contributor", 200, {"sha256": [blob]}),
        Call("DELETE", f"/projects/{p}", "owner", 204),
    ]


@pytest.mark.parametrize(
    "role", ["viewer", "contributor", "maintainer", "owner", "admin", "non-member"]
)
def test_every_endpoint_answers_according_to_the_callers_role(
    deployment: Deployment, role: str
) -> None:
    founder = deployment.user("founder")
    project = deployment.project(founder)
    blob = deployment.upload(founder, project, b"weights")
    for model in ("m", "spare"):
        assert founder.post(f"/projects/{project}/models", json={"name": model}).status_code == 201
    manifest = {"files": [{"path": "w.bin", "size": 7, "sha256": blob}]}
    for _ in range(2):
        assert (
            founder.post(f"/projects/{project}/models/m/versions", json=manifest).status_code == 201
        )
    assert (
        founder.put(
            f"/projects/{project}/models/m/aliases/production", json={"version": 1}
        ).status_code
        == 200
    )
    newcomer, leaver = deployment.account("newcomer"), deployment.account("leaver")
    assert (
        founder.put(f"/projects/{project}/members/{leaver}", json={"role": "viewer"}).status_code
        == 200
    )

    if role == "admin":
        caller = deployment.admin
    else:
        caller = deployment.user(role)
        if role != "non-member":
            deployment.add_member(project, caller, role)

    calls = _calls(project, newcomer=newcomer, leaver=leaver, blob=blob)
    wrong = []
    for call in calls:
        if role == "non-member":
            expected = 404
        else:
            expected = call.ok if RANK[role] >= RANK[call.needs] else 403
        r = caller(call.method, call.path, json=call.body)
        if r.status_code != expected:
            wrong.append(
                f"{call.method} {call.path}: {r.status_code} (expected {expected}) {r.text}"
            )
        elif expected >= 400:
            assert set(r.json()) == {"error"}, r.text
    assert not wrong, "\n".join(wrong)


def test_a_non_member_cannot_tell_a_hidden_project_from_a_missing_one(
    deployment: Deployment,
) -> None:
    owner, outsider = deployment.user("owner"), deployment.user("outsider")
    project = deployment.project(owner)
    hidden = outsider.get(f"/projects/{project}")
    missing = outsider.get("/projects/no-such-project-at-all")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"
    assert project not in [p["name"] for p in outsider.get("/projects").json()]


def test_a_viewer_cannot_publish_a_version(deployment: Deployment) -> None:
    owner, viewer = deployment.user("owner"), deployment.user("viewer")
    project = deployment.project(owner)
    deployment.add_member(project, viewer, "viewer")
    blob = deployment.upload(owner, project, b"weights")
    owner.post(f"/projects/{project}/models", json={"name": "m"})

    r = viewer.post(
        f"/projects/{project}/models/m/versions",
        json={"files": [{"path": "w.bin", "size": 7, "sha256": blob}]},
    )
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    assert "viewer" in r.json()["error"]["message"]
    assert owner.get(f"/projects/{project}/models/m/versions").json()["items"] == []


def test_a_contributor_publishes_but_cannot_move_an_alias(deployment: Deployment) -> None:
    owner, contributor = deployment.user("owner"), deployment.user("contributor")
    project = deployment.project(owner)
    deployment.add_member(project, contributor, "contributor")
    assert deployment.commit(contributor, project, "m", {"a": b"1"}).status_code == 201
    assert deployment.commit(contributor, project, "m", {"a": b"2"}).status_code == 201
    owner.put(f"/projects/{project}/models/m/aliases/production", json={"version": 1})

    r = contributor.put(f"/projects/{project}/models/m/aliases/production", json={"version": 2})
    assert r.status_code == 403, r.text
    assert contributor.delete(f"/projects/{project}/models/m/aliases/production").status_code == 403
    assert owner.get(f"/projects/{project}/models/m/versions/production").json()["number"] == 1


def test_the_last_owner_can_be_neither_removed_nor_demoted(deployment: Deployment) -> None:
    owner, heir = deployment.user("owner"), deployment.user("heir")
    project = deployment.project(owner)
    members = f"/projects/{project}/members"

    for attempt in (
        owner.delete(f"{members}/{owner.username}"),
        owner.put(f"{members}/{owner.username}", json={"role": "maintainer"}),
        deployment.admin.delete(f"{members}/{owner.username}"),
        deployment.admin.put(f"{members}/{owner.username}", json={"role": "viewer"}),
    ):
        assert attempt.status_code == 409, attempt.text
        assert attempt.json()["error"]["code"] == "last_owner"
    assert owner.get(members).json()[0]["role"] == "owner"

    # With a second owner, the first may step down.
    assert owner.put(f"{members}/{heir.username}", json={"role": "owner"}).status_code == 200
    assert owner.put(f"{members}/{owner.username}", json={"role": "viewer"}).status_code == 200
    assert owner.patch(f"/projects/{project}", json={"description": "x"}).status_code == 403
    assert heir.delete(f"{members}/{owner.username}").status_code == 204
    assert owner.get(f"/projects/{project}").status_code == 404


def test_two_owners_stepping_down_at_the_same_moment_leave_one_owner(
    deployment: Deployment,
) -> None:
    first, second = deployment.user("first"), deployment.user("second")
    for attempt in range(6):
        project = deployment.project(first)
        members = f"/projects/{project}/members"
        assert first.put(f"{members}/{second.username}", json={"role": "owner"}).status_code == 200

        def step_down(i: int, project: str = project, attempt: int = attempt) -> int:
            me, other = [(first, second), (second, first)][i]
            api = Api(me.url, me.token)
            if attempt % 2:  # both leave...
                return api.delete(f"/projects/{project}/members/{me.username}").status_code
            # ... or each demotes the other
            return api.put(
                f"/projects/{project}/members/{other.username}", json={"role": "viewer"}
            ).status_code

        statuses = at_the_same_moment(2, step_down)
        owners = [
            m
            for m in deployment.admin.get(f"/projects/{project}/members").json()
            if m["role"] == "owner"
        ]
        assert len(owners) == 1, (attempt, statuses)
        assert sorted(statuses)[0] in (200, 204) and sorted(statuses)[1] in (403, 404, 409)


def test_creating_one_project_name_at_once_makes_one_project(deployment: Deployment) -> None:
    alice = deployment.user("alice")
    name = unique("contested")
    statuses = at_the_same_moment(
        4, lambda _: Api(alice.url, alice.token).post("/projects", json={"name": name}).status_code
    )
    assert sorted(statuses) == [201, 409, 409, 409]
    members = alice.get(f"/projects/{name}/members").json()
    assert [(m["username"], m["role"]) for m in members] == [(alice.username, "owner")]


def test_any_member_may_leave_a_project(deployment: Deployment) -> None:
    owner, viewer = deployment.user("owner"), deployment.user("viewer")
    project = deployment.project(owner)
    deployment.add_member(project, viewer, "viewer")
    assert viewer.delete(f"/projects/{project}/members/{viewer.username}").status_code == 204
    assert viewer.get(f"/projects/{project}").status_code == 404
    assert [m["username"] for m in owner.get(f"/projects/{project}/members").json()] == [
        owner.username
    ]


def test_members_get_a_role_that_can_be_changed(deployment: Deployment) -> None:
    owner, bob = deployment.user("owner"), deployment.user("bob")
    project = deployment.project(owner)
    members = f"/projects/{project}/members"
    r = owner.put(f"{members}/{bob.username}", json={"role": "contributor"})
    assert r.status_code == 200 and r.json()["role"] == "contributor"
    assert bob.get(f"/projects/{project}").json()["role"] == "contributor"
    owner.put(f"{members}/{bob.username}", json={"role": "maintainer"})
    assert bob.get(f"/projects/{project}").json()["role"] == "maintainer"

    assert owner.put(f"{members}/{bob.username}", json={"role": "god"}).status_code == 422
    assert (
        owner.put(f"{members}/no-such-user-{bob.username}", json={"role": "viewer"}).status_code
        == 404
    )
