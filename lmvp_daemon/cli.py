"""`lmvp-daemon`: watch checkpoint folders and version every finished checkpoint.

    lmvp-daemon watch add ./runs/exp1 vision/resnet   # map a folder to project/model
    lmvp-daemon run                                   # foreground; logs to stderr and a file
    lmvp-daemon status

The daemon talks to the server of `lmvp login` (or LMVP_SERVER / LMVP_TOKEN) and keeps its state
in LMVP_DAEMON_STATE_DIR (default: the user state dir). Exit codes: 0 ok, 1 error, 2 usage.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import signal
import sys
from pathlib import Path
from typing import Any

from lmvp_daemon.errors import DaemonError

PAUSE_FILE = "paused"  # the same as lmvp_daemon.service.PAUSE_FILE


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except DaemonError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:
        from lmvp.errors import InvalidRef, LMVPError

        if isinstance(exc, InvalidRef):
            print(f"error: {exc.message}", file=sys.stderr)
            return 2
        if isinstance(exc, LMVPError):
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
        raise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmvp-daemon", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--state-dir", type=Path, help="where the outbox lives [env LMVP_DAEMON_STATE_DIR]"
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = sub.add_parser("run", help="watch and sync in the foreground until stopped")
    run.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds a checkpoint must stay unchanged before it is sent [2]",
    )
    run.add_argument(
        "--run-idle",
        type=float,
        default=300.0,
        help="seconds without new metrics or checkpoints after which a folder's run is "
        "marked finished [300]",
    )
    run.add_argument(
        "--divergence",
        type=float,
        default=3.0,
        help="alert when a loss exceeds this many times its recent average [3]",
    )
    run.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="longest sleep between checks for retries due and pause/resume [1]",
    )
    run.add_argument(
        "--rescan",
        type=float,
        default=60.0,
        help="seconds between full rescans, which catch events the kernel dropped [60]",
    )
    run.add_argument(
        "--once", action="store_true", help="one pass: record, send what has settled, then exit"
    )
    run.add_argument("--server", help="server URL [env LMVP_SERVER; default: last login]")
    run.add_argument(
        "--limit",
        metavar="RATE",
        help="limit uploads to RATE bytes/s (50M, 800k, 1GiB, off); kept for later runs",
    )
    run.set_defaults(func=_run)

    limit = sub.add_parser("limit", help="show or set the upload bandwidth limit")
    limit.add_argument("rate", nargs="?", help="bytes per second (50M, 800k, 1GiB), or off")
    limit.set_defaults(func=_limit)

    retry = sub.add_parser("retry", help="send failed checkpoints again")
    retry.set_defaults(func=_retry)

    watch = sub.add_parser("watch", help="manage watched folders").add_subparsers(
        title="watch commands", metavar="ACTION"
    )
    add = watch.add_parser("add", help="watch FOLDER and version its checkpoints as MODEL_REF")
    add.add_argument("folder", type=Path)
    add.add_argument("model_ref", metavar="MODEL_REF", help="project/model")
    add.add_argument(
        "--include",
        action="append",
        default=None,
        help="a pattern of checkpoint files (repeatable; default: common formats)",
    )
    add.add_argument(
        "--ignore",
        action="append",
        default=None,
        help="a gitignore-style pattern to skip (repeatable)",
    )
    add.set_defaults(func=_watch_add)
    ls = watch.add_parser("list", help="list watched folders")
    ls.set_defaults(func=_watch_list)
    rm = watch.add_parser("rm", help="stop watching a folder (by path or id)")
    rm.add_argument("watch")
    rm.set_defaults(func=_watch_rm)
    for verb, enabled in (("enable", True), ("disable", False)):
        toggle = watch.add_parser(verb, help=f"{verb} syncing of one watched folder")
        toggle.add_argument("watch")
        toggle.set_defaults(func=_watch_toggle, enabled=enabled)

    sub.add_parser("status", help="what is queued, sending, done and failed").set_defaults(
        func=_status
    )
    sub.add_parser("pause", help="stop sending until `resume`").set_defaults(func=_pause)
    sub.add_parser("resume", help="send again after `pause`").set_defaults(func=_resume)
    return parser


def _outbox(args: argparse.Namespace) -> Any:
    from lmvp_daemon.outbox import Outbox

    return Outbox(args.state_dir)


def _watch_add(args: argparse.Namespace) -> int:
    from lmvp.refs import parse_ref

    ref = parse_ref(args.model_ref)
    if not ref.is_latest:
        raise DaemonError("watch a model, not a version: give project/model")
    folder = args.folder.expanduser().resolve()
    if not folder.is_dir():
        raise DaemonError(f"{folder} is not a folder: create it first, or check the path")
    with _outbox(args) as outbox:
        watch = outbox.add_watch(
            folder, ref.project, ref.model, include=args.include, ignore=args.ignore
        )
    print(f"watching {watch.folder} -> {ref.project}/{ref.model} (watch {watch.id})")
    return 0


def _watch_list(args: argparse.Namespace) -> int:
    with _outbox(args) as outbox:
        watches = outbox.watches()
    if not watches:
        print("no watched folders: add one with `lmvp-daemon watch add FOLDER project/model`")
    for w in watches:
        state = "" if w.enabled else "  (disabled)"
        print(f"{w.id:>3}  {w.folder} -> {w.project}/{w.model}{state}")
    return 0


def _watch_rm(args: argparse.Namespace) -> int:
    key: int | str = int(args.watch) if args.watch.isdigit() else str(Path(args.watch).resolve())
    with _outbox(args) as outbox:
        watch = outbox.remove_watch(key)
    print(f"stopped watching {watch.folder} (nothing on the server was touched)")
    return 0


def _watch_toggle(args: argparse.Namespace) -> int:
    key: int | str = int(args.watch) if args.watch.isdigit() else str(Path(args.watch).resolve())
    with _outbox(args) as outbox:
        watch = outbox.set_watch_enabled(key, args.enabled)
    print(f"{'enabled' if watch.enabled else 'disabled'} {watch.folder}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from lmvp_daemon.state_dir import resolve_state_dir

    state_dir = resolve_state_dir(args.state_dir)
    with _outbox(args) as outbox:
        counts = outbox.counts()
        failures = outbox.failures()
        watches = outbox.watches()
    from lmvp_daemon.service import read_settings, read_status

    running = _daemon_pid(state_dir)
    paused = (state_dir / PAUSE_FILE).exists()
    status = read_status(state_dir) if running else {}
    state = status.get("state") or ("paused" if paused else "")
    message = status.get("message") or ""
    print(
        f"daemon: {'running (pid ' + running + ')' if running else 'not running'}"
        f"{', ' + state if state else ''}{': ' + message if message else ''}; "
        f"state in {state_dir}"
    )
    limit = read_settings(state_dir).get("bandwidth_limit")
    if limit:
        print(f"upload limit: {limit / 1e6:.2f} MB/s")
    print(f"watched folders: {len(watches)}")
    with _outbox(args) as outbox:
        runs = {w.id: outbox.watch_run(w.id) for w in watches}
    from lmvp_daemon.metrics_sync import describe_skipped, skipped_files_of

    for w in watches:
        run = runs[w.id]
        if run.run_id is not None:
            print(
                f"  {w.folder} -> {w.project}/{w.model}: run {run.run_id}, "
                f"{run.points_sent} metric points sent"
            )
            for file, count in sorted(skipped_files_of(run.metric_state).items()):
                print(f"    {describe_skipped(file, count)}")
    for w in watches:
        # Derived, not remembered: a folder that is not there now is the error to show.
        if not Path(w.folder).is_dir():
            print(
                f"error: watched folder {w.folder} is missing (moved, renamed or unmounted?); "
                "nothing was deleted on the server: put it back, or `lmvp-daemon watch rm` it"
            )
    print("  ".join(f"{state.value}: {n}" for state, n in counts.items()))
    for cp in failures[:20]:
        print(f"failed: {cp.key}: {cp.last_error}")
    folders = {w.id: w.folder for w in watches}
    for alert in status.get("alerts") or []:
        if isinstance(alert, dict):
            where = folders.get(alert.get("watch"), "")
            print(f"alert: {where + ': ' if where else ''}{alert.get('message', '')}")
    return 0


def _pause(args: argparse.Namespace) -> int:
    from lmvp_daemon.state_dir import resolve_state_dir

    (resolve_state_dir(args.state_dir) / PAUSE_FILE).touch()
    print("paused: checkpoints are still recorded, none is sent until `lmvp-daemon resume`")
    return 0


def _resume(args: argparse.Namespace) -> int:
    from lmvp_daemon.state_dir import resolve_state_dir

    (resolve_state_dir(args.state_dir) / PAUSE_FILE).unlink(missing_ok=True)
    print("resumed")
    return 0


def _run(args: argparse.Namespace) -> int:
    from lmvp import Client
    from lmvp_daemon.service import SyncDaemon, event_logger, parse_rate, write_settings
    from lmvp_daemon.state_dir import resolve_state_dir

    state_dir = resolve_state_dir(args.state_dir)
    _setup_logging(state_dir)
    log = logging.getLogger("lmvp_daemon")
    if args.limit is not None:
        write_settings(state_dir, {"bandwidth_limit": parse_rate(args.limit)})
    with (
        _outbox(args) as outbox,
        Client(args.server) as client,
        SyncDaemon(
            outbox,
            client,
            settle_seconds=args.settle,
            run_idle_seconds=args.run_idle,
            divergence_factor=args.divergence,
            interval=args.interval,
            rescan_seconds=args.rescan,
        ) as daemon,
    ):
        daemon.subscribe(event_logger(log))
        if args.once:
            daemon.run_once()
            return 0

        def on_signal(*_: Any) -> None:
            daemon.request_stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        limit = daemon.bandwidth_limit
        log.info(
            "syncing %d watched folder(s) to %s%s",
            len(outbox.watches()),
            client.server,
            f", uploads limited to {limit / 1e6:.1f} MB/s" if limit else "",
        )
        daemon.run()
    return 0


def _limit(args: argparse.Namespace) -> int:
    from lmvp_daemon.service import parse_rate, read_settings, write_settings
    from lmvp_daemon.state_dir import resolve_state_dir

    state_dir = resolve_state_dir(args.state_dir)
    if args.rate is None:
        limit = read_settings(state_dir).get("bandwidth_limit")
        print(f"upload limit: {limit / 1e6:.2f} MB/s" if limit else "upload limit: none")
        return 0
    limit = parse_rate(args.rate)
    write_settings(state_dir, {"bandwidth_limit": limit})
    print(
        f"uploads limited to {limit / 1e6:.2f} MB/s" if limit else "no upload limit",
        "(a running daemon applies it at once)",
    )
    return 0


def _retry(args: argparse.Namespace) -> int:
    with _outbox(args) as outbox:
        count = outbox.retry_failed()
    print(f"{count} failed checkpoint(s) will be sent again" if count else "nothing failed")
    return 0


def _setup_logging(state_dir: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    stderr = logging.StreamHandler()
    stderr.setFormatter(fmt)
    logfile = logging.handlers.RotatingFileHandler(
        state_dir / "daemon.log", maxBytes=5 * 1024 * 1024, backupCount=3
    )
    logfile.setFormatter(fmt)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    root.addHandler(stderr)
    root.addHandler(logfile)


def _daemon_pid(state_dir: Path) -> str | None:
    """The pid of the daemon holding the state dir's lock, or None if none does."""
    from lmvp_daemon.state_dir import lock_holder

    holder = lock_holder(state_dir)
    return holder[0] if holder is not None else None
