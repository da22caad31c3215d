"""Commits on a fleet: concurrent commits from separate processes get consecutive numbers; an
idempotent retry that lands on another server returns the version the first attempt made; a
listing right after a commit on another server shows it, and so do many readers at once while
versions are committed. Through nginx over HTTPS."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.fleet.conftest import Fleet
from tests.support import Api, _die_with_parent

COMMITTERS = 16
# One committer: waits for the start file, then commits with the public client and prints the
# version's number.
_COMMITTER = """
import json, os, sys, time
from pathlib import Path
import lmvp
from lmvp.types import FileEntry
job = json.loads(sys.argv[1])
client = lmvp.Client(job["server"], job["token"])
entry = FileEntry(**job["file"])
go = Path(job["go"])
while not go.exists():
    time.sleep(0.005)
version = client.commit_version(job["ref"], [entry], message=job["message"])
print(json.dumps({"number": version.number}))
"""


def _first_version(fleet: Fleet, api: Api, project: str, model: str) -> dict[str, object]:
    r = fleet.deployment.commit(api, project, model, {"w.bin": b"weights"})
    assert r.status_code == 201, r.text
    return r.json()["files"][0]  # type: ignore[no-any-return]


def test_concurrent_commits_from_separate_processes_get_consecutive_numbers(
    fleet: Fleet, tmp_path: Path
) -> None:
    alice = fleet.deployment.user("alice")
    project = fleet.deployment.project(alice)
    entry = _first_version(fleet, alice, project, "m")
    assert alice.post(f"/projects/{project}/models", json={"name": "c"}).status_code == 201
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _COMMITTER,
                json.dumps(
                    {
                        "server": fleet.url,
                        "token": alice.token,
                        "ref": f"{project}/c",
                        "file": entry,
                        "go": str(go),
                        "message": f"committer {i}",
                    }
                ),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent,
        )
        for i in range(COMMITTERS)
    ]
    time.sleep(1.0)  # let them import lmvp and wait at the start line
    go.touch()
    numbers = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        numbers.append(json.loads(out)["number"])
    assert sorted(numbers) == list(range(1, 1 + COMMITTERS))
    listed = alice.get(f"/projects/{project}/models/c/versions?limit=100").json()["items"]
    assert sorted(v["number"] for v in listed) == list(range(1, 1 + COMMITTERS))
    assert sorted(v["message"] for v in listed) == sorted(
        f"committer {i}" for i in range(COMMITTERS)
    )
    # The commits were spread over the servers.
    servers = fleet.served_by(
        "POST", f"/api/v1/projects/{project}/models/c/versions", at_least=COMMITTERS
    )
    assert len(servers) == COMMITTERS
    assert len(set(servers)) == len(fleet.servers), servers


def test_an_idempotent_retry_on_another_server_returns_the_same_version(fleet: Fleet) -> None:
    here, there = fleet.servers
    alice = fleet.deployment.user("alice")
    project = fleet.deployment.project(alice)
    entry = _first_version(fleet, alice, project, "m")
    body = {"files": [entry], "message": "once", "idempotency_key": "retry-7f3a"}
    path = f"/projects/{project}/models/m/versions"
    fleet.only(here)
    first = alice.post(path, json=body)
    assert first.status_code == 201, first.text
    # The answer was lost (so the client tries again), and the retry lands elsewhere: on a new
    # connection, as a kept-alive one may still be served by the nginx worker from before the
    # reload, with the old servers.
    fleet.only(there)
    alice.http.close()
    start = len(fleet.proxy.served())
    again = alice.post(path, json=body)
    assert again.status_code in (200, 201), again.text
    assert fleet.served_by("POST", f"/api/v1{path}", start) == [fleet.address(there)]
    assert again.json()["number"] == first.json()["number"] == 2
    listed = alice.get(f"{path}?limit=10").json()["items"]
    assert [v["number"] for v in listed] == [2, 1]


def test_a_listing_right_after_a_commit_on_another_server_shows_it(fleet: Fleet) -> None:
    alice = fleet.deployment.user("alice")
    project = fleet.deployment.project(alice)
    entry = _first_version(fleet, alice, project, "m")
    path = f"/projects/{project}/models/m/versions"
    start = len(fleet.proxy.served())
    for number in range(2, 22):
        r = alice.post(path, json={"files": [entry], "message": f"v{number}"})
        assert r.status_code == 201, r.text
        assert r.json()["number"] == number
        latest = alice.get(f"{path}/latest")
        assert latest.status_code == 200, latest.text
        assert latest.json()["number"] == number
        listed = alice.get(f"{path}?limit=5")
        assert listed.status_code == 200, listed.text
        assert listed.json()["items"][0]["number"] == number
        history = alice.get(f"/projects/{project}/history?limit=5").json()["items"]
        assert any(h.get("version") == number for h in history), history
    # nginx took turns: reads often went to another server than the commit before them.
    served = [
        (s.method, s.upstreams[-1])
        for s in fleet.proxy.served()[start:]
        if s.path.startswith(f"/api/v1/projects/{project}/") and s.upstreams
    ]
    elsewhere = sum(
        1
        for (method, server), (_, reader) in itertools.pairwise(served)
        if method == "POST" and reader != server
    )
    assert elsewhere >= 10, served


READERS = 24


def test_many_readers_at_once_never_fail_nor_go_back_while_versions_are_committed(
    fleet: Fleet,
) -> None:
    """More readers at once than the fleet's three workers have slots for hot reads (4 each on
    PostgreSQL, `read_path.read_threads`), asking `latest` and a listing page in turns while
    versions are committed: every read is answered, with a version at least as new as the last
    one committed before it was asked (the last, asked after the last commit, sees that one), and
    a reader never sees an older one after a newer."""
    alice = fleet.deployment.user("alice")
    project = fleet.deployment.project(alice)
    entry = _first_version(fleet, alice, project, "m")
    path = f"/projects/{project}/models/m/versions"
    committed = 1
    done = threading.Event()
    seen: list[list[tuple[int, int]]] = [[] for _ in range(READERS)]  # (committed before, got)
    failures: list[str] = []

    def read(i: int) -> None:
        api = Api(alice.url, alice.token)
        api.http.verify = alice.http.verify
        with api.http:
            for turn in itertools.count():
                # Read at least 10 times, the last one asked after the last commit.
                last = done.is_set() and turn >= 9
                before = committed
                listing = turn % 2
                r = api.get(f"{path}?limit=3" if listing else f"{path}/latest")
                if r.status_code != 200:
                    failures.append(f"reader {i}: {r.status_code} {r.text[:200]}")
                    return
                body = r.json()
                seen[i].append((before, body["items"][0]["number"] if listing else body["number"]))
                if last:
                    return

    readers = [threading.Thread(target=read, args=(i,)) for i in range(READERS)]
    start = len(fleet.proxy.served())
    for reader in readers:
        reader.start()
    try:
        for number in range(2, 12):
            time.sleep(0.1)
            r = alice.post(path, json={"files": [entry], "message": f"v{number}"})
            assert r.status_code == 201, r.text
            committed = number
    finally:
        done.set()
        for reader in readers:
            reader.join(60)
    assert not failures, failures
    for i, reads in enumerate(seen):
        assert len(reads) >= 10, (i, reads)
        assert all(got >= before for before, got in reads), (i, reads)
        numbers = [got for _, got in reads]
        assert numbers == sorted(numbers), (i, numbers)
        assert reads[-1] == (11, 11), (i, reads)
    # The reads were spread over every worker's server.
    servers = fleet.served_by("GET", f"/api/v1{path}", start, at_least=READERS * 10)
    assert set(servers) == {fleet.address(s) for s in fleet.servers}, set(servers)
