"""Property-based fuzzing of the HTTP API against its own OpenAPI document (Schemathesis).

A real server is given a user with a write token and, in a project of theirs, a model with a
version, an alias, a run with metrics and a blob, so that generated requests reach past the
404 of a made-up name; a second project where the user is only a viewer gives the 403s. Then
Schemathesis reads `/api/v1/openapi.json` and sends what it generates from it, every check on:
no 5xx, every status and header documented, every body of the documented schema and content
type, schema-valid requests accepted, invalid ones refused, the token really required, `Allow`
naming the path's methods. A failure prints Schemathesis's report, with a `curl` line per case.

SQLite only: this checks the HTTP contract (statuses, bodies, headers), which is decided above
the database; what the database itself decides is tested on both backends elsewhere.

`LMVP_FUZZ_SECONDS` sets the time budget (default 60, which `make test` runs); `make fuzz`
runs it for longer. `LMVP_FUZZ_SEED` picks another seed (default fixed, so a run can be
repeated).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import ADMIN_PASSWORD, Api, Deployment, ServerProcess, tus_metadata

pytestmark = pytest.mark.backends("sqlite")

FUZZ_SECONDS = int(os.environ.get("LMVP_FUZZ_SECONDS", "60"))
FUZZ_SEED = int(os.environ.get("LMVP_FUZZ_SEED", "20261204"))
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
REPO = Path(__file__).resolve().parents[2]
# Schemathesis's defaults plus 412, tus's answer to a missing or unknown Tus-Resumable.
TUS_REFUSALS = [400, 401, 403, 404, 405, 406, 409, 412, 413, 415, 422, 428, 429]


@pytest.mark.timeout(FUZZ_SECONDS * 3 + 180)
def test_api_conforms_to_its_openapi_document_under_fuzzing(
    make_server: Callable[[str], ServerProcess], tmp_path: Path
) -> None:
    server = make_server("sqlite")
    # Small uploads: the fuzzer declares files up to Tus-Max-Size and may send their bytes.
    server.extra_env["LMVP_MAX_UPLOAD_SIZE"] = str(64 * 1024)
    server.start()
    try:
        admin = Api(server.url).login("admin", ADMIN_PASSWORD)
        world = _populate(Deployment(server=server, admin=admin))
        config = tmp_path / "schemathesis.toml"
        config.write_text(_config(world, tmp_path))
        report = tmp_path / "report.json"
        started = time.monotonic()
        result = subprocess.run(
            [
                str(SCHEMATHESIS),
                "--config-file",
                str(config),
                "run",
                f"{server.url}/api/v1/openapi.json",
                "--checks",
                "all",
                "--no-color",
                "--report",
                "json",
                "--report-json-path",
                str(report),
            ],
            capture_output=True,
            text=True,
            timeout=FUZZ_SECONDS * 3 + 120,
            # Whatever Schemathesis and Hypothesis keep goes to the test's folder; the hooks
            # module (tests.server.fuzz_hooks) is imported from the repository.
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": _with_repo(os.environ.get("PYTHONPATH"))},
        )
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    (tmp_path / "schemathesis.out").write_text(result.stdout + result.stderr)
    assert report.exists(), f"no report ({elapsed:.0f} s):\n{_tail(result.stdout)}"
    data = json.loads(report.read_text())
    summary = _summary(data)
    print(summary)
    assert result.returncode == 0, f"{summary}\n{_tail(result.stdout)}\n{result.stderr[-3000:]}"
    # Real work was done: every selected operation was tested, and most of them answered 2xx to
    # some request (past the 404s of made-up names and the 422s of invalid data).
    operations = data["operations"]
    assert operations["tested"] == operations["selected"] == operations["total"] - 1, summary
    assert len(_accepting(data)) >= operations["tested"] * 3 // 4, summary


def _with_repo(pythonpath: str | None) -> str:
    return os.pathsep.join([str(REPO), *([pythonpath] if pythonpath else [])])


def _accepting(data: dict[str, Any]) -> set[str]:
    """The operations that answered 2xx at least once."""
    return {
        label
        for label, phases in data.get("valid_rates", {}).items()
        if any(rates.get("accepted", 0) for rates in phases.values())
    }


def _summary(data: dict[str, Any]) -> str:
    cases = data["test_cases"]
    operations = data["operations"]
    not_accepting = sorted(set(data.get("valid_rates", {})) - _accepting(data))
    return (
        f"Schemathesis: {cases['generated']} cases on {operations['tested']} operations in "
        f"{data['running_time']:.0f} s (seed {data['seed']}, stopped by {data['stop_reason']}); "
        f"{len(data['failures'])} failures, {len(data['errors'])} errors; never answered 2xx: "
        f"{', '.join(not_accepting) or 'none'}"
    )


def _populate(deployment: Deployment) -> dict[str, Any]:
    """A user with a write token and things of theirs for generated requests to find."""
    admin = deployment.admin
    for name in ("fuzzer", "fuzz-peer"):
        r = admin.post("/users", json={"username": name, "password": f"password-{name}"})
        assert r.status_code == 201, r.text
    fuzzer = admin.login("fuzzer", "password-fuzzer")
    fuzzer.username = "fuzzer"  # type: ignore[attr-defined]
    for project in ("fuzz", "fuzz-doomed"):
        assert fuzzer.post("/projects", json={"name": project}).status_code == 201
    # A project where the fuzzer is only a viewer: writes there answer 403.
    assert admin.post("/projects", json={"name": "fuzz-viewing"}).status_code == 201
    deployment.add_member("fuzz-viewing", fuzzer, "viewer")
    for model in ("m", "doomed"):
        assert fuzzer.post("/projects/fuzz/models", json={"name": model}).status_code == 201
    run = fuzzer.post("/projects/fuzz/runs", json={"model": "m", "name": "r"})
    assert run.status_code == 201, run.text
    run_id = run.json()["id"]
    points = [{"key": "loss", "step": s, "value": 1.0 / (s + 1)} for s in range(10)]
    assert fuzzer.post(f"/runs/{run_id}/metrics", json={"points": points}).status_code == 200
    committed = deployment.commit(fuzzer, "fuzz", "m", {"w.bin": b"weights"}, run=run_id, step=9)
    assert committed.status_code == 201, committed.text
    sha256 = committed.json()["files"][0]["sha256"]
    assert deployment.commit(fuzzer, "fuzz", "m", {"w.bin": b"more"}).status_code == 201
    alias = fuzzer.put("/projects/fuzz/models/m/aliases/best", json={"version": 1})
    assert alias.status_code == 200, alias.text
    spare = fuzzer.post("/tokens", json={"name": "spare"})
    assert spare.status_code == 201, spare.text
    # An upload under way, and metadata that declares one in `fuzz`, so that tus requests get
    # past the 404 of a made-up upload and the 400 of metadata that does not decode.
    metadata = tus_metadata(project="fuzz", filename="f.bin")
    created = fuzzer.post(
        "/uploads",
        headers={"Tus-Resumable": "1.0.0", "Upload-Length": "64", "Upload-Metadata": metadata},
    )
    assert created.status_code == 201, created.text
    return {
        "token": fuzzer.token,
        "run_id": run_id,
        "sha256": sha256,
        "spare_token_id": spare.json()["id"],
        "upload_id": created.headers["Location"].rsplit("/", 1)[1],
        "metadata": [metadata, tus_metadata(project="fuzz", sha256=sha256, filename="w.bin")],
    }


def _config(world: dict[str, Any], tmp_path: Path) -> str:
    """schemathesis.toml for this run (see the module docstring for what each part is for)."""
    return f"""
seed = {FUZZ_SEED}
max-time = {FUZZ_SECONDS}
workers = 1
request-timeout = 20
suppress-health-check = ["too_slow", "filter_too_much"]
hooks = "tests.server.fuzz_hooks"

[cache]
enabled = false

[generation]
max-examples = 100000
database = "none"
# The API refuses NUL characters and lone surrogates in every string (PostgreSQL cannot store
# them; the document's description says so); tests/server/test_versions.py checks that.
allow-x00 = false
codec = "utf-8"

[auth.openapi.bearer]
bearer = "{world["token"]}"

[reports]
directory = "{tmp_path / "reports"}"

# Known names, one draw in two: the rest of the draws are made up and meet 404s and 422s.
[dictionaries.project]
values = ["fuzz", "fuzz-viewing"]
[dictionaries.model]
values = ["m"]
[dictionaries.ref]
values = ["1", "v2", "latest", "best"]
[dictionaries.alias]
values = ["best", "other"]
[dictionaries.run]
values = [{world["run_id"]}]
[dictionaries.sha256]
values = ["{world["sha256"]}"]
[dictionaries.username]
values = ["fuzz-peer"]
[dictionaries.upload]
values = ["{world["upload_id"]}"]
[dictionaries.metadata]
values = {json.dumps(world["metadata"])}
[dictionaries.offset]
values = [0]

[parameters]
"path.project" = {{ dictionary = "project", probability = 0.5 }}
"path.model" = {{ dictionary = "model", probability = 0.5 }}
"path.ref" = {{ dictionary = "ref", probability = 0.5 }}
"path.alias" = {{ dictionary = "alias", probability = 0.5 }}
"path.run_id" = {{ dictionary = "run", probability = 0.5 }}
"path.sha256" = {{ dictionary = "sha256", probability = 0.5 }}
"path.username" = {{ dictionary = "username", probability = 0.5 }}
"path.upload_id" = {{ dictionary = "upload", probability = 0.5 }}
"header.Upload-Metadata" = {{ dictionary = "metadata", probability = 0.5 }}
"header.Upload-Offset" = {{ dictionary = "offset", probability = 0.5 }}

# An endless stream: it answers 200 and then waits for events, so every generated request
# would wait for the request timeout. tests/server/test_events.py covers it.
[[operations]]
include-path = "/api/v1/events"
enabled = false

# Revoking the fuzzer's own token would turn the rest of the run into 401s: revoke a spare.
[[operations]]
include-name = "DELETE /api/v1/tokens/{{token_id}}"
parameters = {{ "path.token_id" = {world["spare_token_id"]} }}

# tus answers 412 to a missing or unknown Tus-Resumable, as its specification says. A
# schema-valid Upload-Metadata may still not decode (its values are base64 of UTF-8 text
# without control characters, which no pattern can say): 400.
[[operations]]
include-path-regex = "^/api/v1/uploads"
checks.negative_data_rejection.expected-statuses = {TUS_REFUSALS}
checks.missing_required_header.expected-statuses = [400, 401, 403, 406, 412, 415, 422]

[[operations]]
include-name = "POST /api/v1/uploads"
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 401, 403, 404, 409, 460]

# What an upload takes depends on the upload: a body past its declared length is 413, bytes
# that do not hash to its declared sha256 are 460 (as for a zero-length one above), and another
# request writing to it is 423.
[[operations]]
include-name = [
    "PATCH /api/v1/uploads/{{upload_id}}",
    "HEAD /api/v1/uploads/{{upload_id}}",
    "DELETE /api/v1/uploads/{{upload_id}}",
]
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 409, 413, 423, 460]

# A schema-valid manifest names files that were never uploaded, or one path twice; metadata
# may not hold integers past 64 bits: 422.
[[operations]]
include-name = "POST /api/v1/projects/{{project}}/models/{{model}}/versions"
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 409, 422]

# What no schema can say, so that schema-valid data may still get 422: a series' steps, values
# and wall_times must be as long as each other; free-form JSON (params) may not hold integers
# past 64 bits (a schema's bounds are compared as doubles, which cannot tell 2**63 from
# 2**63 - 1).
[[operations]]
include-name = [
    "POST /api/v1/runs/{{run_id}}/metrics",
    "POST /api/v1/projects/{{project}}/runs",
    "PATCH /api/v1/runs/{{run_id}}",
]
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 409, 422]

# A schema-valid assembly names chunks never sent (409) or whose bytes are not the file (422);
# schema-valid bytes are no chunk pack (422).
[[operations]]
include-name = [
    "POST /api/v1/projects/{{project}}/blobs/assemble",
    "POST /api/v1/projects/{{project}}/chunks",
]
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 409, 422]

# A range past the end of the blob is unsatisfiable (RFC 9110): 416.
[[operations]]
include-name = "GET /api/v1/projects/{{project}}/blobs/{{sha256}}"
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 409, 416]

# Deletions and membership changes go to things made for them: Schemathesis also draws names
# it saw in responses, and deleting `fuzz` or demoting the fuzzer would turn the rest of the run
# into 404s and 403s. (These parameters are fuzzed in the other operations of their paths.)
[[operations]]
include-name = "DELETE /api/v1/projects/{{project}}"
parameters = {{ "path.project" = "fuzz-doomed" }}

[[operations]]
include-name = "DELETE /api/v1/projects/{{project}}/models/{{model}}"
parameters = {{ "path.model" = "doomed" }}

[[operations]]
include-name = "DELETE /api/v1/projects/{{project}}/models/{{model}}/versions/{{ref}}"
parameters = {{ "path.ref" = "2" }}

[[operations]]
include-name = "DELETE /api/v1/projects/{{project}}/models/{{model}}/aliases/{{alias}}"
parameters = {{ "path.alias" = "other" }}

[[operations]]
include-name-regex = "^(PUT|DELETE) /api/v1/projects/[^/]+/members/"
parameters = {{ "path.username" = "fuzz-peer" }}
"""


def _tail(text: str, limit: int = 60_000) -> str:
    return text if len(text) <= limit else f"...\n{text[-limit:]}"
