"""Fixtures of the web console tests: one real SQLite server with a project whose people hold
every role, a model with versions of real files taken during a run with logged metrics, and one
real headless Chromium (Debian's `chromium`, driven by Playwright) for the whole session.

Browser tests each get a fresh browser context (their own cookies), which costs milliseconds;
starting Chromium costs about a second, so it happens once.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from lmvp_desktop.platform_check import describe_missing, missing_libraries
from tests.support import Api, Deployment, unique

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
RUN_STEPS = 1000
CHECKPOINT_STEPS = (250, 500, 750)


@dataclass
class Console:
    """The seeded deployment: who is who, and what exists."""

    deployment: Deployment
    project: str
    model: str
    run: int
    owner: Api
    maintainer: Api
    viewer: Api
    outsider: Api
    # version number -> {path: bytes}
    files: dict[int, dict[str, bytes]]

    @property
    def url(self) -> str:
        return self.deployment.url

    @property
    def model_path(self) -> str:
        return f"/projects/{self.project}/models/{self.model}"

    def password(self, api: Api) -> str:
        return "password-" + api.username  # type: ignore[attr-defined]

    def alias_target(self, alias: str) -> int | None:
        r = self.owner.get(f"{self.model_path}/aliases")
        assert r.status_code == 200, r.text
        return next((a["version"] for a in r.json() if a["name"] == alias), None)


@pytest.fixture(scope="session")
def console(sqlite_deployment: Deployment) -> Console:
    d = sqlite_deployment
    owner = d.user("owner")
    maintainer, viewer, outsider = d.user("maint"), d.user("viewer"), d.user("outsider")
    project = d.project(owner, prefix="vision")
    d.add_member(project, maintainer, "maintainer")
    d.add_member(project, viewer, "viewer")
    model = "resnet"
    assert owner.post(f"/projects/{project}/models", json={"name": model}).status_code == 201
    r = owner.post(
        f"/projects/{project}/runs",
        json={"model": model, "name": "lr-sweep", "host": "gpu-1", "params": {"lr": 0.001}},
    )
    assert r.status_code == 201, r.text
    run = r.json()["id"]
    steps = list(range(RUN_STEPS))
    loss = [2.5 * math.exp(-s / 300) + 0.05 * math.sin(s / 7) for s in steps]
    acc = [1 - 0.9 * math.exp(-s / 250) for s in steps]
    r = owner.post(
        f"/runs/{run}/metrics",
        json={
            "series": [
                {"key": "loss", "steps": steps, "values": loss},
                {"key": "accuracy", "steps": steps, "values": acc},
            ]
        },
    )
    assert r.status_code == 200, r.text
    files: dict[int, dict[str, bytes]] = {}
    for number, step in enumerate(CHECKPOINT_STEPS, start=1):
        content = {
            "model.safetensors": bytes([number]) * 1000 + unique("weights").encode(),
            "config/config.json": b'{"layers": 50, "version": %d}' % number,
        }
        r = d.commit(
            owner,
            project,
            model,
            content,
            message=f"checkpoint at step {step}",
            run=run,
            step=step,
            metadata={"framework": "torch", "epoch": number},
            parent=number - 1 if number > 1 else None,
        )
        assert r.status_code == 201, r.text
        assert r.json()["number"] == number
        files[number] = content
    r = owner.put(f"/projects/{project}/models/{model}/aliases/production", json={"version": 1})
    assert r.status_code == 200, r.text
    return Console(d, project, model, run, owner, maintainer, viewer, outsider, files)


# --- plain HTTP sessions, as a browser would hold them ------------------------------------------


class WebSession:
    """A requests session logged in through the console's own login form."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()

    def get(self, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 30)
        kw.setdefault("allow_redirects", False)
        return self.http.get(self.url + path, **kw)

    def post(self, path: str, data: dict[str, str], **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 30)
        kw.setdefault("allow_redirects", False)
        return self.http.post(self.url + path, data=data, **kw)

    def login(self, username: str, password: str) -> requests.Response:
        form = self.get("/login")
        assert form.status_code == 200
        token = hidden_field(form.text, "csrf")
        return self.post(
            "/login", {"csrf": token, "username": username, "password": password, "next": "/"}
        )

    def csrf(self) -> str:
        """The session's CSRF token, as every page's logout form carries it."""
        page = self.get("/")
        assert page.status_code == 200, page.text
        return hidden_field(page.text, "csrf")


def hidden_field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no {name} field in the page"
    return match.group(1)


@pytest.fixture
def web_as(console: Console) -> Any:
    """`web_as(api)`: a WebSession logged in as that user."""

    def login(api: Api) -> WebSession:
        session = WebSession(console.url)
        r = session.login(api.username, console.password(api))  # type: ignore[attr-defined]
        assert r.status_code == 303, r.text
        return session

    return login


# --- the browser --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not shutil.which(CHROMIUM):
        pytest.fail("Chromium is not installed: `make setup` installs Debian's chromium package")
    problem = driver_problem()
    if problem:
        # Otherwise Playwright says only "Connection closed while reading from the driver".
        pytest.fail(problem, pytrace=False)
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # As root (containers, CI) Chromium refuses to start with its sandbox on.
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        yield chromium
        chromium.close()


def driver_problem() -> str | None:
    """Why Playwright's node driver cannot start here (shared libraries it lacks), or None."""
    from playwright._impl._driver import compute_driver_executable

    node = Path(compute_driver_executable()[0])
    missing = missing_libraries(node)
    return describe_missing(f"Playwright's browser driver ({node})", missing) if missing else None


@pytest.fixture
def new_page(browser: Any, console: Console) -> Iterator[Any]:
    """`new_page(api=None, **context_options)`: a page in a fresh browser context, logged in as
    `api` through the login form when given."""
    contexts = []

    def make(api: Api | None = None, **options: Any) -> Any:
        context = browser.new_context(base_url=console.url, accept_downloads=True, **options)
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.new_page()
        if api is not None:
            page.goto("/login")
            page.fill("input[name=username]", api.username)  # type: ignore[attr-defined]
            page.fill("input[name=password]", console.password(api))
            page.click("button[type=submit]")
            page.wait_for_url(console.url + "/")
        return page

    yield make
    for context in contexts:
        context.close()
