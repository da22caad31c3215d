"""Every answer tells the browser to keep the console to itself: no framing by another page, no
content sniffing, only the server's own scripts, no referrer to other sites. Checked on an API
answer, an error, a blob download, a console page and a static script; the console's charts
still drawing under this policy is checked in Chromium by tests/web/test_browser.py.

SQLite only: these headers are added by a middleware; the database plays no part.
"""

from __future__ import annotations

import os

import pytest
import requests

from tests.support import Api, Deployment

pytestmark = pytest.mark.backends("sqlite")


def assert_guarded(r: requests.Response, *, scripts: bool = True) -> None:
    assert r.headers["X-Frame-Options"] == "DENY", r.headers
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "same-origin"
    policy = {
        part.strip().split(" ", 1)[0]: part.strip().split(" ", 1)[1]
        for part in r.headers["Content-Security-Policy"].split(";")
    }
    assert policy["frame-ancestors"] == "'none'"
    if scripts:
        assert policy["script-src"] == "'self'"  # no 'unsafe-inline', no other origin
        assert policy["object-src"] == "'none'"


def test_api_answers_and_errors_carry_the_headers(deployment: Deployment) -> None:
    assert_guarded(Api(deployment.url).get("/health"))
    refused = Api(deployment.url).get("/me")
    assert refused.status_code == 401
    assert_guarded(refused)


def test_a_blob_download_is_never_sniffed_or_framed(deployment: Deployment) -> None:
    owner = deployment.user("headers")
    project = deployment.project(owner)
    data = b"<html><script>alert(1)</script></html>" + os.urandom(64)
    sha = deployment.upload(owner, project, data)

    r = owner.get(f"/projects/{project}/blobs/{sha}")

    assert r.status_code == 200
    assert r.content == data
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert_guarded(r)


def test_console_pages_and_their_scripts_carry_the_headers(deployment: Deployment) -> None:
    for path in ["/login", "/", "/static/run.js", "/no-such-page"]:
        r = requests.get(deployment.url + path, timeout=30, allow_redirects=False)
        assert r.status_code in (200, 303, 404), (path, r.status_code)
        assert_guarded(r)


def test_api_docs_still_load_their_scripts_but_cannot_be_framed(deployment: Deployment) -> None:
    r = requests.get(deployment.url + "/api/v1/docs", timeout=30)

    assert r.status_code == 200
    assert_guarded(r, scripts=False)
