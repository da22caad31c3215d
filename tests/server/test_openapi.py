"""The served OpenAPI document says what a generated client and a tus client rely on, and the
server's 405 answers name every method of a path. (tests/server/test_fuzz.py checks the rest of
the document against the server's behaviour.)

SQLite only: the document and routing are decided above the database.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.support import Deployment

pytestmark = pytest.mark.backends("sqlite")

ERROR_BODY = "#/components/schemas/ErrorBody"


@pytest.fixture(scope="module")
def document(deployment: Deployment) -> dict[str, Any]:
    r = requests.get(f"{deployment.url}/api/v1/openapi.json", timeout=30)
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), p, op) for p, item in doc["paths"].items() for m, op in item.items()]


def test_every_error_status_of_every_operation_has_the_error_body(
    document: dict[str, Any],
) -> None:
    for method, path, op in operations(document):
        for status, response in op["responses"].items():
            if int(status) < 400 or method == "HEAD":
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": ERROR_BODY}, (method, path, status)
    assert document["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_operations_that_need_a_token_say_so_and_document_401(document: dict[str, Any]) -> None:
    open_to_all = {
        ("GET", "/api/v1/health"),
        ("POST", "/api/v1/auth/login"),
        ("OPTIONS", "/api/v1/uploads"),
        ("OPTIONS", "/api/v1/uploads/{upload_id}"),
    }
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for method, path, op in operations(document):
        if (method, path) in open_to_all:
            assert "security" not in op, (method, path)
            continue
        assert op["security"] == [{"bearer": []}], (method, path)
        assert "WWW-Authenticate" in op["responses"]["401"]["headers"], (method, path)
    for method, path, op in operations(document):
        if path.startswith("/api/v1/projects/{project}"):
            assert "404" in op["responses"], (method, path)
        if method not in ("GET", "HEAD", "OPTIONS") and "security" in op:
            assert "403" in op["responses"], (method, path)


def test_tus_operations_document_their_headers(document: dict[str, Any]) -> None:
    uploads = document["paths"]["/api/v1/uploads"]
    upload = document["paths"]["/api/v1/uploads/{upload_id}"]

    def header_params(op: dict[str, Any]) -> dict[str, bool]:
        return {p["name"]: p["required"] for p in op["parameters"] if p["in"] == "header"}

    assert header_params(uploads["post"]) == {
        "Tus-Resumable": True,
        "Upload-Length": True,
        "Upload-Metadata": True,
    }
    assert header_params(upload["patch"]) == {"Tus-Resumable": True, "Upload-Offset": True}
    assert header_params(upload["head"]) == {"Tus-Resumable": True}
    assert header_params(upload["delete"]) == {"Tus-Resumable": True}
    assert "application/offset+octet-stream" in upload["patch"]["requestBody"]["content"]
    created = uploads["post"]["responses"]["201"]["headers"]
    assert {"Location", "Upload-Offset", "Tus-Resumable", "LMVP-Blob-Sha256"} <= set(created)
    assert created["Location"]["required"]
    assert {"Upload-Offset", "Upload-Length"} <= set(upload["head"]["responses"]["200"]["headers"])
    assert "412" in uploads["post"]["responses"] and "409" in upload["patch"]["responses"]
    for options in (uploads["options"], upload["options"]):
        discovery = options["responses"]["204"]["headers"]
        assert {"Tus-Version", "Tus-Extension", "Tus-Max-Size"} <= set(discovery)
    assert [p["name"] for p in upload["options"]["parameters"]] == ["upload_id"]


def test_options_of_an_upload_answers_tus_discovery(deployment: Deployment) -> None:
    r = requests.options(f"{deployment.url}/api/v1/uploads/0123456789abcdef", timeout=30)
    assert r.status_code == 204
    assert r.headers["Tus-Version"] == "1.0.0"
    assert r.headers["Tus-Extension"] == "creation,termination"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("OPTIONS", "/projects", "GET, POST"),
        ("PUT", "/projects/p", "DELETE, GET, PATCH"),
        ("GET", "/uploads/0123", "DELETE, HEAD, OPTIONS, PATCH"),
        ("GET", "/projects/p/blobs/missing", "POST"),
    ],
)
def test_method_not_allowed_names_every_method_of_the_path(
    deployment: Deployment, method: str, path: str, allowed: str
) -> None:
    r = deployment.admin(method, path)
    assert r.status_code == 405, r.text
    assert r.headers["Allow"] == allowed
    assert r.json()["error"]["code"] == "method_not_allowed"
