"""Numbers a client writes into headers and parameters, as an attacker writes them: thousands of
digits (CPython's int() refuses more than 4,300), values past 2**63, digits int() does not read.
Every one gets a 4xx with the project's error body, never a 500, and before any token is asked
for where the audit found it so (a PATCH's Upload-Offset).

SQLite only: these are parses of request text before any query runs; the database plays no part.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest
import requests

from tests.support import Api, Deployment, tus_create, tus_metadata

pytestmark = pytest.mark.backends("sqlite")

HUGE = "9" * 5000  # past int()'s 4,300-digit limit
PAST_BIGINT = str(2**64)
TUS = {"Tus-Resumable": "1.0.0"}


def assert_error(r: requests.Response, status: int = 400) -> None:
    assert r.status_code == status, r.text[:500]
    body = r.json()
    assert set(body["error"]) >= {"code", "message"}, body


@pytest.mark.parametrize("value", [HUGE, PAST_BIGINT, "\u00b2", "-1", "1e3"])
def test_upload_offset_of_any_shape_gets_400_before_a_token_is_asked(
    deployment: Deployment, value: str
) -> None:
    r = Api(deployment.url).patch(
        "/uploads/0123456789abcdef0123456789abcdef",
        headers={**TUS, "Upload-Offset": value, "Content-Type": "application/offset+octet-stream"},
        data=b"x",
    )

    assert_error(r)
    assert "Upload-Offset" in r.json()["error"]["message"] or "upload-offset" in r.text
    assert len(r.json()["error"]["message"]) < 200  # the 5,000 digits are not echoed back
    assert r.headers["Tus-Resumable"] == "1.0.0"


@pytest.mark.parametrize("value", [HUGE, PAST_BIGINT])
def test_upload_length_of_thousands_of_digits_gets_400(deployment: Deployment, value: str) -> None:
    owner = deployment.user("numbers")
    project = deployment.project(owner)

    r = owner.post(
        "/uploads",
        headers={
            **TUS,
            "Upload-Length": value,
            "Upload-Metadata": tus_metadata(project=project, sha256="0" * 64, filename="f"),
        },
    )

    assert_error(r)


def raw_request(url: str, head: str, body: bytes = b"") -> bytes:
    """Send a request exactly as written (requests would fix a bad Content-Length) and return
    the start of the answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            more = s.recv(65536)
            if not more:
                break
            answer += more
        return answer


def test_content_length_of_thousands_of_digits_gets_400(deployment: Deployment) -> None:
    owner = deployment.user("numbers")
    project = deployment.project(owner)
    location = tus_create(owner, project, "0" * 64, 10)
    path = urlsplit(location).path
    for method, target, extra in [
        ("PATCH", path, "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"),
        ("POST", "/api/v1/projects", "Content-Type: application/json\r\n"),
    ]:
        answer = raw_request(
            deployment.url,
            f"{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {owner.token}\r\n"
            f"Tus-Resumable: 1.0.0\r\n{extra}Content-Length: {HUGE}\r\n",
        )
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:300]


def test_range_of_thousands_of_digits_is_read_as_past_the_end(deployment: Deployment) -> None:
    owner = deployment.user("numbers")
    project = deployment.project(owner)
    data = os.urandom(1000)
    sha = deployment.upload(owner, project, data)
    path = f"/projects/{project}/blobs/{sha}"

    to_the_end = owner.get(path, headers={"Range": f"bytes=10-{HUGE}"})
    assert to_the_end.status_code == 206, to_the_end.text[:300]
    assert to_the_end.content == data[10:]

    suffix = owner.get(path, headers={"Range": f"bytes=-{HUGE}"})
    assert suffix.status_code == 206
    assert suffix.content == data

    past = owner.get(path, headers={"Range": f"bytes={HUGE}-"})
    assert past.status_code == 416


@pytest.mark.parametrize("value", [HUGE, PAST_BIGINT, "abc"])
def test_last_event_id_of_any_shape_gets_400(deployment: Deployment, value: str) -> None:
    owner = deployment.user("numbers")

    r = owner.get("/events", headers={"Last-Event-ID": value}, stream=True)

    assert_error(r)
    assert "Last-Event-ID" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/events?since={n}",
        "/projects/{project}/models/m/versions?before={n}",
        "/projects/{project}/models/m/versions?limit={n}",
        "/projects/{project}/runs?before={n}",
        "/projects/{project}/runs/{n}",
        "/projects/{project}/models/m/versions/{n}",
        "/tokens/{n}",
    ],
)
def test_numeric_parameters_of_thousands_of_digits_get_4xx(
    deployment: Deployment, path: str
) -> None:
    owner = deployment.user("numbers")
    project = deployment.project(owner)
    owner.post(f"/projects/{project}/models", json={"name": "m"})
    method = "DELETE" if path.startswith("/tokens") else "GET"

    for n in (HUGE, PAST_BIGINT):
        r = owner(method, path.format(project=project, n=n), stream=True)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:300])
        assert set(r.json()["error"]) >= {"code", "message"}
