"""The console's login form is throttled like the API's login: after 10 wrong passwords for an
account, the form comes back with the reason and when to try again (429 with `Retry-After`),
also for the right password, until the window has passed.

A server of its own (failures are counted per address, and every test logs in from 127.0.0.1),
with a short window so that the test can wait it out.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.support import ADMIN_PASSWORD, Api, Deployment, ServerProcess

WINDOW = 5


@pytest.fixture
def server(make_server: Callable[[str], ServerProcess]) -> Iterator[Deployment]:
    server = make_server("sqlite")
    server.extra_env["LMVP_LOGIN_FAILURE_WINDOW_SECONDS"] = str(WINDOW)
    server.start()
    yield Deployment(server, Api(server.url).login("admin", ADMIN_PASSWORD))
    server.stop()


def submit(url: str, username: str, password: str) -> requests.Response:
    """Open the login page and send its form, as a browser would."""
    browser = requests.Session()
    page = browser.get(f"{url}/login", timeout=30)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf, page.text[:500]
    return browser.post(
        f"{url}/login",
        data={"csrf": csrf.group(1), "next": "/", "username": username, "password": password},
        allow_redirects=False,
        timeout=60,
    )


def test_a_throttled_form_login_says_why_and_when_to_try_again(server: Deployment) -> None:
    name = server.account("formuser")
    right = "password-" + name

    wrong = [submit(server.url, name, f"guess-{i}") for i in range(10)]
    refused = submit(server.url, name, right)

    assert [r.status_code for r in wrong] == [401] * 10
    assert "Wrong username or password." in wrong[0].text
    assert refused.status_code == 429
    alert = re.search(r'<p class="error" role="alert">([^<]+)</p>', refused.text)
    assert alert, refused.text[:1000]
    assert "Too many failed logins for this account: try again in" in html.unescape(alert[1])
    assert 'name="username"' in refused.text  # the form is there to try again
    wait = int(refused.headers["Retry-After"])
    assert 1 <= wait <= WINDOW

    time.sleep(wait + 0.5)
    ok = submit(server.url, name, right)
    assert ok.status_code == 303, ok.text[:500]
    assert "lmvp_session" in ok.cookies
