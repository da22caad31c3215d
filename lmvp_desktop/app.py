"""`lmvp-desktop`: the desktop app, with the sync daemon inside.

    lmvp-desktop                 # log in (first start) and open the main window
    lmvp-desktop --demo          # a local server, a watched demo folder and a simulated job
    lmvp-desktop --demo-again    # the same, the job run again from its start (a new run)
    lmvp-desktop --minimized     # start in the tray (the autostart entry uses it)

Where there is no display (no DISPLAY or WAYLAND_DISPLAY, e.g. over ssh), it says so and runs
the same session headless: the daemon syncs and logs to stderr until Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

import lmvp
from lmvp import credentials
from lmvp.cli import command_as_typed
from lmvp.errors import LMVPError
from lmvp_daemon.errors import DaemonError
from lmvp_daemon.service import event_logger
from lmvp_daemon.state_dir import StateDirInUse
from lmvp_desktop import demo_job
from lmvp_desktop.local_server import LocalServer
from lmvp_desktop.session import DemoState, DesktopSession

log = logging.getLogger("lmvp_desktop")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmvp-desktop", description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="server URL [default: the last login]")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="start a local server and a simulated training job in a watched demo folder",
    )
    parser.add_argument(
        "--demo-again",
        action="store_true",
        help="with --demo: run the demo's training job again from its first step, as a new run",
    )
    parser.add_argument("--minimized", action="store_true", help="start in the tray")
    parser.add_argument(
        "--headless", action="store_true", help="no window: sync in the foreground until Ctrl-C"
    )
    args = parser.parse_args(argv)
    args.demo = args.demo or args.demo_again
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    headless = args.headless or not has_display()
    if headless and not args.headless:
        print(
            "lmvp-desktop: no display here (DISPLAY and WAYLAND_DISPLAY are unset), so the "
            "window cannot open; running the server connection and the sync daemon headless "
            "instead (Ctrl-C stops).",
            file=sys.stderr,
        )
    try:
        if headless:
            return run_headless(args)
        return run_window(args)
    except (LMVPError, DaemonError) as exc:
        print(f"lmvp-desktop: {exc.message}", file=sys.stderr)
        return 1


def has_display() -> bool:
    """Whether Qt can show a window here (an offscreen platform counts: tests use it)."""
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform.startswith(("offscreen", "minimal", "vnc", "eglfs", "linuxfb")):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_headless(args: argparse.Namespace) -> int:
    """The session without widgets: the daemon runs in the foreground until a signal."""
    local: LocalServer | None = None
    if args.demo:
        local = LocalServer()
        local.start()
        client = demo_login(local)
    else:
        client = lmvp.Client(args.server)
    try:
        session = DesktopSession(client, local_server=local)
    except DaemonError:
        _close_unused(client, local)
        raise

    # Before the first line a user (or a test) may answer with Ctrl-C.
    def stop(*_: Any) -> None:
        session.daemon.request_stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if args.demo:
        again = command_as_typed("lmvp-desktop")
        session.demo_finished_callbacks.append(
            lambda: log.info(
                "demo: the simulated training job has finished: it trained all its %d steps, "
                "and its checkpoints are versions of demo/tiny-net. To run it again, as a new "
                "run: `%s --demo --demo-again`",
                demo_job.STEPS,
                again,
            )
        )
        folder = session.restart_demo() if args.demo_again else session.start_demo()
        if session.demo_state() is DemoState.running:
            print(f"demo: a simulated training job writes into {folder}", file=sys.stderr)
        assert local is not None
        lmvp_command = command_as_typed("lmvp")  # .venv/bin/lmvp unless the venv is active
        print(
            f"      versions appear at {client.server}: `{lmvp_command} login {client.server}` "
            f"as admin (password in {local.data_dir / 'initial-admin-password'}), then "
            f"`{lmvp_command} history demo`",
            file=sys.stderr,
        )

    session.daemon.subscribe(event_logger(log))
    try:
        session.daemon.run()
    finally:
        session.close()
    return 0


def run_window(args: argparse.Namespace) -> int:
    local: LocalServer | None = None
    # The app starts again the local server it ran last time ("Start a local server", `make
    # run`): that server stopped when the app quit, and a second start used to find nothing
    # there ("cannot reach the LMVP server") while saying "Up to date".
    from lmvp_desktop.settings import DesktopSettings

    settings = DesktopSettings.load()
    restart_failed: BaseException | None = None
    if args.demo:
        # The server starts while Qt and the app's modules load (seconds each on a slow box).
        local = LocalServer()
        local.launch()
    elif settings.local_server and not args.server:
        local = LocalServer.for_url(settings.server_url)
        if local is not None:
            try:
                local.launch()
            except LMVPError as exc:
                log.warning("could not start the local LMVP server again: %s", exc.message)
                restart_failed, local = exc, None
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QDialog, QLabel, QMessageBox

    from lmvp_desktop.platform_check import xcb_problem

    if problem := xcb_problem():  # Qt would abort blaming libxcb-cursor0 whatever is missing
        if local is not None:
            local.stop()
        raise LMVPError(problem)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setApplicationName("LMVP")
    app.setQuitOnLastWindowClosed(False)  # closing the window keeps syncing in the tray
    from lmvp_desktop import gc_guard

    gc_guard.install(app)  # Qt objects must never be collected on a worker thread
    starting: QLabel | None = None
    if local is not None and local.proc is not None:
        # Starting a server takes seconds on a slow machine: say so at once, not after.
        starting = QLabel(f"Starting the local LMVP server at {local.url} …")
        starting.setWindowTitle("LMVP")
        starting.setMargin(24)
        starting.show()
        app.processEvents()

    from lmvp_desktop.login import LoginDialog
    from lmvp_desktop.main_window import MainWindow

    client: lmvp.Client | None = None
    if local is not None:
        try:
            local.wait_ready(on_wait=app.processEvents)
        except LMVPError as exc:
            log.warning("the local LMVP server did not start: %s", exc.message)
            if args.demo:
                raise
            restart_failed, local = exc, None
    if local is not None and args.demo:
        client = demo_login(local)
    elif local is not None:
        client = stored_login(local.url) or _admin_login(local)
    if client is None:
        client = stored_login(args.server or settings.server_url or None)
        if client is None:
            if starting is not None:
                starting.close()
            dialog = LoginDialog(args.server or settings.server_url or "", error=restart_failed)
            if dialog.exec() != QDialog.DialogCode.Accepted or dialog.client is None:
                if local is not None:
                    local.stop()
                return 1
            if local is not None and dialog.local_server is None:
                local.stop()  # logged in elsewhere: the restarted one is not wanted
            client, local = dialog.client, dialog.local_server or local
    settings.server_url = client.server
    settings.local_server = local is not None
    settings.save()

    try:
        session = DesktopSession(
            client,
            settle_seconds=settings.settle_seconds,
            bandwidth_limit=settings.bandwidth_limit,
            run_idle_seconds=settings.run_idle_seconds,
            divergence_factor=settings.divergence_factor,
            local_server=local,
        )
    except StateDirInUse as exc:
        # `lmvp-daemon run` syncs the same folders: say so to the person, who must stop one.
        log.error("%s", exc.message)
        QMessageBox.critical(None, f"LMVP: {exc.title}", exc.message)
        _close_unused(client, local)
        return 1
    window = MainWindow(session, settings, demo=args.demo)
    if args.demo:
        if args.demo_again:
            session.restart_demo()
        else:
            session.start_demo()
        window.show_model("demo", "tiny-net")
    session.start()
    window.start()
    if not args.minimized or not window.has_tray():
        window.show()
    if starting is not None:
        starting.close()
    # Ctrl-C or a SIGTERM (logging out of the desktop) quits like the Quit menu does, so the
    # daemon, the demo job and a local server stop cleanly. Python handles signals only while
    # it runs, hence the idle timer.
    signal.signal(signal.SIGINT, lambda *_: app.quit())
    signal.signal(signal.SIGTERM, lambda *_: app.quit())
    wake = QTimer()
    wake.start(250)
    wake.timeout.connect(lambda: None)
    code = app.exec()
    window.shutdown()
    session.close()
    return int(code)


def _close_unused(client: lmvp.Client, local: LocalServer | None) -> None:
    """Let go of what was opened for a session that could not start."""
    client.close()
    if local is not None:
        local.stop()


def demo_login(local: LocalServer) -> lmvp.Client:
    """The demo's client of the local server: the stored login while the server still takes its
    token (asked with /me), else a new login as the server's admin, stored for the next start.
    (Every start used to log in afresh, leaving a new 30-day token behind each time.)"""
    client = stored_login(local.url)
    if client is not None:
        return client
    client = local.admin_login()
    assert client.token is not None
    where = credentials.save_login(client.server, client.token)
    log.info("logged in to %s as admin; the token is in %s", client.server, where)
    return client


def _admin_login(local: LocalServer) -> lmvp.Client | None:
    """The local server's admin login (its password file), stored; None if it cannot be had
    (the login dialog then asks)."""
    try:
        return demo_login(local)
    except LMVPError as exc:
        log.warning("could not log in to the local server as admin: %s", exc.message)
        return None


def stored_login(server: str | None) -> lmvp.Client | None:
    """A client from the saved login, if there is one and the server still takes its token."""
    try:
        url = credentials.resolve_server(server)
    except LMVPError:
        return None
    token = credentials.resolve_token(url)
    if not token:
        return None
    client = lmvp.Client(url, token, retries=2)
    try:
        client.whoami()
    except lmvp.AuthenticationError:
        client.close()
        return None
    except LMVPError as exc:
        # Offline at start: keep the login; the daemon waits for the server to come back.
        log.warning("server %s not reachable now: %s", url, exc)
    return client


__all__ = ["main"]
