"""`lmvp`: the command line of the LMVP client.

Exit codes: 0 success, 1 any other error, 2 a usage error (bad arguments or reference),
3 an authentication or permission error, 4 the server is unreachable or failing.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import io
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lmvp import __version__
from lmvp.client import Client
from lmvp.credentials import forget_login, normalize_server, resolve_server, save_login
from lmvp.errors import (
    AuthenticationError,
    ConfigurationError,
    Conflict,
    InvalidRef,
    LMVPError,
    NotFound,
    PermissionDenied,
    ServerUnavailable,
)
from lmvp.history import format_table, human_size
from lmvp.refs import parse_ref
from lmvp.types import (
    KeepBest,
    Retention,
    RetentionPolicy,
    RetentionPreview,
    RunInfo,
    Series,
    TensorChange,
    TensorComparison,
    User,
)

EXIT_ERROR, EXIT_USAGE, EXIT_AUTH, EXIT_SERVER = 1, 2, 3, 4


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except LMVPError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return _exit_code(exc)
    if args.json and result is not None:
        print(json.dumps(_jsonable(result), indent=2))
    return 0


def command_as_typed(name: str = "lmvp") -> str:
    """How to type LMVP's command `name` in a shell here: its name when the shell's PATH finds
    the one installed beside this Python, else that one's full path (a virtualenv that is not
    activated, such as `make run`'s .venv). For hints that other programs print."""
    beside = Path(sys.executable).parent / name
    if not beside.exists():
        return name
    found = shutil.which(name)
    if found and os.path.samefile(found, beside):
        return name
    return str(beside)


class _UsageError(LMVPError):
    """Arguments that cannot work (a path that does not exist, ...)."""


def _exit_code(exc: LMVPError) -> int:
    if isinstance(exc, InvalidRef | ConfigurationError | _UsageError):
        return EXIT_USAGE
    if isinstance(exc, AuthenticationError | PermissionDenied):
        return EXIT_AUTH
    if isinstance(exc, ServerUnavailable):
        return EXIT_SERVER
    return EXIT_ERROR


def _parser() -> argparse.ArgumentParser:
    # The common options are accepted before and after the command. Only the top parser has
    # defaults for them: a subparser's own default would overwrite a value given before the
    # command (`lmvp --server URL whoami` would quietly talk to the default server).
    common = argparse.ArgumentParser(add_help=False)
    _add_common_options(common, server=argparse.SUPPRESS, json=argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog="lmvp",
        description="Fetch, publish and inspect versioned models on an LMVP server.",
    )
    _add_common_options(parser, server=None, json=False)
    parser.add_argument("--version", action="version", version=f"lmvp {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(
        name: str, func: Callable[[argparse.Namespace], Any], help: str, parent: Any = sub
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(
            name, parents=[common], help=help, description=help
        )
        p.set_defaults(func=func)
        return p

    p = command("login", _login, "log in and store the token (system keyring, else a 0600 file)")
    p.add_argument("server_url", nargs="?", metavar="SERVER")
    p.add_argument("--username", "-u")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--token", help="store this API token instead of logging in with a password")
    p = command("logout", _logout, "forget the stored token")
    p.add_argument("server_url", nargs="?", metavar="SERVER")
    command("whoami", _whoami, "who the stored token belongs to")

    projects = command("projects", _projects_list, "list your projects, or create one")
    psub = projects.add_subparsers(title="project commands", metavar="ACTION")
    command("list", _projects_list, "list your projects", psub)
    p = command("create", _projects_create, "create a project (you become its owner)", psub)
    p.add_argument("name")
    p.add_argument("--description", default="")

    # No optional PROJECT positional here: before the actions, argparse would take the action
    # for the project (`members list P` and `members P` both failed).
    members = command(
        "members", lambda a: _usage("members list|add|remove ..."), "list, add or remove members"
    )
    msub = members.add_subparsers(title="member commands", metavar="ACTION")
    p = command("list", _members_list, "list members", msub)
    p.add_argument("project")
    p = command("add", _members_add, "add a member or change their role (owners)", msub)
    p.add_argument("project")
    p.add_argument("username")
    p.add_argument(
        "--role", required=True, choices=["viewer", "contributor", "maintainer", "owner"]
    )
    p = command("remove", _members_remove, "remove a member (owners, or yourself)", msub)
    p.add_argument("project")
    p.add_argument("username")

    p = command("models", _models, "list the models of a project")
    p.add_argument("project")

    p = command("history", _history, "versions of a model (project/model) or a project")
    p.add_argument("ref", metavar="PROJECT_OR_MODEL")
    p.add_argument("--limit", type=int, default=20)

    p = command("push", _push, "publish a file or folder as a new version")
    p.add_argument("path", type=Path)
    p.add_argument("model_ref", metavar="MODEL_REF", help="project/model")
    p.add_argument("-m", "--message", default="")
    p.add_argument("--alias", action="append", default=[], help="set this alias (repeatable)")
    p.add_argument("--metadata", type=json.loads, default=None, help="a JSON object")
    p.add_argument(
        "--create",
        action="store_true",
        help="create the project first if it does not exist (you become its owner)",
    )

    p = command("pull", _pull, "download a version (p/m, p/m:7, p/m@alias)")
    p.add_argument("ref")
    p.add_argument("-o", "--output", type=Path, help="also place the files in this folder")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.add_argument("--offline", action="store_true", help="use only the local cache")

    p = command(
        "diff",
        _diff,
        "two versions of a model tensor by tensor: added, removed, reshaped, changed (with "
        "the relative change ||a-b||/||a||) and unchanged tensors of each safetensors file",
    )
    p.add_argument("a", metavar="A", help="a version: project/model:7, project/model@alias")
    p.add_argument(
        "b", metavar="B", help="the version to compare it with: project/model:8, or just 8"
    )
    p.add_argument("--all", action="store_true", help="list unchanged tensors too")

    alias = command("alias", lambda a: _usage("alias set|rm"), "set or remove an alias")
    asub = alias.add_subparsers(title="alias commands", metavar="ACTION")
    p = command("set", _alias_set, "point ALIAS at VERSION (maintainers)", asub)
    p.add_argument("model_ref", metavar="MODEL_REF")
    p.add_argument("alias")
    p.add_argument("version", type=int)
    p = command("rm", _alias_rm, "remove an alias (maintainers)", asub)
    p.add_argument("model_ref", metavar="MODEL_REF")
    p.add_argument("alias")

    p = command("runs", _runs, "list the runs of a model (project/model), newest first")
    p.add_argument("model_ref", metavar="MODEL_REF")
    p.add_argument("--limit", type=int, default=20)

    p = command("metrics", _metrics, "a run's metrics (by run id, or a version p/m:7)")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--keys", help="comma-separated metric names (default: all)")
    p.add_argument(
        "--max-points",
        type=int,
        default=None,
        help="downsample each metric to at most this many points (min. 4), keeping extremes",
    )

    retention = command(
        "retention",
        lambda a: _usage("retention show|set|unset|preview|apply ..."),
        "show, set or preview a model's (or project's default) retention policy",
    )
    rsub = retention.add_subparsers(title="retention commands", metavar="ACTION")
    p = command("show", _retention_show, "the policy of a model (p/m) or a project (p)", rsub)
    p.add_argument("ref", metavar="PROJECT_OR_MODEL")
    p = command(
        "set",
        _retention_set,
        "set the policy (maintainers): versions kept by no rule (and no alias) go to the trash",
        rsub,
    )
    p.add_argument("ref", metavar="PROJECT_OR_MODEL")
    _add_rule_options(p)
    p = command("unset", _retention_unset, "remove the policy (maintainers)", rsub)
    p.add_argument("ref", metavar="PROJECT_OR_MODEL")
    p = command(
        "preview",
        _retention_preview,
        "which versions the policy would remove, which rule keeps each kept one, bytes freed "
        "(give rules to try a policy before setting it)",
        rsub,
    )
    p.add_argument("ref", metavar="MODEL_REF")
    _add_rule_options(p)
    p = command("apply", _retention_apply, "apply the policy now (maintainers)", rsub)
    p.add_argument("ref", metavar="MODEL_REF")

    trash = command("trash", lambda a: _usage("trash list|restore ..."), "list or restore")
    trsub = trash.add_subparsers(title="trash commands", metavar="ACTION")
    p = command("list", _trash_list, "what is in the trash (of PROJECT, or all yours)", trsub)
    p.add_argument("project", nargs="?")
    p = command(
        "restore", _trash_restore, "take p/m:12, a model p/m or a project p out of the trash", trsub
    )
    p.add_argument("ref")

    tokens = command("tokens", _tokens_list, "list, create or revoke your API tokens")
    tsub = tokens.add_subparsers(title="token commands", metavar="ACTION")
    command("list", _tokens_list, "list your tokens", tsub)
    p = command("create", _tokens_create, "create a token and print it once", tsub)
    p.add_argument("--name", default="")
    p.add_argument("--scope", choices=["read", "write"], default="write")
    p.add_argument("--expires-days", type=int, default=None)
    p = command("revoke", _tokens_revoke, "revoke a token by id", tsub)
    p.add_argument("token_id", type=int)
    return parser


def _add_common_options(parser: argparse.ArgumentParser, *, server: Any, json: Any) -> None:
    parser.add_argument(
        "--server", default=server, help="server URL [env LMVP_SERVER; default: last login]"
    )
    parser.add_argument(
        "--json", action="store_true", default=json, help="print machine-readable JSON"
    )


# --- commands -----------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    return Client(args.server)


def _usage(message: str) -> None:
    raise InvalidRef(f"usage: lmvp {message}")


def _login(args: argparse.Namespace) -> dict[str, str]:
    server = normalize_server(args.server_url or args.server or resolve_server())
    if args.token:
        token = args.token
    else:
        username = args.username or input("username: ")
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = getpass.getpass("password: ")
        token = str(Client.login(server, username, password, label="lmvp cli").token)
    with Client(server, token) as client:
        try:
            user = client.whoami()  # proves the token works before it is stored
        except AuthenticationError as exc:
            raise AuthenticationError(
                f"{server} refused the token (mistyped, expired or revoked?): nothing was "
                f"stored; create a new one with `lmvp tokens create`, or log in with a password",
                code=exc.code,
                status=exc.status,
            ) from None
    where = save_login(server, token)
    if not args.json:
        print(f"logged in to {server} as {user.username}; token stored in {where}")
    return {"server": server, "username": user.username, "stored_in": where}


def _logout(args: argparse.Namespace) -> dict[str, Any]:
    server = normalize_server(args.server_url or args.server or resolve_server())
    removed = forget_login(server)
    if not args.json:
        print(f"logged out of {server}" if removed else f"no stored token for {server}")
    return {"server": server, "removed": removed}


def _whoami(args: argparse.Namespace) -> User:
    with _client(args) as client:
        user = client.whoami()
        if not args.json:
            admin = " (server admin)" if user.is_admin else ""
            print(f"{user.username}{admin} on {client.server}")
        return user


def _projects_list(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        projects = client.projects()
    # The size as people read it; --json keeps bytes.
    rows = [
        SimpleNamespace(**{**vars(p), "size": "" if p.size is None else human_size(p.size)})
        for p in projects
    ]
    _table(args, rows, ("name", "role", "size", "description"))
    return projects


def _projects_create(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        project = client.create_project(args.name, description=args.description)
    _say(args, f"created project {project.name}")
    return project


def _members_list(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        members = client.members(args.project)
    _table(args, members, ("username", "role", "display_name"))
    return members


def _members_add(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        member = client.set_member(args.project, args.username, args.role)
    _say(args, f"{member.username} is now {member.role} in {args.project}")
    return member


def _members_remove(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        client.remove_member(args.project, args.username)
    _say(args, f"removed {args.username} from {args.project}")
    return {"removed": args.username}


def _models(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        models = client.models(args.project)
    _table(args, models, ("name", "latest_version", "description"))
    return models


def _history(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        if args.json:
            from lmvp.refs import parse_project_or_model

            project, model = parse_project_or_model(args.ref)
            if model:
                return client.versions(f"{project}/{model}", limit=args.limit)
            return client.show_history(args.ref, limit=args.limit, file=io.StringIO())
        return client.show_history(args.ref, limit=args.limit) and None


def _push(args: argparse.Namespace) -> Any:
    if not args.path.exists():
        raise _UsageError(f"{args.path} does not exist: give the checkpoint file or folder to push")
    project = parse_ref(args.model_ref).project
    with _client(args) as client, _progress(args, "upload") as progress:
        if args.create:
            _create_project_if_missing(client, project)
        try:
            version = client.update(
                args.model_ref,
                args.path,
                message=args.message,
                metadata=args.metadata,
                aliases=args.alias,
                progress=progress,
            )
        except NotFound as exc:
            if args.create or not _project_missing(client, project):
                raise
            raise NotFound(
                f"{exc.message}: create it with `lmvp projects create {project}` (or push "
                f"with --create), or ask its owner to add you",
                code=exc.code,
                status=exc.status,
            ) from None
    _say(
        args,
        f"published {version.ref} ({human_size(version.size)}, "
        f"{len(version.files)} file{'s' if len(version.files) != 1 else ''})",
    )
    return version


def _create_project_if_missing(client: Client, project: str) -> None:
    if _project_missing(client, project):
        with suppress(Conflict):  # someone made it a moment ago; pushing then says the rest
            client.create_project(project)
            print(f"created project {project}", file=sys.stderr)


def _project_missing(client: Client, project: str) -> bool:
    """Whether the server answers 404 for the project (missing, or the caller not a member)."""
    try:
        client.project(project)
    except NotFound:
        return True
    return False


def _pull(args: argparse.Namespace) -> Any:
    with _client(args) as client, _progress(args, "download") as progress:
        path = client.download(
            args.ref,
            local_dir=args.output,
            force=args.force,
            offline=args.offline,
            progress=progress,
        )
    if not args.json:
        print(path)
    return {"path": str(path)}


def _diff(args: argparse.Namespace) -> Any:
    a = parse_ref(args.a)
    b_text = args.b.strip()
    b = parse_ref(b_text if "/" in b_text else f"{a.name}{_version_suffix(b_text)}")
    if b.name != a.name:
        raise _UsageError(
            f"{a.name} and {b.name} are different models: diff compares two versions of one "
            f"model (e.g. lmvp diff {a.name}:7 {a.name}:8)"
        )
    with _client(args) as client:
        result = client.compare_tensors(a.project, a.model, a.version, b.version)
    if not args.json:
        print(format_diff(result, a.name, show_unchanged=args.all))
    return {
        "a": result.a,
        "b": result.b,
        "files": [
            {
                "a_path": f.a_path,
                "b_path": f.b_path,
                "tensors": [
                    {
                        **_jsonable(t),
                        "relative_change": None
                        if t.relative_change is None
                        else _json_number(t.relative_change),
                    }
                    for t in f.tensors
                ],
            }
            for f in result.files
        ],
        "skipped": result.skipped,
    }


def _version_suffix(text: str) -> str:
    """`8`, `v8` or `:8` → `:8`; `@prod` or `prod` → `@prod`; `latest` → nothing."""
    text = text.lstrip(":")
    if text == "latest":
        return ""
    if text.startswith("@"):
        return text
    if text.isdigit() or (text[:1] == "v" and text[1:].isdigit()):
        return f":{text}"
    return f"@{text}"


_CHANGE_ORDER = ("changed", "reshaped", "added", "removed", "unchanged")


def format_diff(result: TensorComparison, model: str, *, show_unchanged: bool = False) -> str:
    """The comparison as `lmvp diff` prints it: a table per safetensors file (changed tensors
    first, largest relative change first; unchanged ones only with `show_unchanged`), then a
    summary line and the files that are not safetensors."""
    lines = [f"{model}: v{result.a} -> v{result.b}"]
    counts = dict.fromkeys(_CHANGE_ORDER, 0)
    for f in result.files:
        if f.a_path == f.b_path:
            title = f.a_path or ""
        else:
            title = f"{f.a_path or '(none)'} -> {f.b_path or '(none)'}"
        lines += ["", title]
        rows = [("TENSOR", "CHANGE", "DTYPE/SHAPE", "RELATIVE CHANGE")]
        hidden = 0
        for t in f.tensors:
            counts[t.change] = counts.get(t.change, 0) + 1
            if t.change == "unchanged" and not show_unchanged:
                hidden += 1
                continue
            rows.append((t.name, t.change, _layout(t), t.percent))
        if len(rows) > 1:
            widths = [max(len(r[i]) for r in rows) for i in range(4)]
            for r in rows:
                lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
        if hidden:
            lines.append(
                f"({hidden} unchanged tensor{'s' if hidden != 1 else ''}; --all lists them)"
            )
        elif not f.tensors:
            lines.append("(no tensors)")
    if not result.files:
        lines += ["", "no safetensors files in either version"]
    summary = ", ".join(f"{counts[c]} {c}" for c in _CHANGE_ORDER)
    files = len(result.files)
    lines += ["", f"{summary} ({files} safetensors file{'s' if files != 1 else ''})"]
    if result.skipped:
        lines.append("not compared per tensor (not safetensors): " + ", ".join(result.skipped))
    return "\n".join(lines)


def _layout(t: TensorChange) -> str:
    a = f"{t.a_dtype} {list(t.a_shape)}" if t.a_dtype is not None and t.a_shape is not None else ""
    b = f"{t.b_dtype} {list(t.b_shape)}" if t.b_dtype is not None and t.b_shape is not None else ""
    if t.change == "added":
        return b
    if t.change == "removed":
        return a
    return a if a == b else f"{a} -> {b}"


def _alias_set(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        alias = client.set_alias(args.model_ref, args.alias, args.version)
    _say(args, f"{args.model_ref}@{alias.name} -> version {alias.version}")
    return alias


def _alias_rm(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        client.delete_alias(args.model_ref, args.alias)
    _say(args, f"removed alias {args.alias} of {args.model_ref}")
    return {"removed": args.alias}


def _runs(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        runs = client.runs(args.model_ref, limit=args.limit)
    if not args.json:
        rows = [
            _RunRow(
                r.id,
                r.name,
                r.status,
                r.host,
                r.started_at,
                r.last_step,
                r.point_count,
                ", ".join(k.key for k in r.keys),
            )
            for r in runs
        ]
        _table(
            args, rows, ("id", "name", "status", "host", "started", "last_step", "points", "keys")
        )
    return [_run_json(r) for r in runs]


def _metrics(args: argparse.Namespace) -> Any:
    if args.max_points is not None and args.max_points < 4:
        raise _UsageError("--max-points must be at least 4 (a bucket keeps up to 4 points)")
    keys = [k for k in args.keys.split(",") if k] if args.keys else None
    with _client(args) as client:
        run_id = client.resolve_run(args.run)
        series = client.metrics(run_id, keys=keys, max_points=args.max_points)
    if not args.json:
        if not series:
            print(f"run {run_id} has no metrics" + (f" named {args.keys}" if keys else ""))
        rows = [_metric_row(s) for s in series.values()]
        _table(args, rows, ("key", "points", "first_step", "last_step", "last", "min", "max"))
    return {
        "run": run_id,
        "series": {
            key: {
                "steps": s.steps,
                "values": [_json_number(v) for v in s.values],
                "wall_times": s.wall_times,
                "count": s.count,
                "downsampled": s.downsampled,
            }
            for key, s in series.items()
        },
    }


@dataclasses.dataclass
class _RunRow:
    id: int
    name: str
    status: str
    host: str
    started: datetime
    last_step: int | None
    points: int
    keys: str


@dataclasses.dataclass
class _MetricRow:
    key: str
    points: int
    first_step: int | None
    last_step: int | None
    last: str
    min: str
    max: str


def _metric_row(series: Series) -> _MetricRow:
    finite = [v for v in series.values if not math.isnan(v)]
    return _MetricRow(
        series.key,
        series.count,
        series.steps[0] if series.steps else None,
        series.steps[-1] if series.steps else None,
        f"{series.values[-1]:.6g}" if series.values else "",
        f"{min(finite):.6g}" if finite else "",
        f"{max(finite):.6g}" if finite else "",
    )


def _run_json(run: RunInfo) -> dict[str, Any]:
    data: dict[str, Any] = _jsonable(run)
    for key in data["keys"]:
        if key["last_value"] is not None:
            key["last_value"] = _json_number(key["last_value"])
    return data


def _json_number(value: float) -> float | str:
    """JSON has no NaN or infinity: print them as the server sends them."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _tokens_list(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        tokens = client.tokens()
    _table(args, tokens, ("id", "name", "prefix", "scope", "expires_at", "revoked_at"))
    return tokens


def _tokens_create(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        token = client.create_token(args.name, scope=args.scope, expires_in_days=args.expires_days)
    if not args.json:
        print(token.secret)
        print(f"(token {token.id}, {token.scope}; it is shown only now)", file=sys.stderr)
    return dataclasses.asdict(token)


def _tokens_revoke(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        client.revoke_token(args.token_id)
    _say(args, f"revoked token {args.token_id}")
    return {"revoked": args.token_id}


# --- retention and the trash --------------------------------------------------------------------


def _add_rule_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep-latest", type=int, metavar="N", help="keep the newest N versions")
    p.add_argument(
        "--keep-best",
        action="append",
        default=[],
        metavar="K:METRIC:min|max",
        help="keep the K best by a metric of the versions (repeatable), e.g. 3:val_loss:min",
    )
    p.add_argument(
        "--keep-every-steps", type=int, metavar="S", help="keep the first version of every S steps"
    )
    p.add_argument(
        "--keep-every-hours",
        type=float,
        metavar="H",
        help="keep the first version of every H hours",
    )
    p.add_argument(
        "--keep-within",
        metavar="T",
        help="keep every version younger than T (30m, 12h, 7d, or hours as a number)",
    )


def _rules(args: argparse.Namespace) -> RetentionPolicy | None:
    """The policy the rule options give, or None when none was given."""
    best = []
    for text in args.keep_best:
        parts = text.split(":")
        if len(parts) == 2:
            parts.append("min")
        if len(parts) != 3 or not parts[0].isdigit() or parts[2] not in ("min", "max"):
            raise _UsageError(
                f"--keep-best {text!r}: give COUNT:METRIC:min or COUNT:METRIC:max, "
                "e.g. 3:val_loss:min"
            )
        best.append(KeepBest(int(parts[0]), parts[1], parts[2]))
    policy = RetentionPolicy(
        keep_latest=args.keep_latest,
        keep_best=tuple(best),
        keep_every_steps=args.keep_every_steps,
        keep_every_hours=args.keep_every_hours,
        keep_within_hours=_hours(args.keep_within) if args.keep_within else None,
    )
    return None if policy == RetentionPolicy() else policy


def _hours(text: str) -> float:
    units = {"m": 1 / 60, "h": 1.0, "d": 24.0, "w": 168.0}
    try:
        if text[-1:] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise _UsageError(f"--keep-within {text!r}: give a time like 30m, 12h or 7d") from None


def _show_retention(args: argparse.Namespace, retention: Retention) -> None:
    where = f"{retention.project}/{retention.model}" if retention.model else retention.project
    if retention.effective is None:
        _say(args, f"{where}: no retention policy (every version is kept)")
    elif retention.source == "project" and retention.model:
        _say(args, f"{where}: the project's default: {retention.effective.describe()}")
    else:
        _say(args, f"{where}: {retention.effective.describe()}")


def _retention_show(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        retention = client.retention(args.ref)
    _show_retention(args, retention)
    return retention


def _retention_set(args: argparse.Namespace) -> Any:
    policy = _rules(args)
    if policy is None:
        raise _UsageError(
            "give at least one rule (--keep-latest, --keep-best, --keep-every-steps, "
            "--keep-every-hours, --keep-within); to remove the policy: lmvp retention unset"
        )
    with _client(args) as client:
        retention = client.set_retention(args.ref, policy)
    _show_retention(args, retention)
    _say(args, "it applies at the next commit; `lmvp retention preview` shows what would go")
    return retention


def _retention_unset(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        retention = client.delete_retention(args.ref)
    _show_retention(args, retention)
    return retention


def _retention_preview(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        preview = client.preview_retention(args.ref, _rules(args))
    _show_preview(args, preview)
    return preview


def _retention_apply(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        preview = client.apply_retention(args.ref)
    _show_preview(args, preview)
    return preview


def _show_preview(args: argparse.Namespace, preview: RetentionPreview) -> None:
    if args.json:
        return
    name = f"{preview.project}/{preview.model}"
    if preview.policy is None:
        print(f"{name}: no retention policy (every version is kept)")
        return
    print(f"{name}: {preview.policy.describe()}")
    for kept in preview.keep:
        print(f"  keep    v{kept.number:<6} {', '.join(kept.rules)}")
    for gone in preview.remove:
        step = f"step {gone.step}" if gone.step is not None else ""
        print(f"  remove  v{gone.number:<6} {human_size(gone.size):>9}  {step}")
    verb = "moved" if preview.applied else "would move"
    print(
        f"{len(preview.remove)} version(s) {verb} to the trash, {len(preview.keep)} kept; "
        f"{human_size(preview.bytes_freed)} freed once they leave the trash"
    )


def _trash_list(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        items = client.trash(args.project)
    if not items:
        _say(args, "the trash is empty")
    _table(args, items, ("ref", "kind", "deleted_at", "deleted_by", "reason", "purge_at"))
    return items


def _trash_restore(args: argparse.Namespace) -> Any:
    with _client(args) as client:
        restored = client.restore(args.ref)
    _say(args, f"restored {args.ref}")
    return restored


# --- output -------------------------------------------------------------------------------------


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.json:
        print(text)


def _table(args: argparse.Namespace, rows: list[Any], columns: tuple[str, ...]) -> None:
    if args.json:
        return
    cells = [[c.upper() for c in columns]]
    for row in rows:
        cells.append([_cell(getattr(row, c)) for c in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M")
    return str(value)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


@contextmanager
def _progress(args: argparse.Namespace, what: str) -> Iterator[Callable[[int], None] | None]:
    """A byte progress bar (bytes, rate, ETA) on stderr; none for --json or when not a TTY."""
    if args.json or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc=what, unit="B", unit_scale=True, unit_divisor=1024, leave=False) as bar:
        yield _Bar(bar)


class _Bar:
    """A progress callback that drives a tqdm bar; `set_total` gives it an ETA."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def __call__(self, n: int) -> None:
        self.bar.update(n)

    def set_total(self, total: int) -> None:
        self.bar.reset(total=total)


__all__ = ["command_as_typed", "format_diff", "format_table", "main"]
