"""`Client`: one LMVP server, everything it offers, as typed Python calls.

The module functions `lmvp.download`, `lmvp.update` and `lmvp.show_history` use a default
client configured from `LMVP_SERVER` / `LMVP_TOKEN` or the saved login; make a `Client` for
anything else, or to talk to several servers.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from lmvp import _endpoints, fetch, publish, transfer
from lmvp._http import HTTP, RetryPolicy
from lmvp.credentials import normalize_server, resolve_server, resolve_token
from lmvp.errors import AuthenticationError, InvalidRef, NotFound, ServerUnavailable
from lmvp.history import format_table
from lmvp.refs import ModelRef, parse_project_or_model, parse_ref
from lmvp.runs import BATCH_POINTS, Run, encode_batch, group_points, split_batches
from lmvp.throttle import Throttle
from lmvp.types import (
    Alias,
    Event,
    FileEntry,
    LocalFile,
    Member,
    MetricPoint,
    Model,
    Progress,
    Project,
    Retention,
    RetentionPolicy,
    RetentionPreview,
    RunInfo,
    Series,
    TensorComparison,
    Token,
    TrashItem,
    Usage,
    User,
    Version,
)


def _retention_path(ref: str | ModelRef) -> str:
    """The retention resource of a model (`project/model`) or of a project (`project`)."""
    if isinstance(ref, ModelRef):
        return f"/projects/{ref.project}/models/{ref.model}/retention"
    project, model = parse_project_or_model(ref)
    if model is None:
        return f"/projects/{project}/retention"
    return f"/projects/{project}/models/{model}/retention"


# How long the server may take to compare two versions tensor by tensor.
COMPARE_TIMEOUT = 600.0


def _version_param(version: int | str) -> str:
    """A version as the server's `?a=`/`?b=` take it: a number, `v7`, an alias or `latest`."""
    if isinstance(version, bool):
        raise InvalidRef(f"{version!r} is not a version: give a number or an alias")
    return str(version).strip()


class Client:
    """A connection to one LMVP server.

    `server` and `token` default to `LMVP_SERVER` / `LMVP_TOKEN`, then the saved login
    (`lmvp login`). `cache_dir` is where downloads are kept (default: the user cache dir).
    `retries` is how many times a request is tried before `ServerUnavailable`. `throttle`
    paces (and can pause) every upload of this client; see `Throttle`.
    """

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        *,
        cache_dir: str | Path | None = None,
        retries: int = 5,
        throttle: Throttle | None = None,
    ) -> None:
        self.server = resolve_server(server)
        self.http = HTTP(
            self.server,
            resolve_token(self.server, token),
            retry=RetryPolicy(attempts=max(1, retries)),
        )
        self.http.throttle = throttle
        self.cache_dir = Path(cache_dir) if cache_dir else None

    @property
    def token(self) -> str | None:
        """The token this client sends (None: anonymous)."""
        return self.http.token

    @property
    def throttle(self) -> Throttle | None:
        """The `Throttle` pacing this client's uploads (None: as fast as the link goes). Set
        it at any time: uploads in flight follow it from their next slice."""
        return self.http.throttle

    @throttle.setter
    def throttle(self, throttle: Throttle | None) -> None:
        self.http.throttle = throttle

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.server!r})"

    # --- account ----------------------------------------------------------------------------

    @classmethod
    def login(cls, server: str, username: str, password: str, *, label: str = "lmvp") -> Client:
        """Log in with a password; returns a client holding a new write token (its
        `token`, named `label`; store it with `lmvp.credentials.save_login` to keep it). Raises
        `AuthenticationError` for a wrong username or password, `ServerUnavailable`."""
        server = normalize_server(server)
        http = HTTP(server, None)
        try:
            token = http.json(
                "POST",
                "/auth/login",
                json={"username": username, "password": password, "token_name": label},
            )["token"]
        except AuthenticationError as exc:
            # The generic 401 advice ("log in with `lmvp login`") is circular here.
            raise AuthenticationError(
                f"{server} refused the login of {username!r}: wrong username or password",
                code=exc.code,
                status=exc.status,
            ) from None
        finally:
            http.close()
        return cls(server, token)

    def whoami(self) -> User:
        """The user this client's token belongs to."""
        return User.from_json(self.http.json("GET", "/me"))

    def tokens(self) -> list[Token]:
        return [Token.from_json(t) for t in self.http.json("GET", "/tokens")]

    def create_token(
        self, name: str = "", *, scope: str = "write", expires_in_days: int | None = None
    ) -> Token:
        """A new token; its `secret` is shown only now."""
        body = {"name": name, "scope": scope, "expires_in_days": expires_in_days}
        return Token.from_json(self.http.json("POST", "/tokens", json=body))

    def revoke_token(self, token_id: int) -> None:
        self.http.request("DELETE", f"/tokens/{token_id}")

    # --- projects and members ---------------------------------------------------------------

    def projects(self) -> list[Project]:
        return [Project.from_json(p) for p in self.http.json("GET", "/projects")]

    def project(self, name: str) -> Project:
        return Project.from_json(self.http.json("GET", f"/projects/{name}"))

    def create_project(self, name: str, *, description: str = "") -> Project:
        body = {"name": name, "description": description}
        return Project.from_json(self.http.json("POST", "/projects", json=body))

    def members(self, project: str) -> list[Member]:
        return [Member.from_json(m) for m in self.http.json("GET", f"/projects/{project}/members")]

    def set_member(self, project: str, username: str, role: str) -> Member:
        """Add `username` to the project with `role`, or change their role (owners only)."""
        data = self.http.json("PUT", f"/projects/{project}/members/{username}", json={"role": role})
        return Member.from_json(data)

    def remove_member(self, project: str, username: str) -> None:
        self.http.request("DELETE", f"/projects/{project}/members/{username}")

    # --- models, versions, aliases ------------------------------------------------------------

    def models(self, project: str) -> list[Model]:
        return [Model.from_json(m) for m in self.http.json("GET", f"/projects/{project}/models")]

    def model(self, ref: str | ModelRef) -> Model:
        return _endpoints.get_model(self.http, parse_ref(ref))

    def create_model(self, ref: str | ModelRef, *, description: str = "") -> Model:
        return _endpoints.create_model(self.http, parse_ref(ref), description=description)

    def ensure_model(self, ref: str | ModelRef) -> Model:
        """The model, created first if it does not exist yet."""
        return _endpoints.ensure_model(self.http, parse_ref(ref))

    def version(self, ref: str | ModelRef) -> Version:
        """One version: `p/m` (latest), `p/m:7`, `p/m@alias`."""
        return _endpoints.get_version(self.http, parse_ref(ref))

    def commit_version(
        self,
        model_ref: str | ModelRef,
        files: Iterable[FileEntry],
        *,
        message: str = "",
        metadata: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        parent: int | Version | None = None,
        idempotency_key: str | None = None,
        source_host: str | None = None,
        source_path: str = "",
        run: int | None = None,
        step: int | None = None,
    ) -> Version:
        """Commit the model's next version from files whose bytes the project already holds
        (`send_files` makes sure of that); returns the new version.

        `idempotency_key` (default: a new one) makes a retried commit return the version the
        first one made instead of making a second: keep it to retry after a crash. `parent`
        makes the commit fail with `Conflict` if another version landed after it. `run` and
        `step` tie the version to the run it was taken from; without `metrics` the server
        then stores the run's latest values at that step. `source_host` defaults to this
        machine's name. Raises `Conflict`, `NotFound` (no such model; see `ensure_model`),
        `RequestError` for a manifest naming bytes the project lacks, `PermissionDenied`.
        """
        return _endpoints.commit_version(
            self.http,
            parse_ref(model_ref),
            files,
            message=message,
            metadata=metadata,
            metrics=metrics,
            parent=parent,
            idempotency_key=idempotency_key,
            source_host=source_host,
            source_path=source_path,
            run=run,
            step=step,
        )

    def versions(
        self, ref: str | ModelRef, *, limit: int | None = None, before: int | None = None
    ) -> list[Version]:
        """The model's versions, newest first (all of them, or the newest `limit`); with
        `before`, only those numbered below it (a page after the last one seen)."""
        r = parse_ref(ref)
        out: list[Version] = []
        while limit is None or len(out) < limit:
            page_size = 1000 if limit is None else min(1000, limit - len(out))
            params: dict[str, Any] = {"limit": page_size}
            if before is not None:
                params["before"] = before
            page = self.http.json(
                "GET", f"/projects/{r.project}/models/{r.model}/versions", params=params
            )
            out.extend(Version.from_json(v) for v in page["items"])
            before = page["next"]
            if before is None:
                break
        return out

    def compare_tensors(
        self, project: str, model: str, a: int | str, b: int | str
    ) -> TensorComparison:
        """Versions `a` and `b` of `project/model` (numbers, aliases or "latest") tensor by
        tensor, computed by the server: for each safetensors file of either version (matched
        by role, as `checkpoint-400/model.safetensors` to `checkpoint-800/model.safetensors`),
        which tensors were added, removed, reshaped, unchanged, or changed, with the relative
        change ||a - b|| / ||a||. Files that are not safetensors are in `skipped`. Raises
        `NotFound` for an unknown project, model or version."""
        r = parse_ref(f"{project}/{model}")
        data = self.http.json(
            "GET",
            f"/projects/{r.project}/models/{r.model}/compare/tensors",
            params={"a": _version_param(a), "b": _version_param(b)},
            # The server reads the bytes of every tensor that may have changed: seconds per GiB.
            timeout=httpx.Timeout(COMPARE_TIMEOUT, connect=10.0),
        )
        return TensorComparison.from_json(data)

    def aliases(self, ref: str | ModelRef) -> list[Alias]:
        r = parse_ref(ref)
        data = self.http.json("GET", f"/projects/{r.project}/models/{r.model}/aliases")
        return [Alias.from_json(a) for a in data]

    def set_alias(self, ref: str | ModelRef, alias: str, version: int | Version) -> Alias:
        """Point `alias` at `version` of the model (maintainers)."""
        number = version.number if isinstance(version, Version) else int(version)
        return _endpoints.set_alias(self.http, parse_ref(ref), alias, number)

    def delete_alias(self, ref: str | ModelRef, alias: str) -> None:
        r = parse_ref(ref)
        self.http.request("DELETE", f"/projects/{r.project}/models/{r.model}/aliases/{alias}")

    def delete_version(self, ref: str | ModelRef, version: int | Version) -> None:
        """Delete a version of the model (maintainers); its number is never handed out again."""
        r = parse_ref(ref)
        number = version.number if isinstance(version, Version) else int(version)
        self.http.request("DELETE", f"/projects/{r.project}/models/{r.model}/versions/{number}")

    def delete_model(self, ref: str | ModelRef) -> None:
        """Delete a model and all its versions (maintainers)."""
        r = parse_ref(ref)
        self.http.request("DELETE", f"/projects/{r.project}/models/{r.model}")

    def history(self, project: str, *, model: str | None = None, limit: int = 50) -> list[Event]:
        """What happened in the project (or one model of it), newest first."""
        params: dict[str, Any] = {"limit": min(limit, 1000)}
        if model:
            params["model"] = model
        data = self.http.json("GET", f"/projects/{project}/history", params=params)
        return [Event.from_json(e) for e in data["items"]][:limit]

    def events(
        self, *, since: int | None = None, on_open: Callable[[], None] | None = None
    ) -> EventStream:
        """Live events of every project you can read, as they happen (Server-Sent Events).

        Starts with the next event, or replays those after event id `since`. A dropped
        connection is re-opened by itself, resuming after the last event seen. The returned
        stream is an iterator of `Event`s; its `close()`, from any thread, ends the iteration
        at once (an app stopping its event thread). `on_open()` is called (on the iterating
        thread) each time the server has accepted the stream: every event committed after
        that moment will come, so a view that loads its state then misses nothing.
        """
        return EventStream(self, since, on_open)

    # --- retention policies and the trash -----------------------------------------------------

    def retention(self, ref: str | ModelRef) -> Retention:
        """The retention policy of a model (`project/model`) or a project's default
        (`project`), and the one in force."""
        return Retention.from_json(self.http.json("GET", _retention_path(ref)))

    def set_retention(self, ref: str | ModelRef, policy: RetentionPolicy) -> Retention:
        """Set the retention policy of a model, or a project's default (maintainers). It
        applies at the next commit and the server's scheduled pass; `preview_retention` first
        shows what it would remove."""
        data = self.http.json("PUT", _retention_path(ref), json=policy.to_json())
        return Retention.from_json(data)

    def delete_retention(self, ref: str | ModelRef) -> Retention:
        """Remove the policy of a model (the project's default then applies) or a project."""
        return Retention.from_json(self.http.json("DELETE", _retention_path(ref)))

    def preview_retention(
        self, ref: str | ModelRef, policy: RetentionPolicy | None = None
    ) -> RetentionPreview:
        """What the model's policy in force (or `policy`, to try one) would keep, by which
        rules, and remove now, with the bytes freed; changes nothing."""
        path = f"{_retention_path(parse_ref(ref))}/preview"
        if policy is None:
            return RetentionPreview.from_json(self.http.json("GET", path))
        data = self.http.json("POST", path, json=policy.to_json(), idempotent=True)
        return RetentionPreview.from_json(data)

    def apply_retention(self, ref: str | ModelRef) -> RetentionPreview:
        """Apply the model's policy now (maintainers): what it removed went to the trash."""
        data = self.http.json("POST", f"{_retention_path(parse_ref(ref))}/apply")
        return RetentionPreview.from_json(data)

    def trash(self, project: str | None = None) -> list[TrashItem]:
        """What is in the trash of `project` (or of all your projects), newest first."""
        params = {"project": project} if project else None
        return [TrashItem.from_json(t) for t in self.http.json("GET", "/trash", params=params)]

    def usage(self, project: str) -> Usage:
        """What the project's blobs take on the server (distinct blobs, so bytes shared by
        versions count once), and per model what its versions reference and what removing it
        would free."""
        return Usage.from_json(self.http.json("GET", f"/projects/{project}/usage"))

    def restore(self, ref: str) -> Version | Model | Project:
        """Take something out of the trash: a version (`project/model:12`, maintainers), a
        model (`project/model`, maintainers) or a project (`project`, owners)."""
        if "/" not in ref:
            project, _ = parse_project_or_model(ref)
            return Project.from_json(self.http.json("POST", f"/projects/{project}/restore"))
        r = parse_ref(ref)
        if r.is_latest:
            path = f"/projects/{r.project}/models/{r.model}/restore"
            return Model.from_json(self.http.json("POST", path))
        if not r.version.isdigit():
            raise InvalidRef(
                f"{ref!r}: a version in the trash has no alias; name it by number (p/m:12)"
            )
        path = f"/projects/{r.project}/models/{r.model}/versions/{r.version}/restore"
        return Version.from_json(self.http.json("POST", path))

    # --- runs and metrics ---------------------------------------------------------------------

    def create_run(
        self,
        model_ref: str | ModelRef,
        *,
        name: str | None = None,
        params: dict[str, Any] | None = None,
        host: str | None = None,
    ) -> RunInfo:
        """Record a new run of the model (created first if it does not exist) and return it.
        `name` defaults to `run-<id>`, `host` to this machine's name. To log metrics from
        this process, `init_run` is the easier way."""
        r = parse_ref(model_ref)
        self.ensure_model(r)
        body = {
            "model": r.model,
            "name": name or "",
            "host": socket.gethostname() if host is None else host,
            "params": params or {},
        }
        return RunInfo.from_json(self.http.json("POST", f"/projects/{r.project}/runs", json=body))

    def init_run(
        self,
        model_ref: str | ModelRef,
        *,
        name: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> Run:
        """Start a run of the model and return it, ready for `run.log(...)`. See
        `lmvp.init_run`, which also makes it the current run."""
        return Run(self, self.create_run(model_ref, name=name, params=params))

    def runs(self, model_ref: str | ModelRef, *, limit: int | None = None) -> list[RunInfo]:
        """The model's runs, newest first (all of them, or the newest `limit`)."""
        r = parse_ref(model_ref)
        out: list[RunInfo] = []
        before: int | None = None
        while limit is None or len(out) < limit:
            params: dict[str, Any] = {
                "limit": 1000 if limit is None else min(1000, limit - len(out))
            }
            if before is not None:
                params["before"] = before
            page = self.http.json(
                "GET", f"/projects/{r.project}/models/{r.model}/runs", params=params
            )
            out.extend(RunInfo.from_json(item) for item in page["items"])
            before = page["next"]
            if before is None:
                break
        return out

    def run(self, run_id: int) -> RunInfo:
        """One run by id, with its metric keys and the versions taken during it."""
        return RunInfo.from_json(self.http.json("GET", f"/runs/{int(run_id)}"))

    def finish_run(self, run_id: int, status: str = "finished") -> RunInfo:
        """Mark a run `finished` or `failed` (or `running` again) and return it."""
        return _endpoints.finish_run(self.http, run_id, status)

    def log_metrics(self, run_id: int, points: Iterable[MetricPoint]) -> int:
        """Add points to a run, in batches of 50,000; returns how many were new.

        Idempotent: points whose (key, step) the run already holds are ignored, so sending a
        batch again after an error is always safe. Retries server errors and lost
        connections a few times, then raises `ServerUnavailable`.
        """
        inserted = 0
        for batch, _ in split_batches(group_points(list(points)), BATCH_POINTS):
            inserted += _endpoints.post_metrics(self.http, int(run_id), encode_batch(batch))
        return inserted

    def metrics(
        self,
        run: int | str | RunInfo | Run,
        *,
        keys: Sequence[str] | None = None,
        max_points: int | None = None,
        step_min: int | None = None,
        step_max: int | None = None,
    ) -> dict[str, Series]:
        """A run's metric series, by key. See `lmvp.get_metrics`."""
        run_id = self.resolve_run(run)
        params: dict[str, Any] = {}
        if keys is not None:
            if isinstance(keys, str):
                keys = [keys]
            if not keys:
                return {}
            params["keys"] = ",".join(keys)
        if max_points is not None:
            params["max_points"] = max_points
        if step_min is not None:
            params["step_min"] = step_min
        if step_max is not None:
            params["step_max"] = step_max
        data = self.http.json("GET", f"/runs/{run_id}/metrics", params=params)
        return {s["key"]: Series.from_json(s) for s in data["series"]}

    def resolve_run(self, run: int | str | RunInfo | Run) -> int:
        """The id of a run given as an id, a `RunInfo` or `Run`, or a version reference
        (`"p/m:7"`: the run that version was taken from). Raises `NotFound` for a version
        that was not taken during a run."""
        if isinstance(run, bool):
            raise TypeError(f"not a run: {run!r}")
        if isinstance(run, int):
            return run
        if isinstance(run, str):
            if run.strip().isdigit():
                return int(run)
            version = self.version(run)
            if version.run is None:
                raise NotFound(
                    f"version {version.ref} was not taken during a run, so it has no metric "
                    "series (its own metrics are in version.metrics)"
                )
            return version.run
        return int(run.id)

    # --- bytes ------------------------------------------------------------------------------------

    def missing_blobs(self, project: str, hashes: Iterable[str]) -> set[str]:
        """The sha256 hashes among `hashes` whose bytes `project` does not hold. Raises
        `PermissionDenied` for a viewer."""
        return transfer.missing_blobs(self.http, project, hashes)

    def send_files(
        self,
        project: str,
        files: Sequence[LocalFile],
        *,
        progress: Progress | None = None,
        state_dir: str | Path | None = None,
    ) -> list[LocalFile]:
        """Make sure `project` holds the bytes of every file; returns the files with their
        sha256, ready for `commit_version`.

        Only bytes the project lacks are sent: resumable (tus) uploads, several at once, large
        files while they are hashed. A file whose `sha256` is given is taken at its word (the
        server checks what it receives against it). Upload state lives in `state_dir`
        (default: the user state dir), so an interrupted upload resumes there, also in
        another process. `progress(n)` gets bytes as they reach the server; if it has a
        `set_total(total)` method, that is told the bytes to send first. Raises
        `IntegrityError` when a file changes while it is read or sent, `TransferPaused` when
        the `throttle` is paused, `ServerUnavailable`, and the server's refusals.
        """
        return publish.send_files(
            self.http,
            project,
            list(files),
            progress,
            state_dir=None if state_dir is None else Path(state_dir),
        )

    # --- the main verbs -------------------------------------------------------------------------

    def download(
        self,
        ref: str | ModelRef,
        *,
        cache_dir: str | Path | None = None,
        local_dir: str | Path | None = None,
        force: bool = False,
        offline: bool = False,
        progress: Progress | None = None,
    ) -> Path:
        """Fetch a version into the local cache and return its path: the file itself when the
        version holds one file, else the version's folder. See `lmvp.download`."""
        return fetch.download_version(
            self.http,
            parse_ref(ref),
            cache_dir=cache_dir or self.cache_dir,
            local_dir=local_dir,
            force=force,
            offline=offline,
            progress=progress,
        )

    def update(
        self,
        model_ref: str | ModelRef,
        local_model: Any,
        *,
        message: str | None = None,
        metadata: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        aliases: Sequence[str] = (),
        parent: int | Version | None = None,
        idempotency_key: str | None = None,
        progress: Progress | None = None,
        run: int | RunInfo | Run | None = None,
        step: int | None = None,
    ) -> Version:
        """Publish `local_model` as the model's next version. See `lmvp.update`.

        `run` and `step` tie the version to the run it was taken from (a run of this model)
        and the run's step then; without `metrics`, the server stores the run's latest values
        at that step as the version's metrics."""
        return publish.publish(
            self.http,
            parse_ref(model_ref),
            local_model,
            message=message,
            metadata=metadata,
            metrics=metrics,
            aliases=aliases,
            parent=parent,
            idempotency_key=idempotency_key,
            progress=progress,
            run=None if run is None else self.resolve_run(run),
            step=step,
        )

    def show_history(
        self, project_or_model: str, *, limit: int = 20, file: IO[str] | None = None
    ) -> list[Version]:
        """Print a table of versions (of a model, or of every model of a project), newest
        first, and return them."""
        project, model = parse_project_or_model(project_or_model)
        if model is not None:
            versions = self.versions(f"{project}/{model}", limit=limit)
        else:
            versions = []
            for m in self.models(project):
                versions.extend(self.versions(f"{project}/{m.name}", limit=limit))
            versions.sort(key=lambda v: v.created_at, reverse=True)
            versions = versions[:limit]
        print(format_table(versions, title=project_or_model), file=file or sys.stdout)
        return versions


class EventStream:
    """An iterator of a server's live events; see `Client.events`."""

    def __init__(
        self, client: Client, since: int | None, on_open: Callable[[], None] | None = None
    ) -> None:
        self._client = client
        self._since = since
        self._on_open = on_open
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._response: httpx.Response | None = None
        self._events = self._follow()

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        return next(self._events)

    def _follow(self) -> Iterator[Event]:
        http, last, failures = self._client.http, self._since, 0
        while not self._closed.is_set():
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            try:
                with http.stream(
                    "GET", "/events", headers=headers, timeout=httpx.Timeout(30.0, read=None)
                ) as response:
                    with self._lock:
                        self._response = response
                    if self._closed.is_set():
                        return
                    failures = 0
                    if self._on_open is not None:
                        self._on_open()
                    for event in _parse_sse(response.iter_lines()):
                        last = event.id
                        yield event
            except (httpx.TransportError, ServerUnavailable) as exc:
                if self._closed.is_set():
                    return
                failures += 1
                if failures >= http.retry.attempts:
                    raise ServerUnavailable(
                        f"lost the event stream of {http.server} and could not reopen it: {exc}"
                    ) from exc
                self._closed.wait(http.retry.delay(failures))
            finally:
                with self._lock:
                    self._response = None

    def close(self) -> None:
        """End the iteration now; safe from another thread (it shuts the socket down, which
        wakes a read blocked on it)."""
        self._closed.set()
        with self._lock:
            response = self._response
        if response is None:
            return
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield Event.from_json(json.loads("\n".join(data)))
                data = []
            continue
        if line.startswith(":"):
            continue  # keep-alive comment
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value.removeprefix(" "))
