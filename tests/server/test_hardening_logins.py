"""Password logins are throttled per account and per address, and password checks are bounded.

The audit sent 40 wrong passwords and then the right one, which logged in; and 80 logins at
once, which took the server to 1.16 GiB (argon2id takes 64 MiB per check at its default cost).
Now an account with 10 failures within the window is refused with 429 and `Retry-After`
whatever the password, until enough failures leave the window; an address with too many
failures likewise; and at most a few checks run at once, so memory stays bounded.

Each test runs a server of its own: failures are counted per address (127.0.0.1 for every
test), so throttling tests on the shared server would lock out the others. (The console's login
form is checked in tests/web/test_hardening_login_form.py.)
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.support import ADMIN_PASSWORD, Api, Deployment, ServerProcess

WINDOW = 6  # seconds: the throttling window of these servers, where a test waits it out


def login(url: str, username: str, password: str) -> requests.Response:
    return requests.post(
        f"{url}/api/v1/auth/login", json={"username": username, "password": password}, timeout=60
    )


@pytest.fixture
def server(backend: str, make_server: Callable[[str], ServerProcess]) -> Iterator[Deployment]:
    server = make_server(backend)
    server.extra_env["LMVP_LOGIN_FAILURE_WINDOW_SECONDS"] = str(WINDOW)
    server.extra_env["LMVP_LOGIN_ADDRESS_FAILURE_LIMIT"] = "25"
    server.start()
    yield Deployment(server, Api(server.url).login("admin", ADMIN_PASSWORD))
    server.stop()


# On SQLite and PostgreSQL: the failures are counted in the database, for every worker.
def test_forty_wrong_passwords_then_the_right_one_get_429_until_the_window_passes(
    server: Deployment,
) -> None:
    name = server.account("victim")
    right = "password-" + name

    statuses = [login(server.url, name, f"guess-{i}").status_code for i in range(40)]
    refused = login(server.url, name, right)

    assert statuses == [401] * 10 + [429] * 30
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_attempts"
    assert "too many failed logins for this account" in refused.json()["error"]["message"]
    wait = int(refused.headers["Retry-After"])
    assert 1 <= wait <= WINDOW
    # Another account from the same address is not held up by this one.
    other = server.account("bystander")
    assert login(server.url, other, "password-" + other).status_code == 200

    time.sleep(wait + 0.5)
    assert login(server.url, name, right).status_code == 200
    # The success cleared the account's failures: a typo later costs nothing.
    assert login(server.url, name, "typo").status_code == 401
    assert login(server.url, name, right).status_code == 200


@pytest.mark.backends("sqlite")  # the same counting as above, by address
def test_one_address_guessing_many_accounts_is_throttled_too(server: Deployment) -> None:
    names = [server.account("sprayed") for _ in range(26)]

    statuses = [login(server.url, n, "Password1").status_code for n in names[:25]]
    refused = login(server.url, names[25], "password-" + names[25])

    assert statuses == [401] * 25
    assert refused.status_code == 429
    assert "your address" in refused.json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) >= 1


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


@pytest.mark.backends("sqlite")  # memory of password checks; the database plays no part
def test_eighty_logins_at_once_at_argon2s_real_cost_keep_memory_bounded(
    make_server: Callable[[str], ServerProcess],
) -> None:
    # Served as users run it: argon2id at its default cost (64 MiB per check). The admin's
    # hash was made by the real CLI, so it has that cost too.
    server = make_server("sqlite")
    server.cheap_password_hashing = False
    server.start()
    try:
        assert server.proc is not None
        assert login(server.url, "admin", ADMIN_PASSWORD).status_code == 200
        before = vm_kib(server.proc.pid, "VmHWM")

        with concurrent.futures.ThreadPoolExecutor(80) as pool:
            answers = list(
                pool.map(lambda _: login(server.url, "admin", ADMIN_PASSWORD), range(80))
            )

        peak = vm_kib(server.proc.pid, "VmHWM")
        statuses = [r.status_code for r in answers]
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(200) >= 10, statuses  # checks went on, a few at a time
        for r in answers:
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "login_busy"
                assert int(r.headers["Retry-After"]) >= 1
        assert (peak - before) < 400 * 1024, (before, peak)  # KiB; it was +1 GiB
        assert Api(server.url).get("/health", timeout=5).ok
    finally:
        server.stop()
