"""The console's sessions, forms and roles over plain HTTP (what a browser sends, without a
browser): the session cookie's attributes, CSRF refusals, logging out, and the same 404 for a
non-member as the API gives, on every page."""

from __future__ import annotations

import re
from typing import Any

import pytest
import requests

from tests.web.conftest import Console, WebSession, hidden_field


def test_login_sets_an_httponly_samesite_session_cookie_holding_a_stored_token(
    console: Console,
) -> None:
    web = WebSession(console.url)
    r = web.login(console.viewer.username, console.password(console.viewer))  # type: ignore[attr-defined]
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = next(c for c in r.raw.headers.getlist("set-cookie") if c.startswith("lmvp_session="))
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "samesite=lax" in cookie.lower()
    assert "secure" not in attributes  # served over plain HTTP on loopback here
    secret = web.http.cookies["lmvp_session"]
    # The cookie's secret is a real token: it opens the API too, and is listed as a session.
    as_token = requests.get(
        f"{console.url}/api/v1/tokens", headers={"Authorization": f"Bearer {secret}"}, timeout=30
    )
    assert as_token.status_code == 200
    assert any(t["name"] == "web console session" for t in as_token.json())


def test_wrong_password_shows_the_form_again_without_a_session(console: Console) -> None:
    web = WebSession(console.url)
    r = web.login(console.viewer.username, "not-the-password")  # type: ignore[attr-defined]
    assert r.status_code == 401
    assert "Wrong username or password" in r.text
    assert "lmvp_session" not in web.http.cookies


def test_login_form_posted_without_its_csrf_token_is_refused(console: Console) -> None:
    web = WebSession(console.url)
    web.get("/login")  # sets the double-submit cookie, whose value we leave out of the form
    r = web.post(
        "/login",
        {"username": console.viewer.username, "password": console.password(console.viewer)},  # type: ignore[attr-defined]
    )
    assert r.status_code == 403
    assert "lmvp_session" not in web.http.cookies


def test_pages_without_a_session_redirect_to_the_login_form(console: Console) -> None:
    r = requests.get(
        f"{console.url}{console.model_path}?before=3", allow_redirects=False, timeout=30
    )
    assert r.status_code == 303
    assert r.headers["location"] == (
        f"/login?next=%2Fprojects%2F{console.project}%2Fmodels%2F{console.model}%3Fbefore%3D3"
    )
    r = requests.get(
        f"{console.url}/projects/{console.project}/runs/{console.run}/metrics.json", timeout=30
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "not_authenticated"


def test_login_goes_back_to_the_page_asked_for_but_never_to_another_site(
    console: Console,
) -> None:
    for asked, landing in [(console.model_path, console.model_path), ("//evil.example/", "/")]:
        web = WebSession(console.url)
        form = web.get(f"/login?next={asked}")
        r = web.post(
            "/login",
            {
                "csrf": hidden_field(form.text, "csrf"),
                "username": console.viewer.username,  # type: ignore[attr-defined]
                "password": console.password(console.viewer),
                "next": hidden_field(form.text, "next"),
            },
        )
        assert r.status_code == 303 and r.headers["location"] == landing


@pytest.mark.parametrize("token", [None, "", "0" * 64])
def test_form_post_without_the_sessions_csrf_token_is_refused(
    console: Console, web_as: Any, token: str | None
) -> None:
    """A maintainer's real session, but a form without the right token: 403, nothing moves."""
    web: WebSession = web_as(console.maintainer)
    data = {"alias": "production", "version": "3"}
    if token is not None:
        data["csrf"] = token
    r = web.post(f"{console.model_path}/aliases", data)
    assert r.status_code == 403
    assert "security token" in r.text
    assert console.alias_target("production") == 1
    # The same post with the session's token goes through: the refusal was the token's.
    r = web.post(f"{console.model_path}/aliases", {**data, "alias": "csrf-ok", "csrf": web.csrf()})
    assert r.status_code == 303
    assert console.alias_target("csrf-ok") == 3


def test_another_sessions_csrf_token_is_refused(console: Console, web_as: Any) -> None:
    maintainer: WebSession = web_as(console.maintainer)
    other: WebSession = web_as(console.maintainer)
    r = maintainer.post(
        f"{console.model_path}/aliases",
        {"alias": "stolen", "version": "2", "csrf": other.csrf()},
    )
    assert r.status_code == 403
    assert console.alias_target("stolen") is None


def test_logout_revokes_the_session_so_a_kept_cookie_no_longer_works(
    console: Console, web_as: Any
) -> None:
    web: WebSession = web_as(console.viewer)
    kept = web.http.cookies["lmvp_session"]
    assert web.get("/").status_code == 200
    r = web.post("/logout", {"csrf": web.csrf()})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    replay = requests.get(
        f"{console.url}/", cookies={"lmvp_session": kept}, allow_redirects=False, timeout=30
    )
    assert replay.status_code == 303 and replay.headers["location"].startswith("/login")


def test_logout_without_csrf_token_is_refused(console: Console, web_as: Any) -> None:
    web: WebSession = web_as(console.viewer)
    assert web.post("/logout", {}).status_code == 403
    assert web.get("/").status_code == 200


def test_non_member_gets_404_on_every_page_of_the_project(console: Console, web_as: Any) -> None:
    web: WebSession = web_as(console.outsider)
    p, m = f"/projects/{console.project}", console.model_path
    for path in [
        p,
        f"{p}?before=5",
        f"{p}/members",
        f"{p}/audit",
        m,
        f"{m}/versions/1",
        f"{m}/versions/production",
        f"{m}/versions/1/files/model.safetensors",
        f"{p}/runs/{console.run}",
        f"{p}/runs/{console.run}/metrics.json",
        f"{m}/compare?a=1&b=2",
        f"{p}/trash",
        f"{m}/versions/1/delete",
        f"{m}/delete",
        f"{p}/audit?kind=version&who={console.owner.username}",  # type: ignore[attr-defined]
    ]:
        r = web.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert "not a member" in r.text, path
    csrf = web.csrf()
    for path, data in [
        (f"{m}/aliases", {"alias": "x", "version": "1"}),
        (f"{m}/aliases/production/delete", {"version": "1"}),
        (f"{p}/members", {"username": console.outsider.username, "role": "owner"}),  # type: ignore[attr-defined]
        (f"{p}/models", {"name": "sneaky"}),
        (f"{m}/versions/1/delete", {"confirmed": "yes"}),
        (f"{m}/delete", {"confirmed": "yes"}),
        (f"{m}/versions/1/restore", {}),
    ]:
        assert web.post(path, {**data, "csrf": csrf}).status_code == 404, path
    assert console.project not in web.get("/").text
    found = web.get("/search", params={"q": console.project}).text
    assert f'href="/projects/{console.project}' not in found
    assert "Nothing you can read matches" in found


def test_project_list_shows_only_the_users_projects_with_their_role(
    console: Console, web_as: Any
) -> None:
    page = web_as(console.viewer).get("/")
    assert page.status_code == 200
    assert f'href="/projects/{console.project}"' in page.text
    assert "viewer" in page.text


def test_aliases_and_latest_redirect_to_the_versions_number(console: Console, web_as: Any) -> None:
    web: WebSession = web_as(console.viewer)
    target = console.alias_target("production")
    for ref, number in [("production", target), ("latest", 3), ("v2", 2)]:
        r = web.get(f"{console.model_path}/versions/{ref}")
        assert r.status_code == 303, ref
        assert r.headers["location"] == f"{console.model_path}/versions/{number}"
    assert web.get(f"{console.model_path}/versions/99").status_code == 404


def test_pages_load_every_asset_from_the_server_itself(console: Console, web_as: Any) -> None:
    web: WebSession = web_as(console.viewer)
    for path in ["/", console.model_path, f"/projects/{console.project}/runs/{console.run}"]:
        html = web.get(path).text
        assets = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="([^"]+)"', html)
        assert assets, path
        for asset in assets:
            assert asset.startswith("/static/"), asset
            r = web.get(asset)
            assert r.status_code == 200 and r.content, asset


def test_metrics_json_is_the_apis_downsampled_answer_for_the_session(
    console: Console, web_as: Any
) -> None:
    web: WebSession = web_as(console.viewer)
    r = web.get(f"/projects/{console.project}/runs/{console.run}/metrics.json?max_points=100")
    assert r.status_code == 200
    series = {s["key"]: s for s in r.json()["series"]}
    assert set(series) == {"loss", "accuracy"}
    assert series["loss"]["downsampled"] and len(series["loss"]["steps"]) <= 100
    assert series["loss"]["count"] == 1000
    # The same run under another project's name is not found.
    other = web.get(f"/projects/not-{console.project}/runs/{console.run}/metrics.json")
    assert other.status_code == 404


def test_a_refused_member_change_says_why(console: Console, web_as: Any) -> None:
    web: WebSession = web_as(console.owner)
    csrf = web.csrf()
    p = f"/projects/{console.project}"
    r = web.post(f"{p}/members", {"csrf": csrf, "username": "nobody-here", "role": "viewer"})
    assert r.status_code == 404 and "No user named nobody-here" in r.text
    r = web.post(
        f"{p}/members",
        {"csrf": csrf, "username": console.owner.username, "role": "viewer"},  # type: ignore[attr-defined]
    )
    assert r.status_code == 409 and "no owner left" in r.text
    r = web.post(f"{p}/members", {"csrf": csrf, "username": "x", "role": "emperor"})
    assert r.status_code == 422
