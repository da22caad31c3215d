"""The `lmvp-server` command line (`python -m lmvp_server ...`): creating users and tokens that a
running server accepts at once, migrating a database any number of times, and the first start
of `serve` on an empty data directory, which makes an admin and says how to log in."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import argon2
import pytest
import requests
from sqlalchemy import func, select, text

from lmvp_server.models import User
from tests.conftest import need_postgres
from tests.support import (
    Api,
    Deployment,
    PostgresCluster,
    ServerProcess,
    _die_with_parent,
    free_port,
    server_database,
    unique,
)

# The commands' reads and writes go through the same ORM code as the API's, so SQLite is enough
# for them; PostgreSQL also runs what its database itself decides: a name taken twice (a unique
# constraint), a token's stored expiry time, and the migrations (`migrate`, a first `serve`).
SQLITE_ONLY = pytest.mark.backends("sqlite")


def _password_login(url: str, username: str, password: str) -> requests.Response:
    return requests.post(
        f"{url}/api/v1/auth/login", json={"username": username, "password": password}, timeout=30
    )


# --- user create --------------------------------------------------------------------------------


@SQLITE_ONLY
def test_user_create_makes_a_user_who_can_log_in_to_the_running_server(
    deployment: Deployment,
) -> None:
    name = unique("cli-user")
    result = deployment.server.cli(
        "user", "create", name, "--password-stdin", stdin="a good long password\n"
    )
    assert result.returncode == 0, result.stderr
    assert name in result.stdout

    login = _password_login(deployment.url, name, "a good long password")
    assert login.status_code == 200, login.text
    assert login.json()["user"]["is_admin"] is False


@SQLITE_ONLY
def test_user_create_admin_makes_a_server_admin(deployment: Deployment) -> None:
    name = unique("cli-admin")
    result = deployment.server.cli(
        "user", "create", name, "--admin", "--password-stdin", stdin="an admin password\n"
    )
    assert result.returncode == 0, result.stderr

    admin = Api(deployment.url).login(name, "an admin password")
    assert admin.get("/me").json()["is_admin"] is True
    r = admin.post(
        "/users", json={"username": unique("made-by-cli-admin"), "password": "password-x"}
    )
    assert r.status_code == 201, r.text


def test_user_create_refuses_an_existing_name_and_keeps_the_old_password(
    deployment: Deployment,
) -> None:
    name = unique("cli-dup")
    first = deployment.server.cli(
        "user", "create", name, "--password-stdin", stdin="the first password\n"
    )
    assert first.returncode == 0, first.stderr

    again = deployment.server.cli(
        "user", "create", name, "--admin", "--password-stdin", stdin="a second password\n"
    )
    assert again.returncode != 0
    assert "already exists" in again.stderr
    assert "Traceback" not in again.stderr
    assert _password_login(deployment.url, name, "the first password").status_code == 200
    assert _password_login(deployment.url, name, "a second password").status_code == 401


@pytest.mark.parametrize(
    ("name", "password"),
    [
        ("short-password", "1234567"),
        ("no spaces in names", "long enough password"),
        ("slash/in/name", "long enough password"),
        ("x" * 65, "long enough password"),
        (".leading-dot", "long enough password"),
    ],
)
def test_user_create_refuses_bad_names_and_short_passwords(
    tmp_path: Path, name: str, password: str
) -> None:
    # The same rules as the API's, checked before the database is even opened.
    server = ServerProcess(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'lmvp.db'}")
    result = server.cli("user", "create", name, "--password-stdin", stdin=password + "\n")
    assert result.returncode != 0
    assert result.stderr.startswith("error:"), result.stderr
    assert not (tmp_path / "lmvp.db").exists()


# --- token create -------------------------------------------------------------------------------


@SQLITE_ONLY
def test_token_create_prints_a_token_the_running_server_accepts(deployment: Deployment) -> None:
    user = deployment.user("cli-token")
    result = deployment.server.cli("token", "create", user.username, "--name", "ci")  # type: ignore[attr-defined]
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.startswith("lmvp_") and "\n" not in token

    api = Api(deployment.url, token)
    assert api.get("/me").json()["username"] == user.username  # type: ignore[attr-defined]
    assert api.post("/projects", json={"name": unique("by-cli-token")}).status_code == 201
    assert "ci" in [t["name"] for t in user.get("/tokens").json()]


def test_token_create_with_read_scope_and_expiry(deployment: Deployment) -> None:
    user = deployment.user("cli-token")
    result = deployment.server.cli(
        "token",
        "create",
        user.username,
        "--scope",
        "read",  # type: ignore[attr-defined]
        "--expires-days",
        "2",
    )
    assert result.returncode == 0, result.stderr
    reader = Api(deployment.url, result.stdout.strip())
    assert reader.get("/me").status_code == 200
    assert reader.post("/projects", json={"name": unique("never")}).status_code == 403
    listed = next(t for t in user.get("/tokens").json() if t["scope"] == "read")
    assert listed["expires_at"] is not None


@SQLITE_ONLY
def test_token_create_refuses_an_unknown_user(deployment: Deployment) -> None:
    result = deployment.server.cli("token", "create", unique("nobody"))
    assert result.returncode != 0
    assert result.stdout == ""
    assert "user create" in result.stderr  # says how to make one


@pytest.mark.parametrize("days", ["0", "-3"])
def test_token_create_refuses_a_lifetime_that_is_not_a_positive_number_of_days(
    tmp_path: Path, days: str
) -> None:
    server = ServerProcess(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'lmvp.db'}")
    result = server.cli("token", "create", "admin", "--expires-days", days)
    assert result.returncode != 0
    assert result.stdout == ""
    assert "--expires-days" in result.stderr


# --- migrate ------------------------------------------------------------------------------------


def test_migrate_is_idempotent_on_a_live_database(deployment: Deployment) -> None:
    # `serve` migrated this database already: migrating again changes nothing and breaks nothing.
    result = deployment.server.cli("migrate")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    with server_database(deployment.server) as db:
        assert len(db.execute(text("SELECT version_num FROM alembic_version")).all()) == 1
    assert deployment.admin.get("/me").status_code == 200


def test_migrate_creates_the_schema_of_an_empty_database(
    fresh_database: str, tmp_path: Path
) -> None:
    server = ServerProcess(data_dir=tmp_path, database_url=fresh_database)
    for _ in range(2):
        result = server.cli("migrate")
        assert result.returncode == 0, result.stderr
    with server_database(server) as db:
        assert db.scalar(select(func.count()).select_from(User)) == 0
        assert len(db.execute(text("SELECT version_num FROM alembic_version")).all()) == 1


# --- serve --------------------------------------------------------------------------------------


@dataclass
class FirstStart:
    url: str
    password: str | None  # printed at the first start only
    output: str


def test_first_serve_creates_an_admin_and_prints_how_to_log_in(
    fresh_database: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    with _serve(data_dir, fresh_database) as first:
        assert "first login: user 'admin'" in first.output
        assert first.password is not None
        login = _password_login(first.url, "admin", first.password)
        assert login.status_code == 200, login.text
        assert login.json()["user"]["is_admin"] is True
        assert requests.get(f"{first.url}/api/v1/openapi.json", timeout=10).status_code == 200

    secret = data_dir / "initial-admin-password"
    assert secret.read_text().strip() == first.password
    assert secret.stat().st_mode & 0o777 == 0o600

    # A second start makes no second admin and keeps the password, but does not print it again
    # (under systemd every start's output lands in the journal): it says where the file is.
    with _serve(data_dir, fresh_database) as second:
        assert second.password is None
        assert first.password not in second.output
        assert f"first login: see {secret}" in second.output
        assert _password_login(second.url, "admin", first.password).status_code == 200
    with server_database(ServerProcess(data_dir=data_dir, database_url=fresh_database)) as db:
        assert db.scalar(select(func.count()).select_from(User)) == 1
        stored = db.scalar(select(User.password_hash).where(User.username == "admin"))
    # A server run as users run it hashes at argon2's full default cost (the test servers of the
    # other tests hash at the cheapest: tests/server_main.py).
    default, used = argon2.PasswordHasher(), argon2.extract_parameters(stored)
    assert (used.type, used.time_cost, used.memory_cost, used.parallelism) == (
        argon2.Type.ID,
        default.time_cost,
        default.memory_cost,
        default.parallelism,
    )


def test_serve_on_a_database_with_users_prints_no_first_login(deployment: Deployment) -> None:
    assert deployment.server.log_path is not None
    output = deployment.server.log_path.read_text()
    assert f"on {deployment.url}" in output
    assert "first login" not in output


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def fresh_database(backend: str, postgres: PostgresCluster | None, tmp_path: Path) -> str:
    """An empty database of the test's backend that no server has touched."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return need_postgres(postgres).new_database()


@contextlib.contextmanager
def _serve(data_dir: Path, database_url: str, timeout: float = 30.0) -> Iterator[FirstStart]:
    """`lmvp-server serve` as a newcomer runs it: the initial admin on (LMVP_INITIAL_ADMIN
    unset); yields the URL and the password it printed once the server answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMVP_")}
    env.update(LMVP_DATA_DIR=str(data_dir), LMVP_DATABASE_URL=database_url)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmvp_server",
            "serve",
            "--port",
            str(free_port()),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_die_with_parent,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        output = ""
        deadline = time.monotonic() + timeout
        while "log in:" not in output:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, f"serve exited:\n{output}"
            output += line
        url = re.search(r"LMVP server \S+ on (http://\S+)", output)
        password = re.search(r"password '([^']+)'", output)
        assert url and (password or "first login: see" in output), output
        _wait_until_up(url.group(1), deadline)
        yield FirstStart(url=url.group(1), password=password and password.group(1), output=output)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until_up(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(f"{url}/api/v1/health", timeout=1).ok:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer")
