"""The console's forms over plain HTTP (what a browser sends): a refused form comes back on the
page that had it, with the message beside the form and what was typed kept (issue 18: they
were bare "Not accepted"/"Not found" pages whose only link led away); changes that lose
something ask first; creating, inviting, tokens and deleting check the same roles as the API."""

from __future__ import annotations

import html
import re
from typing import Any

from tests.support import unique
from tests.web.conftest import Console, WebSession


def _text(page: str) -> str:
    """The page's text, roughly as a person reads it (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def _field(page: str, form_id: str, name: str) -> str:
    """The value of input `name` inside the form with id `form_id`."""
    form = re.search(rf'<form[^>]*id="{form_id}".*?</form>', page, re.S)
    assert form, f"no form #{form_id} on the page"
    found = re.search(rf'<input name="{name}"[^>]*value="([^"]*)"', form.group(0))
    assert found, f"no input {name} in #{form_id}"
    return html.unescape(found.group(1))


def _events(page: str) -> str:
    """The text of the audit log's table."""
    table = re.search(r'<table class="events">.*?</table>', page, re.S)
    assert table, "no events table"
    return _text(table.group(0))


def test_setting_the_alias_latest_shows_the_version_page_with_the_error_by_the_field(
    console: Console, web_as: Any
) -> None:
    web: WebSession = web_as(console.maintainer)
    r = web.post(
        f"{console.model_path}/aliases",
        {"csrf": web.csrf(), "alias": "latest", "version": "2"},
    )
    assert r.status_code == 422
    assert "resnet v2" in _text(r.text)  # the version page, not a bare error page
    error = re.search(
        r'<p class="error field-error" role="alert" id="set-alias-error">(.*?)</p>', r.text
    )
    assert error and "'latest' cannot be an alias" in html.unescape(error.group(1))
    assert _field(r.text, "set-alias", "alias") == "latest"  # what was typed, kept
    assert 'aria-invalid="true"' in r.text
    assert "Back to your projects" not in r.text
    assert console.alias_target("latest") is None


def test_adding_an_unknown_user_shows_the_members_page_with_the_form_filled(
    console: Console, web_as: Any
) -> None:
    web: WebSession = web_as(console.owner)
    r = web.post(
        f"/projects/{console.project}/members",
        {"csrf": web.csrf(), "username": "nobody", "role": "contributor"},
    )
    assert r.status_code == 404
    text = _text(r.text)
    assert "No user named nobody" in text
    assert "Add a member" in text and console.viewer.username in text  # type: ignore[attr-defined]
    assert _field(r.text, "add-member", "username") == "nobody"
    assert re.search(r'<option value="contributor" selected>', r.text)


def test_a_taken_project_name_keeps_the_create_form_filled_on_the_projects_page(
    console: Console, web_as: Any
) -> None:
    web: WebSession = web_as(console.owner)
    r = web.post("/projects", {"csrf": web.csrf(), "name": console.project, "description": "again"})
    assert r.status_code == 409
    assert f"a project named '{console.project}' already exists" in _text(r.text)
    assert _field(r.text, "create-project", "name") == console.project
    assert _field(r.text, "create-project", "description") == "again"
    r = web.post("/projects", {"csrf": web.csrf(), "name": "no spaces", "description": ""})
    assert r.status_code == 422
    assert "cannot be a project name" in _text(r.text)
    assert _field(r.text, "create-project", "name") == "no spaces"


def test_creating_a_model_needs_a_contributor_and_a_taken_name_stays_on_the_project_page(
    console: Console, web_as: Any
) -> None:
    viewer: WebSession = web_as(console.viewer)
    page = viewer.get(f"/projects/{console.project}")
    assert 'id="create-model"' not in page.text
    r = viewer.post(f"/projects/{console.project}/models", {"csrf": viewer.csrf(), "name": "x"})
    assert r.status_code == 403 and "you are a viewer" in r.text

    owner: WebSession = web_as(console.owner)
    r = owner.post(f"/projects/{console.project}/models", {"csrf": owner.csrf(), "name": "resnet"})
    assert r.status_code == 409
    assert "already exists" in _text(r.text)
    assert _field(r.text, "create-model", "name") == "resnet"
    name = unique("bert")
    r = owner.post(f"/projects/{console.project}/models", {"csrf": owner.csrf(), "name": name})
    assert r.status_code == 303
    assert r.headers["location"] == f"/projects/{console.project}/models/{name}"
    assert console.owner.get(f"/projects/{console.project}/models/{name}").status_code == 200


def test_the_empty_console_leads_to_creating_a_project_not_to_a_command(
    console: Console, web_as: Any
) -> None:
    newcomer = console.deployment.user("newcomer")
    web = WebSession(console.url)
    assert web.login(newcomer.username, "password-" + newcomer.username).status_code == 303  # type: ignore[attr-defined]
    text = _text(web.get("/").text)
    assert "Create your first project" in text
    assert "lmvp projects create" not in text
    name = unique("first")
    r = web.post("/projects", {"csrf": web.csrf(), "name": name, "description": ""})
    assert r.status_code == 303 and r.headers["location"] == f"/projects/{name}"
    assert "you are owner" in _text(web.get(f"/projects/{name}").text)


def test_deleting_a_version_or_a_model_asks_first_and_needs_a_maintainer(
    console: Console, web_as: Any
) -> None:
    d = console.deployment
    model = unique("doomed")
    for step in (1, 2):
        parent = {"parent": 1} if step == 2 else {}
        r = d.commit(
            console.owner, console.project, model, {"w.bin": b"x" * (step * 1000)}, **parent
        )
        assert r.status_code == 201, r.text
    base = f"/projects/{console.project}/models/{model}"
    assert console.owner.put(f"{base}/aliases/best", json={"version": 1}).status_code == 200

    viewer: WebSession = web_as(console.viewer)
    assert 'id="delete-version"' not in viewer.get(f"{base}/versions/1").text
    assert viewer.get(f"{base}/versions/1/delete").status_code == 403
    r = viewer.post(f"{base}/versions/1/delete", {"csrf": viewer.csrf(), "confirmed": "yes"})
    assert r.status_code == 403

    maint: WebSession = web_as(console.maintainer)
    page = maint.get(f"{base}/versions/1/delete")
    assert page.status_code == 200
    text = _text(page.text)
    assert f"v1 of {console.project}/{model} (1 file, 1000 B) will be deleted" in text
    assert "The alias best pointing at it will be removed" in text
    assert "Versions made from it (v2) stay" in text
    assert console.owner.get(f"{base}/versions/1").status_code == 200  # asking deletes nothing
    r = maint.post(f"{base}/versions/1/delete", {"csrf": maint.csrf(), "confirmed": "yes"})
    assert r.status_code == 303 and r.headers["location"] == base
    assert console.owner.get(f"{base}/versions/1").status_code == 404
    # Gone from the console's pages and its search too (it waits in the trash).
    assert f'href="{base}/versions/1"' not in maint.get(base).text
    assert f'href="{base}/versions/1"' not in maint.get(f"/projects/{console.project}").text
    assert f'href="{base}/versions/1"' not in maint.get("/search", params={"q": model}).text
    # The project's trash shows it, and a maintainer restores it with its alias.
    trash = maint.get(f"/projects/{console.project}/trash").text
    assert f"{model} v1" in _text(trash)
    assert "/restore" not in viewer.get(f"/projects/{console.project}/trash").text
    r = maint.post(f"{base}/versions/1/restore", {"csrf": maint.csrf()})
    assert r.status_code == 303 and r.headers["location"] == f"{base}/versions/1"
    assert console.owner.get(f"{base}/versions/1").status_code == 200
    assert console.owner.get(f"{base}/versions/best").json()["number"] == 1
    r = maint.post(f"{base}/versions/1/restore", {"csrf": maint.csrf()})
    assert r.status_code == 404 and "is not in the trash" in _text(r.text)
    assert "Trash" in _text(r.text)  # refused on the trash page itself

    text = _text(maint.get(f"{base}/delete").text)
    assert f"The model {console.project}/{model} will be deleted with its 2 versions" in text
    assert "a maintainer can restore it from the project's Trash page for 7 days" in text
    r = maint.post(f"{base}/delete", {"csrf": maint.csrf(), "confirmed": "yes"})
    assert r.status_code == 303
    assert console.owner.get(base).status_code == 404
    r = maint.post(f"{base}/restore", {"csrf": maint.csrf()})
    assert r.status_code == 303 and r.headers["location"] == base
    assert console.owner.get(base).status_code == 200


def test_a_token_is_shown_once_with_its_scope_and_expiry_works_and_can_be_revoked(
    console: Console, web_as: Any
) -> None:
    web: WebSession = web_as(console.viewer)
    name = unique("ci")
    r = web.post(
        "/tokens",
        {"csrf": web.csrf(), "name": name, "scope": "read", "expires_in_days": "7"},
    )
    assert r.status_code == 201
    text = _text(r.text)
    assert "shown only this once" in text and "only read" in text and "expires on" in text
    secret = re.search(r'<code id="token-secret">([^<]+)</code>', r.text)
    assert secret
    from tests.support import Api

    api = Api(console.url, secret.group(1))
    assert api.get(f"/projects/{console.project}").status_code == 200
    assert api.post("/projects", json={"name": unique("nope")}).status_code == 403  # read only

    listing = web.get("/tokens").text
    assert secret.group(1) not in listing  # never again
    token_id = re.search(rf'<tr id="token-(\d+)">\s*<td>{name}', listing)
    assert token_id
    r = web.post(f"/tokens/{token_id.group(1)}/revoke", {"csrf": web.csrf()})
    assert r.status_code == 303
    assert api.get(f"/projects/{console.project}").status_code == 401
    assert "revoked" in _text(web.get("/tokens").text)

    r = web.post(
        "/tokens", {"csrf": web.csrf(), "name": "", "scope": "write", "expires_in_days": "7"}
    )
    assert r.status_code == 422 and "give the token a name" in _text(r.text)


def test_audit_log_reads_in_words_with_sizes_and_filters_by_kind_and_person(
    console: Console, web_as: Any
) -> None:
    web: WebSession = web_as(console.viewer)
    text = _text(web.get(f"/projects/{console.project}/audit").text)
    assert "Version committed" in text and "Member added" in text
    assert "version.created" not in text.replace('title="version.created"', "")
    assert "previous: None" not in text and "None" not in text
    assert re.search(r"checkpoint at step 750.{0,10}, \d+(\.\d)? (B|KiB) in 2 files", text)
    assert f"{console.maintainer.username} as maintainer" in text  # type: ignore[attr-defined]

    members = _events(web.get(f"/projects/{console.project}/audit?kind=member").text)
    assert "Member added" in members and "Version committed" not in members
    owner = console.owner.username  # type: ignore[attr-defined]
    by_owner = web.get(f"/projects/{console.project}/audit?kind=version.created&who={owner}")
    body = re.search(r"<tbody>.*?</tbody>", by_owner.text, re.S)
    assert body
    rows = re.findall(r"<tr>.*?</tr>", body.group(0), re.S)
    assert rows and all("Version committed" in r and owner in r for r in rows)
    nobody = _text(web.get(f"/projects/{console.project}/audit?who=nobody").text)
    assert "No such changes" in nobody


def test_one_search_box_finds_projects_models_and_versions_by_message_alias_author_metadata(
    console: Console, web_as: Any
) -> None:
    web: WebSession = web_as(console.viewer)

    def found(q: str) -> str:
        r = web.get("/search", params={"q": q})
        assert r.status_code == 200
        return r.text

    by_project = found(console.project.split("-")[0] + " " + console.project)
    assert f'href="/projects/{console.project}"' in by_project
    assert f'href="/projects/{console.project}/models/resnet"' in found("resnet")
    versions = f"/projects/{console.project}/models/resnet/versions/"
    by_message = found("step 750")
    assert f'href="{versions}3"' in by_message and f'href="{versions}1"' not in by_message
    by_alias = found("production")
    assert f'href="{versions}1"' in by_alias
    by_author = found(console.owner.username)  # type: ignore[attr-defined]
    assert all(f'href="{versions}{n}"' in by_author for n in (1, 2, 3))
    by_metadata = found("torch")
    assert f'href="{versions}2"' in by_metadata
    assert "Nothing you can read matches" in found("zebra-that-is-nowhere")
    # Another user's projects stay out of it.
    outsider: WebSession = web_as(console.outsider)
    r = outsider.get("/search", params={"q": "resnet"})
    assert console.project not in r.text


def test_compare_shows_a_difference_column_full_values_and_files_matched_by_role(
    console: Console, web_as: Any
) -> None:
    d = console.deployment
    model = unique("cmp")
    for step, acc in ((400, 0.823362934112), (800, 0.861104522291)):
        r = d.commit(
            console.owner,
            console.project,
            model,
            {
                f"checkpoint-{step}/model.safetensors": bytes([step % 256]) * 2048,
                "config.json": b"{}",
            },
            metrics={"accuracy": acc, "loss": 1.0 if step == 400 else 0.5},
            metadata={"step": step},
        )
        assert r.status_code == 201, r.text
    web: WebSession = web_as(console.viewer)
    page = web.get(f"/projects/{console.project}/models/{model}/compare?a=1&b=2")
    assert page.status_code == 200
    text = _text(page.text)
    assert re.search(r"accuracy\s+0\.823363\s+0\.861105\s+\+0\.03774", text), text
    assert "…" not in text
    assert re.search(r"loss\s+1\s+0\.5\s+-0\.5", text)
    files = re.search(r'<table class="compare files">.*?</table>', page.text, re.S)
    assert files
    rows = _text(files.group(0))
    assert re.search(r"changed\s+checkpoint-400/model\.safetensors\s+checkpoint-800/", rows)
    assert "removed" not in rows and "added" not in rows
    assert re.search(r"same\s+config\.json", rows)
    version = web.get(f"/projects/{console.project}/models/{model}/versions/2").text
    assert 'id="compare-link"' in version


def test_a_models_runs_show_their_parameters(console: Console, web_as: Any) -> None:
    page = web_as(console.viewer).get(console.model_path).text
    runs = re.search(r"<h2>Runs</h2>.*?</ul>", page, re.S)
    assert runs
    assert re.search(r"lr-sweep</a>.*?lr=0\.001", runs.group(0), re.S)


def test_audit_log_tells_trash_moves_and_restores_in_words(console: Console, web_as: Any) -> None:
    d = console.deployment
    model = unique("audited")
    r = d.commit(console.owner, console.project, model, {"w.bin": b"w" * 10})
    assert r.status_code == 201, r.text
    base = f"/projects/{console.project}/models/{model}"
    assert console.owner.put(f"{base}/aliases/keep", json={"version": 1}).status_code == 200
    assert console.owner.delete(f"{base}/versions/1").status_code in (200, 204)
    assert console.owner.post(f"{base}/versions/1/restore").status_code == 200
    web: WebSession = web_as(console.viewer)
    log = _events(web.get(f"/projects/{console.project}/audit?kind=version").text)
    assert "Version restored" in log and "with its aliases keep" in log
    assert "Version deleted" in log and "to the trash; aliases removed: keep" in log
    assert "trash: True" not in log and "reason:" not in log
