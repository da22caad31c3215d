"""The event stream on a fleet: streams spread over the servers by nginx, while writers whose
commits land on different servers commit concurrently, each receive every event exactly once
and all in the same order (the commit order); a stream that hangs up and comes back with
`Last-Event-ID` (to whichever server nginx picks) gets exactly what it missed.

`LMVP_FLEET_EVENT_VERSIONS` sets how many versions the writers commit together: 200 in `make
test`, 400 (the number issue 15 names) in `make fleet`."""

from __future__ import annotations

import os
import threading
import time

from tests.fleet.conftest import Fleet
from tests.support import Api, EventStream, SseEvent

STREAMS = 8
WRITERS = 4
VERSIONS = int(os.environ.get("LMVP_FLEET_EVENT_VERSIONS", "200"))


def _versions(events: list[SseEvent]) -> list[tuple[str, int]]:
    return [(e.data["model"], e.data["version"]) for e in events if e.kind == "version.created"]


def _read(stream: EventStream, count: int, timeout: float = 120) -> list[SseEvent]:
    """Events until `count` version.created events have come, then whatever else arrives in
    the next second (a duplicate would show up there)."""
    seen: list[SseEvent] = []
    deadline = time.monotonic() + timeout
    while len(_versions(seen)) < count:
        try:
            seen.append(stream.next_event(timeout=max(0.0, deadline - time.monotonic())))
        except TimeoutError:
            raise AssertionError(f"{len(_versions(seen))} of {count} events came") from None
    while True:
        try:
            seen.append(stream.next_event(timeout=1.0))
        except TimeoutError:
            return seen


def test_every_stream_on_every_server_gets_every_event_once_in_the_same_order(
    fleet: Fleet,
) -> None:
    alice = fleet.deployment.user("alice")
    project = fleet.deployment.project(alice)
    models = [f"w{i}" for i in range(WRITERS)]
    entries = []
    for model in models:
        r = fleet.deployment.commit(alice, project, model, {"w.bin": model.encode()})
        assert r.status_code == 201, r.text
        entries.append(r.json()["files"])
    start = len(fleet.proxy.served())
    streams = [EventStream(fleet.url, alice.token) for _ in range(STREAMS)]  # type: ignore[arg-type]
    leaver = streams[-1]
    per_writer = VERSIONS // WRITERS
    errors: list[str] = []

    def write(i: int) -> None:
        # Each writer its own connections: nginx hands its requests to the servers in turn.
        api = Api(fleet.url, alice.token)
        path = f"/projects/{project}/models/{models[i]}/versions"
        for n in range(per_writer):
            r = api.post(path, json={"files": entries[i], "message": f"{i}-{n}"})
            if r.status_code != 201:
                errors.append(r.text)

    try:
        writers = [threading.Thread(target=write, args=(i,)) for i in range(WRITERS)]
        for w in writers:
            w.start()
        # One stream hangs up after a quarter of the events and comes back with the id of the
        # last event it saw, while the writers go on.
        before = _read(leaver, VERSIONS // 4, timeout=120)
        leaver.close()
        time.sleep(0.5)
        returned = EventStream(
            fleet.url,
            alice.token,  # type: ignore[arg-type]
            last_event_id=before[-1].id,
        )
        streams[-1] = returned
        for w in writers:
            w.join(300)
        assert not errors, errors[:3]
        received = [_read(s, VERSIONS) for s in streams[:-1]]
        after = _read(returned, VERSIONS - len(_versions(before)))
    finally:
        for s in streams:
            s.close()

    r = alice.get(f"/projects/{project}/history?limit=1000")
    assert r.status_code == 200, r.text
    committed = sorted(
        (h["id"], h["model"], h["version"])
        for h in r.json()["items"]
        if h["kind"] == "version.created" and h["version"] > 1
    )
    in_commit_order = [(m, n) for _, m, n in committed]
    assert len(in_commit_order) == per_writer * WRITERS
    for events in received:
        got = _versions(events)
        assert len(got) == len(set(got)), "a stream received an event twice"
        missing = set(in_commit_order) - set(got)
        assert not missing, f"a stream missed {len(missing)}: {sorted(missing)[:10]}"
        assert got == in_commit_order
    # The stream that came back: what it saw before and after, together, is the same sequence.
    assert _versions(before) + _versions(after) == in_commit_order
    # The streams and the commits were spread over the servers.
    # (nginx logs a stream once it notices the hang-up)
    streamed = fleet.served_by("GET", "/api/v1/events", start, at_least=STREAMS + 1)
    assert len(streamed) >= STREAMS + 1, streamed
    assert len(set(streamed)) == len(fleet.servers), streamed
    commits = fleet.served_by("POST", f"/api/v1/projects/{project}/models/", start)
    assert len(set(commits)) == len(fleet.servers)
