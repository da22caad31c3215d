"""The `lmvp` command line as a user runs it: a real `lmvp` process per command, against a real
server process, each "terminal" with its own config and cache dirs.

No keyring exists on these machines, and the tests must never reach a real one: every process
runs with keyring's `fail` backend, so logins exercise the mode-0600 file fallback.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import Deployment, free_port, unique

LMVP = Path(sys.executable).parent / "lmvp"
EXIT_USAGE, EXIT_AUTH, EXIT_SERVER = 2, 3, 4


@dataclass
class Terminal:
    """One user's shell: `lmvp` with its own config and cache dirs and no keyring; LMVP_SERVER
    and LMVP_TOKEN only when given."""

    root: Path
    server: str | None = None
    token: str | None = None
    username: str = ""  # who logged in here, when a fixture did

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def run(
        self, *args: str | Path, stdin: str | None = None, token: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMVP_")}
        env.update(
            LMVP_CONFIG_DIR=str(self.config_dir),
            LMVP_CACHE_DIR=str(self.cache_dir),
            PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        )
        if self.server:
            env["LMVP_SERVER"] = self.server
        if token or self.token:
            env["LMVP_TOKEN"] = token or self.token or ""
        return subprocess.run(
            [str(LMVP), *map(str, args)],
            input=stdin or "",
            capture_output=True,
            text=True,
            env=env,
            cwd=self.root,
            timeout=60,
        )

    def ok(self, *args: str | Path, **kw: Any) -> str:
        """Run a command that must succeed; returns its stdout."""
        result = self.run(*args, **kw)
        assert result.returncode == 0, f"lmvp {args}: {result.returncode}\n{result.stderr}"
        return result.stdout

    def json(self, *args: str | Path) -> Any:
        """Run a command with `--json` (after the command, as scripts write it); parse stdout."""
        return json.loads(self.ok(*args, "--json"))

    def fails(self, exit_code: int, *args: str | Path, **kw: Any) -> str:
        """Run a command that must fail with `exit_code`; returns its stderr."""
        result = self.run(*args, **kw)
        assert result.returncode == exit_code, (
            f"lmvp {args}: expected exit {exit_code}, got {result.returncode}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
        assert result.stderr.strip(), "a failure must say why"
        return result.stderr


@dataclass
class Published:
    """A model the owner pushed through the CLI: version 1 a file (alias `best`), version 2 a
    folder."""

    project: str
    model: str
    file: Path
    folder: Path


@pytest.fixture(scope="module")
def terminals(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Terminal]:
    """Make a fresh terminal: `terminals(server=..., token=...)`."""

    def make(server: str | None = None, token: str | None = None) -> Terminal:
        return Terminal(tmp_path_factory.mktemp("terminal"), server, token)

    return make


@pytest.fixture
def terminal(terminals: Callable[..., Terminal]) -> Terminal:
    """A terminal with nothing configured: no login, no LMVP_SERVER, no LMVP_TOKEN."""
    return terminals()


@pytest.fixture(scope="module")
def owner(deployment_sqlite: Deployment, terminals: Callable[..., Terminal]) -> Terminal:
    """A user logged in with `lmvp login` (password on stdin); owns the projects they create."""
    username = deployment_sqlite.account("owner")
    term = terminals()
    term.ok(
        "login",
        deployment_sqlite.url,
        "--username",
        username,
        "--password-stdin",
        stdin=f"password-{username}\n",
    )
    term.username = username
    return term


@pytest.fixture(scope="module")
def published(owner: Terminal, tmp_path_factory: pytest.TempPathFactory) -> Published:
    project = unique("cli")
    owner.ok("projects", "create", project)
    work = tmp_path_factory.mktemp("published")
    file = work / "model.pt"
    file.write_bytes(os.urandom(200_000))
    folder = work / "checkpoint-2"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden": 64}')
    (folder / "sub" / "weights.bin").write_bytes(os.urandom(150_000))
    model = f"{project}/resnet"
    owner.ok("push", file, model, "-m", "first weights", "--alias", "best")
    owner.ok("push", folder, model, "-m", "a folder checkpoint")
    return Published(project, model, file, folder)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- login, whoami, logout -------------------------------------------------------------------


def test_login_with_a_password_keeps_the_token_in_a_0600_file_when_there_is_no_keyring(
    deployment_sqlite: Deployment, terminal: Terminal
) -> None:
    username = deployment_sqlite.account("login")
    url = deployment_sqlite.url

    result = terminal.run(
        "login", url, "--username", username, "--password-stdin", stdin=f"password-{username}\n"
    )

    assert result.returncode == 0, result.stderr
    assert f"logged in to {url} as {username}" in result.stdout
    assert "no system keyring" in result.stderr  # says once where the token went instead
    tokens_file = terminal.config_dir / "tokens.json"
    assert stat.S_IMODE(tokens_file.stat().st_mode) == 0o600
    assert str(tokens_file) in result.stdout
    assert list(json.loads(tokens_file.read_text())) == [url]
    # Later commands need neither LMVP_SERVER nor LMVP_TOKEN.
    assert terminal.ok("whoami").strip() == f"{username} on {url}"


def test_a_wrong_password_exits_3_saying_so_and_stores_nothing(
    deployment_sqlite: Deployment, terminal: Terminal
) -> None:
    username = deployment_sqlite.account("wrongpw")

    stderr = terminal.fails(
        EXIT_AUTH,
        "login",
        deployment_sqlite.url,
        "--username",
        username,
        "--password-stdin",
        stdin="not-the-password\n",
    )

    assert stderr.strip() == (
        f"error: {deployment_sqlite.url} refused the login of {username!r}: "
        "wrong username or password"
    )
    assert not (terminal.config_dir / "tokens.json").exists()


def test_login_with_a_token_checks_it_then_stores_it(
    deployment_sqlite: Deployment, terminal: Terminal
) -> None:
    user = deployment_sqlite.user("tokenlogin")
    url = deployment_sqlite.url

    stderr = terminal.fails(EXIT_AUTH, "login", url, "--token", "lmvp_not-a-real-token")
    assert f"{url} refused the token" in stderr and "nothing was stored" in stderr
    assert not (terminal.config_dir / "tokens.json").exists()

    out = terminal.ok("login", url, "--token", str(user.token))
    assert f"as {user.username}" in out  # type: ignore[attr-defined]
    assert terminal.ok("whoami").startswith(user.username)  # type: ignore[attr-defined]


def test_login_takes_the_api_address_for_the_server_address(
    deployment_sqlite: Deployment, terminal: Terminal
) -> None:
    # The server's banner and docs show http://host:8470/api/v1/...: people paste that.
    username = deployment_sqlite.account("apiurl")
    url = deployment_sqlite.url

    out = terminal.ok(
        "login",
        f"{url}/api/v1/",
        "--username",
        username,
        "--password-stdin",
        stdin=f"password-{username}\n",
    )

    assert f"logged in to {url} as {username}" in out
    assert list(json.loads((terminal.config_dir / "tokens.json").read_text())) == [url]
    assert terminal.ok("whoami", "--server", f"{url}/api/v1").strip() == f"{username} on {url}"


def test_logout_forgets_the_token(deployment_sqlite: Deployment, terminal: Terminal) -> None:
    user = deployment_sqlite.user("logout")
    url = deployment_sqlite.url
    terminal.ok("login", url, "--token", str(user.token))

    assert terminal.ok("logout").strip() == f"logged out of {url}"

    assert json.loads((terminal.config_dir / "tokens.json").read_text()) == {}
    stderr = terminal.fails(EXIT_AUTH, "whoami", "--server", url)
    assert "lmvp login" in stderr
    assert terminal.ok("logout", url).strip() == f"no stored token for {url}"


def test_whoami_json_describes_the_user(owner: Terminal) -> None:
    # Common options work before the command too.
    user = json.loads(owner.ok("--json", "whoami"))
    assert user["username"] == owner.username
    assert user["is_admin"] is False


# --- projects and members --------------------------------------------------------------------


def test_projects_create_then_list_shows_the_project_with_your_role(owner: Terminal) -> None:
    name = unique("proj")

    out = owner.ok("projects", "create", name, "--description", "vision models")

    assert out.strip() == f"created project {name}"
    for listing in (owner.ok("projects"), owner.ok("projects", "list")):
        header, *rows = listing.splitlines()
        assert header.split() == ["NAME", "ROLE", "SIZE", "DESCRIPTION"]
        assert any(row.split() == [name, "owner", "0", "B", "vision", "models"] for row in rows), (
            listing
        )


def test_projects_list_says_what_each_project_stores(owner: Terminal, published: Published) -> None:
    # Distinct blobs once: the file and the folder's two (pushing the file twice adds nothing).
    listing = owner.ok("projects")
    row = next(r for r in listing.splitlines() if r.startswith(published.project + " "))
    assert row.split()[:4] == [published.project, "owner", "341.8", "KiB"]
    listed = next(p for p in owner.json("projects") if p["name"] == published.project)
    assert listed["size"] == 200_000 + 150_000 + len('{"hidden": 64}')


def test_projects_json_is_a_list_of_projects(owner: Terminal) -> None:
    name = unique("proj")
    created = owner.json("projects", "create", name)
    assert created["name"] == name

    projects = owner.json("projects")

    assert {"name": name, "role": "owner"}.items() <= next(
        p for p in projects if p["name"] == name
    ).items()


def test_members_add_list_and_remove(deployment_sqlite: Deployment, owner: Terminal) -> None:
    project = unique("members")
    owner.ok("projects", "create", project)
    member = deployment_sqlite.account("member")

    out = owner.ok("members", "add", project, member, "--role", "viewer")
    assert out.strip() == f"{member} is now viewer in {project}"
    rows = [line.split()[:2] for line in owner.ok("members", "list", project).splitlines()]
    assert rows[0] == ["USERNAME", "ROLE"]
    assert [member, "viewer"] in rows and [owner.username, "owner"] in rows

    assert owner.ok("members", "remove", project, member).strip() == (
        f"removed {member} from {project}"
    )
    assert member not in owner.ok("members", "list", project)


def test_a_viewer_can_pull_but_pushing_exits_3(
    deployment_sqlite: Deployment,
    owner: Terminal,
    published: Published,
    terminals: Callable[..., Terminal],
) -> None:
    viewer = deployment_sqlite.user("viewer")
    owner.ok("members", "add", published.project, viewer.username, "--role", "viewer")  # type: ignore[attr-defined]
    term = terminals(server=deployment_sqlite.url, token=viewer.token)

    path = Path(term.ok("pull", f"{published.model}:1").strip())
    assert path.read_bytes() == published.file.read_bytes()

    stderr = term.fails(EXIT_AUTH, "push", published.file, published.model, "-m", "mine")
    assert stderr.startswith("error: ")
    assert len(owner.json("history", published.model)) == 2  # no version was made


# --- push, models, history --------------------------------------------------------------------


def test_push_a_file_publishes_a_version_with_its_message_and_alias(
    owner: Terminal, tmp_path: Path
) -> None:
    project = unique("push")
    owner.ok("projects", "create", project)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(os.urandom(3000))

    out = owner.ok("push", weights, f"{project}/tiny", "-m", "first", "--alias", "staging")

    assert out.strip() == f"published {project}/tiny:1 (2.9 KiB, 1 file)"
    version = owner.json("history", f"{project}/tiny")[0]
    assert (version["number"], version["message"]) == (1, "first")
    assert version["aliases"] == ["staging"]
    assert [f["path"] for f in version["files"]] == ["weights.bin"]


def test_pushing_to_a_project_that_does_not_exist_names_the_command_that_creates_it(
    owner: Terminal, tmp_path: Path
) -> None:
    project = unique("nosuch")
    weights = tmp_path / "weights.bin"
    weights.write_bytes(os.urandom(1000))

    stderr = owner.fails(1, "push", weights, f"{project}/tiny")

    assert f"project '{project}' not found" in stderr
    assert f"`lmvp projects create {project}`" in stderr and "--create" in stderr
    assert project not in owner.ok("projects")  # nothing was made


def test_push_create_makes_the_missing_project_and_model_then_publishes(
    owner: Terminal, tmp_path: Path
) -> None:
    project = unique("created")
    weights = tmp_path / "weights.bin"
    weights.write_bytes(os.urandom(1000))

    result = owner.run("push", weights, f"{project}/tiny", "--create", "-m", "first")

    assert result.returncode == 0, result.stderr
    assert f"created project {project}" in result.stderr
    assert result.stdout.strip().startswith(f"published {project}/tiny:1")
    mine = {p["name"]: p["role"] for p in owner.json("projects")}
    assert mine[project] == "owner"
    # Pushing again with --create to the project that now exists just publishes.
    out = owner.ok("push", weights, f"{project}/tiny", "--create")
    assert out.strip().startswith(f"published {project}/tiny:2")


def test_push_a_folder_publishes_every_file_in_it(owner: Terminal, tmp_path: Path) -> None:
    project = unique("push")
    owner.ok("projects", "create", project)
    folder = tmp_path / "ckpt"
    (folder / "shards").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "shards" / "0.bin").write_bytes(os.urandom(1000))

    out = owner.ok("push", folder, f"{project}/bert", "-m", "folder")

    assert out.strip().startswith(f"published {project}/bert:1 (")
    assert out.strip().endswith(", 2 files)")


def test_push_json_describes_the_new_version(owner: Terminal, tmp_path: Path) -> None:
    project = unique("push")
    owner.ok("projects", "create", project)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"x" * 100)

    version = owner.json("push", weights, f"{project}/m", "-m", "scripted", "--alias", "a")

    assert version["number"] == 1
    assert version["message"] == "scripted"
    assert version["aliases"] == ["a"]
    assert version["author"] == owner.username
    assert version["files"][0]["size"] == 100


def test_models_lists_each_model_with_its_latest_version(
    owner: Terminal, published: Published
) -> None:
    header, *rows = owner.ok("models", published.project).splitlines()

    assert header.split() == ["NAME", "LATEST_VERSION", "DESCRIPTION"]
    assert [row.split() for row in rows] == [["resnet", "2"]]


def test_history_of_a_model_shows_versions_messages_and_aliases(
    owner: Terminal, published: Published
) -> None:
    header, newest, oldest = owner.ok("history", published.model).splitlines()

    assert header.split()[:5] == ["VERSION", "CREATED", "AUTHOR", "SIZE", "ALIASES"]
    assert newest.startswith(f"{published.model}:2 ")
    assert newest.rstrip().endswith("a folder checkpoint")
    assert oldest.startswith(f"{published.model}:1 ")
    assert " best " in oldest and oldest.rstrip().endswith("first weights")
    assert owner.username in newest and owner.username in oldest


def test_history_of_a_project_shows_the_versions_of_its_models(
    owner: Terminal, published: Published
) -> None:
    out = owner.ok("history", published.project)

    assert f"{published.model}:2" in out and f"{published.model}:1" in out
    assert "first weights" in out


def test_history_json_lists_versions_newest_first(owner: Terminal, published: Published) -> None:
    versions = owner.json("history", published.model)

    assert [v["number"] for v in versions] == [2, 1]
    assert [v["message"] for v in versions] == ["a folder checkpoint", "first weights"]
    assert "best" in versions[1]["aliases"]
    assert owner.json("history", published.project)[0]["number"] == 2


# --- pull -----------------------------------------------------------------------------------


def test_pull_prints_the_path_of_the_latest_version(owner: Terminal, published: Published) -> None:
    path = Path(owner.ok("pull", published.model).strip())

    assert path.is_dir()
    assert _files(path) == _files(published.folder)


def test_pull_a_numbered_version_into_a_folder(
    owner: Terminal, published: Published, tmp_path: Path
) -> None:
    path = Path(owner.ok("pull", f"{published.model}:1", "-o", tmp_path / "out").strip())

    assert path == tmp_path / "out" / "model.pt"
    assert path.read_bytes() == published.file.read_bytes()


def test_pull_by_alias(owner: Terminal, published: Published) -> None:
    path = Path(owner.ok("pull", f"{published.model}@best").strip())

    assert path.read_bytes() == published.file.read_bytes()


def test_pull_json_gives_the_path(owner: Terminal, published: Published) -> None:
    pulled = owner.json("pull", f"{published.model}:v1")

    assert Path(pulled["path"]).read_bytes() == published.file.read_bytes()


def test_pull_offline_fails_before_any_pull_and_serves_the_cache_after_one(
    deployment_sqlite: Deployment,
    owner: Terminal,
    published: Published,
    terminals: Callable[..., Terminal],
) -> None:
    token = json.loads((owner.config_dir / "tokens.json").read_text())[deployment_sqlite.url]
    term = terminals(server=deployment_sqlite.url, token=token)

    stderr = term.fails(1, "pull", "--offline", f"{published.model}:1")
    assert "cache" in stderr

    online = term.ok("pull", f"{published.model}:1").strip()
    offline = term.ok("pull", "--offline", f"{published.model}:1").strip()
    assert offline == online
    assert Path(offline).read_bytes() == published.file.read_bytes()


def test_pulling_a_model_that_does_not_exist_says_so(owner: Terminal, published: Published) -> None:
    stderr = owner.fails(1, "pull", f"{published.project}/no-such-model")

    assert "no-such-model" in stderr or "not found" in stderr.lower()


# --- aliases -----------------------------------------------------------------------------------


def test_alias_set_points_an_alias_at_a_version_and_alias_rm_removes_it(
    owner: Terminal, published: Published
) -> None:
    out = owner.ok("alias", "set", published.model, "prod", "1")
    assert out.strip() == f"{published.model}@prod -> version 1"
    path = Path(owner.ok("pull", f"{published.model}@prod").strip())
    assert path.read_bytes() == published.file.read_bytes()
    assert "prod" in owner.json("history", published.model)[1]["aliases"]

    out = owner.ok("alias", "rm", published.model, "prod")
    assert out.strip() == f"removed alias prod of {published.model}"
    owner.fails(1, "pull", f"{published.model}@prod")
    assert all("prod" not in v["aliases"] for v in owner.json("history", published.model))


# --- tokens ------------------------------------------------------------------------------------


def test_a_created_token_works_is_listed_by_prefix_only_and_fails_once_revoked(
    owner: Terminal,
) -> None:
    created = owner.run("tokens", "create", "--name", "ci-runner", "--scope", "read")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert "shown only now" in created.stderr

    assert owner.ok("whoami", token=secret).startswith(owner.username)

    listing = owner.ok("tokens", "list")
    assert secret not in listing
    (row,) = [line for line in listing.splitlines() if "ci-runner" in line]
    token_id, _, prefix, scope = row.split()[:4]
    assert secret.startswith(prefix) and scope == "read"
    assert all(secret not in json.dumps(t) for t in owner.json("tokens"))

    assert owner.ok("tokens", "revoke", token_id).strip() == f"revoked token {token_id}"
    stderr = owner.fails(EXIT_AUTH, "whoami", token=secret)
    assert "lmvp login" in stderr


# --- usage errors and an unreachable server ----------------------------------------------------


def test_a_malformed_reference_is_a_usage_error(owner: Terminal) -> None:
    stderr = owner.fails(EXIT_USAGE, "pull", "nonsense")

    assert "'project/model'" in stderr


def test_an_unknown_command_is_a_usage_error(terminal: Terminal) -> None:
    stderr = terminal.fails(EXIT_USAGE, "fetch-everything")

    assert "invalid choice" in stderr


def test_no_command_prints_help_and_is_a_usage_error(terminal: Terminal) -> None:
    result = terminal.run()

    assert result.returncode == EXIT_USAGE
    assert "commands" in result.stdout


def test_an_unreachable_server_exits_4_saying_to_check_the_server(terminal: Terminal) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    stderr = terminal.fails(EXIT_SERVER, "--server", url, "whoami", token="lmvp_anything")

    assert url in stderr
    assert "check that it is running" in stderr
