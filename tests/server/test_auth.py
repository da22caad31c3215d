"""Authentication: password logins, API tokens (scopes, expiry, revocation) and what the
database keeps of secrets (only hashes)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from sqlalchemy import select, update

from lmvp_server.db import utcnow
from lmvp_server.models import Token, User
from tests.support import (
    Api,
    Deployment,
    at_the_same_moment,
    server_database,
    sha256_bytes,
    unique,
)


def _login(deployment: Deployment, username: str, password: str) -> requests.Response:
    return requests.post(
        f"{deployment.url}/api/v1/auth/login",
        json={"username": username, "password": password},
        timeout=30,
    )


def _assert_error(r: requests.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


# --- logging in ---------------------------------------------------------------------------------


def test_login_returns_a_token_that_identifies_the_user(deployment: Deployment) -> None:
    alice = deployment.user("alice")
    r = _login(deployment, alice.username, "password-" + alice.username)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token"].startswith("lmvp_")
    assert body["user"]["username"] == alice.username
    assert body["expires_at"] is not None

    me = Api(deployment.url, body["token"]).get("/me")
    assert me.status_code == 200
    assert me.json()["username"] == alice.username
    assert me.json()["is_admin"] is False


def test_wrong_password_and_unknown_user_get_the_same_401(deployment: Deployment) -> None:
    alice = deployment.user("alice")
    wrong_password = _login(deployment, alice.username, "not-her-password")
    unknown_user = _login(deployment, "nobody-by-this-name", "not-her-password")
    _assert_error(wrong_password, 401, "invalid_credentials")
    _assert_error(unknown_user, 401, "invalid_credentials")
    # Nothing in the answer tells an attacker which usernames exist.
    assert wrong_password.json() == unknown_user.json()


@pytest.mark.parametrize("username", ["admin\x00", "\ud800"])
def test_a_login_with_an_unstorable_username_is_a_client_error(
    deployment: Deployment, username: str
) -> None:
    # PostgreSQL cannot even compare text holding a NUL: refuse it before asking the database.
    _assert_error(_login(deployment, username, "whatever"), 422, "invalid_request")


def test_requests_without_a_token_get_401(deployment: Deployment) -> None:
    r = Api(deployment.url).get("/me")
    _assert_error(r, 401, "not_authenticated")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    [
        "lmvp_abcdefghijklmnopqrstuvwxyz",  # no scheme
        "Basic YWRtaW46YWRtaW4=",
        "Bearer",
        "Bearer ",
        "Bearer not-an-lmvp-token-at-all",
        "Bearer lmvp_short",
        "Bearer lmvp_" + "x" * 200,
        "Bearer lmvp_abcdefghijklmnopqrstuvwxyz0123456789",  # well formed, but never issued
    ],
)
def test_malformed_or_unknown_tokens_get_401(deployment: Deployment, header: str) -> None:
    r = requests.get(f"{deployment.url}/api/v1/me", headers={"Authorization": header}, timeout=30)
    error = _assert_error(r, 401)
    assert error["code"] in ("invalid_token", "not_authenticated")


def test_creating_one_username_at_once_makes_one_user(deployment: Deployment) -> None:
    name = unique("contested")

    def create(_: int) -> int:
        admin = Api(deployment.url, deployment.admin.token)
        return admin.post("/users", json={"username": name, "password": "password-x"}).status_code

    assert sorted(at_the_same_moment(4, create)) == [201, 409, 409, 409]


# --- tokens -------------------------------------------------------------------------------------


def test_tokens_can_be_created_listed_and_revoked(deployment: Deployment) -> None:
    alice = deployment.user("alice")
    r = alice.post("/tokens", json={"name": "laptop", "scope": "write", "expires_in_days": 7})
    assert r.status_code == 201, r.text
    created = r.json()
    secret = created["token"]
    assert secret.startswith(created["prefix"])
    assert created["name"] == "laptop" and created["scope"] == "write"
    assert created["expires_at"] is not None and created["revoked_at"] is None

    laptop = Api(deployment.url, secret)
    assert laptop.get("/me").json()["username"] == alice.username

    listing = alice.get("/tokens").json()
    assert created["id"] in [t["id"] for t in listing]
    # A listing shows which token is which, never a secret.
    assert all("token" not in t and "token_hash" not in t for t in listing)
    assert secret not in str(listing)
    laptop_row = next(t for t in listing if t["id"] == created["id"])
    assert laptop_row["last_used_at"] is not None

    assert alice.delete(f"/tokens/{created['id']}").status_code == 204
    _assert_error(laptop.get("/me"), 401, "token_revoked")
    revoked = next(t for t in alice.get("/tokens").json() if t["id"] == created["id"])
    assert revoked["revoked_at"] is not None
    # The login token that revoked it still works.
    assert alice.get("/me").status_code == 200


def test_a_user_cannot_see_or_revoke_someone_elses_token(deployment: Deployment) -> None:
    alice = deployment.user("alice")
    mallory = deployment.user("mallory")
    token_id = alice.post("/tokens", json={"name": "ci"}).json()["id"]
    assert token_id not in [t["id"] for t in mallory.get("/tokens").json()]
    _assert_error(mallory.delete(f"/tokens/{token_id}"), 404, "not_found")
    assert next(t for t in alice.get("/tokens").json() if t["id"] == token_id)["revoked_at"] is None


def test_expired_token_gets_401_token_expired(deployment: Deployment) -> None:
    alice = deployment.user("alice")
    created = alice.post("/tokens", json={"name": "short-lived", "expires_in_days": 1}).json()
    token = Api(deployment.url, created["token"])
    assert token.get("/me").status_code == 200

    with server_database(deployment.server) as db:
        db.execute(
            update(Token)
            .where(Token.id == created["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )

    _assert_error(token.get("/me"), 401, "token_expired")


def test_read_token_can_read_but_never_write(deployment: Deployment) -> None:
    alice = deployment.user("alice")
    project = deployment.project(alice)
    assert deployment.commit(alice, project, "m", {"w.bin": b"weights"}).status_code == 201
    reader = Api(deployment.url, alice.post("/tokens", json={"scope": "read"}).json()["token"])

    for path in (
        f"/projects/{project}",
        f"/projects/{project}/models",
        f"/projects/{project}/models/m/versions/latest",
        f"/projects/{project}/history",
        "/me",
        "/tokens",
    ):
        assert reader.get(path).status_code == 200, path

    writes = [
        ("POST", "/projects", {"name": "never-" + project}),
        ("PATCH", f"/projects/{project}", {"description": "changed"}),
        ("POST", f"/projects/{project}/models", {"name": "other"}),
        ("PUT", f"/projects/{project}/models/m/aliases/best", {"version": 1}),
        ("DELETE", f"/projects/{project}/models/m/versions/1", None),
        ("DELETE", f"/projects/{project}", None),
        # A read token must not mint itself a write token.
        ("POST", "/tokens", {"scope": "write"}),
    ]
    for method, path, body in writes:
        r = reader(method, path, json=body)
        _assert_error(r, 403, "forbidden")
    assert alice.get(f"/projects/{project}").json()["description"] == ""
    assert alice.get(f"/projects/{project}/models/m/versions/1").status_code == 200


# --- what the database keeps --------------------------------------------------------------------


def test_tokens_are_stored_only_as_hashes(deployment: Deployment) -> None:
    alice = deployment.user("alice")
    secret = alice.post("/tokens", json={"name": "hashed"}).json()["token"]

    with server_database(deployment.server) as db:
        rows = db.execute(select(Token.__table__)).all()
        stored = db.scalar(select(Token).where(Token.token_hash == sha256_bytes(secret.encode())))
    assert stored is not None and stored.name == "hashed"
    assert stored.prefix == secret[: len(stored.prefix)] and len(stored.prefix) < len(secret) // 2
    for row in rows:
        assert all(secret not in str(value) for value in row), row


def test_passwords_are_stored_as_argon2_hashes(deployment: Deployment) -> None:
    alice = deployment.user("alice")
    password = "password-" + alice.username
    with server_database(deployment.server) as db:
        stored = db.scalar(select(User.password_hash).where(User.username == alice.username))
    assert stored.startswith("$argon2id$")
    assert password not in stored
