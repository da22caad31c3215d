"""The live event stream, `GET /api/v1/events` (Server-Sent Events): changes arrive within
seconds, a reconnect with `Last-Event-ID` replays exactly what was missed, and nobody sees the
events of a project they are not a member of."""

from __future__ import annotations

import pytest
import requests

from tests.support import Deployment, EventStream, SseEvent


def _is(kind: str, project: str, version: int | None = None):  # type: ignore[no-untyped-def]
    def match(e: SseEvent) -> bool:
        return (
            e.kind == kind
            and e.data["project"] == project
            and (version is None or e.data["version"] == version)
        )

    return match


def test_changes_arrive_on_the_stream_within_seconds(deployment: Deployment) -> None:
    alice = deployment.user("alice")
    project = deployment.project(alice)
    with EventStream(deployment.url, alice.token) as stream:  # type: ignore[arg-type]
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        assert deployment.commit(alice, project, "resnet", {"w.bin": b"1"}).status_code == 201
        alice.put(f"/projects/{project}/models/resnet/aliases/best", json={"version": 1})

        events = stream.read_until(_is("alias.set", project), timeout=5)

    assert [e.kind for e in events] == ["model.created", "version.created", "alias.set"]
    created = events[1]
    assert created.data["project"] == project
    assert created.data["model"] == "resnet" and created.data["version"] == 1
    assert created.data["actor"] == alice.username  # type: ignore[attr-defined]
    assert created.id == created.data["id"]
    assert [e.id for e in events] == sorted(e.id for e in events)
    # The same events are in the project's history (the audit log is the stream's source).
    history = alice.get(f"/projects/{project}/history").json()["items"]
    assert [e.id for e in events] == sorted(h["id"] for h in history)[-3:]


def test_a_reconnect_with_last_event_id_replays_exactly_what_was_missed(
    deployment: Deployment,
) -> None:
    alice = deployment.user("alice")
    project = deployment.project(alice)
    with EventStream(deployment.url, alice.token) as stream:  # type: ignore[arg-type]
        deployment.commit(alice, project, "m", {"w.bin": b"1"})
        last_seen = stream.read_until(_is("version.created", project, 1))[-1].id

    # Offline while three versions land.
    for i in (2, 3, 4):
        assert deployment.commit(alice, project, "m", {"w.bin": str(i).encode()}).status_code == 201

    with EventStream(deployment.url, alice.token, last_event_id=last_seen) as stream:  # type: ignore[arg-type]
        replayed = stream.read_until(_is("version.created", project, 4), timeout=5)
        assert [e.data["version"] for e in replayed] == [2, 3, 4]
        assert all(e.id > last_seen for e in replayed)
        # ... and then it goes on live, without repeating anything.
        deployment.commit(alice, project, "m", {"w.bin": b"5"})
        live = stream.read_until(_is("version.created", project, 5), timeout=5)
        assert [e.data["version"] for e in live] == [5]


def test_a_stream_without_last_event_id_starts_with_the_next_event(
    deployment: Deployment,
) -> None:
    alice = deployment.user("alice")
    project = deployment.project(alice)
    deployment.commit(alice, project, "m", {"w.bin": b"old"})
    with EventStream(deployment.url, alice.token) as stream:  # type: ignore[arg-type]
        alice.patch(f"/projects/{project}", json={"description": "now"})
        assert [e.kind for e in stream.read_until(_is("project.updated", project))] == [
            "project.updated"
        ]


def test_nobody_sees_the_events_of_a_project_they_are_not_a_member_of(
    deployment: Deployment,
) -> None:
    alice, bob = deployment.user("alice"), deployment.user("bob")
    secret = deployment.project(alice, prefix="secret")
    shared = deployment.project(alice, prefix="shared")
    deployment.add_member(shared, bob, "viewer")

    with EventStream(deployment.url, bob.token) as stream:  # type: ignore[arg-type]
        deployment.commit(alice, secret, "m", {"w.bin": b"hidden"})
        alice.put(
            f"/projects/{secret}/members/{deployment.account('carol')}", json={"role": "viewer"}
        )
        # Events come in order, so once this one arrives nothing earlier can still come.
        deployment.commit(alice, shared, "m", {"w.bin": b"visible"})
        events = stream.read_until(_is("version.created", shared, 1))

    assert {e.data["project"] for e in events} == {shared}


def test_a_removed_member_stops_seeing_the_projects_events(deployment: Deployment) -> None:
    alice, bob = deployment.user("alice"), deployment.user("bob")
    project = deployment.project(alice)
    still_shared = deployment.project(alice, prefix="still-shared")
    for p in (project, still_shared):
        deployment.add_member(p, bob, "contributor")

    with EventStream(deployment.url, bob.token) as stream:  # type: ignore[arg-type]
        deployment.commit(alice, project, "m", {"w.bin": b"1"})
        stream.read_until(_is("version.created", project, 1))

        assert alice.delete(f"/projects/{project}/members/{bob.username}").status_code == 204  # type: ignore[attr-defined]
        deployment.commit(alice, project, "m", {"w.bin": b"2"})
        deployment.commit(alice, still_shared, "m", {"w.bin": b"sentinel"})
        after = stream.read_until(_is("version.created", still_shared, 1))

    assert not [e for e in after if e.data["project"] == project and e.kind != "member.removed"]

    # Nor can a replay from before the removal bring them back.
    first = alice.get(f"/projects/{project}/history").json()["items"][-1]["id"]
    with EventStream(deployment.url, bob.token, last_event_id=first) as stream:  # type: ignore[arg-type]
        deployment.commit(alice, still_shared, "m", {"w.bin": b"sentinel 2"})
        replayed = stream.read_until(_is("version.created", still_shared, 2))
    assert {e.data["project"] for e in replayed} == {still_shared}


def test_the_stream_needs_a_valid_token(deployment: Deployment) -> None:
    url = f"{deployment.url}/api/v1/events"
    r = requests.get(url, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "not_authenticated"
    r = requests.get(url, headers={"Authorization": "Bearer lmvp_" + "x" * 40}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"

    alice = deployment.user("alice")
    r = requests.get(
        url,
        headers={"Authorization": f"Bearer {alice.token}", "Last-Event-ID": "not-a-number"},
        timeout=10,
    )
    assert r.status_code == 400 and set(r.json()) == {"error"}


def test_a_stream_ends_when_its_token_is_revoked(deployment: Deployment) -> None:
    alice = deployment.user("alice")
    project = deployment.project(alice)
    laptop = alice.post("/tokens", json={"name": "laptop"}).json()
    with EventStream(deployment.url, laptop["token"]) as stream:
        alice.patch(f"/projects/{project}", json={"description": "1"})
        stream.read_until(_is("project.updated", project))

        assert alice.delete(f"/tokens/{laptop['id']}").status_code == 204
        alice.patch(f"/projects/{project}", json={"description": "2"})
        # A revoked token must not keep a window onto the project open: the server hangs up.
        with pytest.raises(EOFError):
            stream.read_until(lambda e: False, timeout=10)
    r = requests.get(
        f"{deployment.url}/api/v1/events",
        timeout=10,
        headers={"Authorization": f"Bearer {laptop['token']}"},
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_revoked"


def test_an_event_id_beyond_any_event_is_a_client_error(deployment: Deployment) -> None:
    alice = deployment.user("alice")
    for headers, params in [({"Last-Event-ID": str(2**64)}, {}), ({}, {"since": 2**64})]:
        r = requests.get(
            f"{deployment.url}/api/v1/events",
            params=params,
            timeout=10,
            headers={"Authorization": f"Bearer {alice.token}", **headers},
        )
        assert r.status_code in (400, 422), r.text
        assert set(r.json()) == {"error"}


def test_an_admin_sees_every_projects_events(deployment: Deployment) -> None:
    alice = deployment.user("alice")
    project = deployment.project(alice)
    with EventStream(deployment.url, deployment.admin.token) as stream:  # type: ignore[arg-type]
        deployment.commit(alice, project, "m", {"w.bin": b"1"})
        stream.read_until(_is("version.created", project, 1))
