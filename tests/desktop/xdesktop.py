"""A real X desktop for the acceptance tests, the README's screenshots and the cold-start bench:
an Xvfb display, a session D-Bus with the accessibility bus (AT-SPI) on it, optionally a
notification server, and the real `lmvp-desktop --demo` process on Qt's xcb platform, read as
a person (or a screen reader) reads it, through the accessibility tree.

    with XDesktop() as x:
        app = x.start_app()          # lmvp-desktop --demo in a home of its own
        x.wait_for(lambda t: t.find(role="frame", name=r"^LMVP"), timeout=10)

The recipe is /work/shared/HEADLESS.md's: Xvfb started with `-displayfd` (read up to the
newline), `dbus-daemon --session`, `at-spi-bus-launcher --launch-immediately`, the app with
QT_LINUX_ACCESSIBILITY_ALWAYS_ON=1, and Debian's python3 with pyatspi walking the tree
(`atspi_dump.py`, one process answering each request). Every helper process dies with the
process that started it (PR_SET_PDEATHSIG). Nothing of the app's Python objects is used.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.support import free_port

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
SYSTEM_PYTHON = "/usr/bin/python3"
AT_SPI_LAUNCHER = "/usr/libexec/at-spi-bus-launcher"
SCREEN = (1366, 768)  # a common laptop screen, the one the app must read well on

T = TypeVar("T")


class DesktopSetupError(RuntimeError):
    """A piece of the X desktop could not start; the message names the Debian package."""


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the process that started it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def missing_tools() -> list[str]:
    """The Debian packages this needs and this machine lacks (the Makefile installs them)."""
    missing = []
    if shutil.which("Xvfb") is None:
        missing.append("xvfb")
    if shutil.which("dbus-daemon") is None:
        missing.append("dbus")
    if not Path(AT_SPI_LAUNCHER).exists():
        missing.append("at-spi2-core")
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import pyatspi"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        missing.append("python3-pyatspi")
    return missing


@dataclass
class Node:
    """One object of the accessibility tree as AT-SPI gives it."""

    role: str
    name: str
    showing: bool
    extents: tuple[int, int, int, int] | None
    rows: int | None
    columns: int | None
    children: list[Node]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Node:
        extents = data.get("extents")
        return cls(
            data["role"],
            data["name"],
            bool(data.get("showing")),
            tuple(extents) if extents else None,  # type: ignore[arg-type]
            data.get("rows"),
            data.get("columns"),
            [cls.from_json(c) for c in data.get("children", [])],
        )

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()

    def find_all(self, *, role: str | None = None, name: str | None = None) -> list[Node]:
        """Every node below (and including) this one with that role and a name matching the
        regular expression `name`."""
        return [
            n
            for n in self.walk()
            if (role is None or n.role == role) and (name is None or re.search(name, n.name))
        ]

    def find(self, *, role: str | None = None, name: str | None = None) -> Node | None:
        found = self.find_all(role=role, name=name)
        return found[0] if found else None

    def texts(self, role: str | None = None) -> list[str]:
        return [n.name for n in self.walk() if role is None or n.role == role]

    def outline(self, depth: int = 0) -> str:
        """The tree as indented lines (for failure messages)."""
        line = f"{'  ' * depth}{self.role} {self.name!r}\n"
        return line + "".join(c.outline(depth + 1) for c in self.children)


@dataclass
class App:
    """A running `lmvp-desktop`; its stderr is collected as it comes."""

    proc: subprocess.Popen[str]
    home: Path
    port: int
    started: float
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_password_file(self) -> Path:
        return self.home / "data" / "lmvp-server" / "initial-admin-password"

    def output(self) -> str:
        return "".join(self.log[-80:])

    def stop(self) -> int:
        """Ctrl-C, as a person stops it (the app stops its daemon and local server)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class XDesktop:
    """Xvfb + session D-Bus + AT-SPI (+ a notification recorder); see the module docstring."""

    def __init__(self, *, notifications: Path | None = None, screen: tuple[int, int] = SCREEN):
        self.screen = screen
        self.notifications = notifications
        self.tmp = Path(tempfile.mkdtemp(prefix="lmvp-xdesktop-"))
        self.runtime = self.tmp / "runtime"
        self.runtime.mkdir(mode=0o700)
        self.display = ""
        self.bus = ""
        self._procs: list[subprocess.Popen[Any]] = []
        self._apps: list[App] = []
        self._reader: subprocess.Popen[str] | None = None
        self._reader_lock = threading.Lock()

    # --- life --------------------------------------------------------------------------------

    def __enter__(self) -> XDesktop:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def start(self) -> None:
        missing = missing_tools()
        if missing:
            raise DesktopSetupError(
                f"the X desktop for these tests needs Debian packages not installed here: "
                f"`apt-get install {' '.join(missing)}` (`make setup` installs them)"
            )
        self._start_xvfb()
        self._start_bus()
        self._spawn([AT_SPI_LAUNCHER, "--launch-immediately"], stdout=subprocess.DEVNULL)
        if self.notifications is not None:
            recorder = self._spawn(
                [sys.executable, str(HERE / "dbus_recorder.py"), str(self.notifications)],
                stdout=subprocess.PIPE,
                text=True,
                env={**self.env(), "QT_QPA_PLATFORM": "offscreen"},
            )
            assert recorder.stdout is not None
            if recorder.stdout.readline().strip() != "ready":
                raise DesktopSetupError("the notification recorder did not start")

    def close(self) -> None:
        for app in self._apps:
            with contextlib.suppress(Exception):
                app.stop()
        if self._reader is not None and self._reader.stdin is not None:
            with contextlib.suppress(OSError):
                self._reader.stdin.close()
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def env(self) -> dict[str, str]:
        """The environment of a process on this desktop."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "WAYLAND_"))}
        env.update(
            DISPLAY=self.display,
            DBUS_SESSION_BUS_ADDRESS=self.bus,
            XDG_RUNTIME_DIR=str(self.runtime),
            NO_AT_BRIDGE="0",
        )
        return env

    def _spawn(self, args: list[str], **kw: Any) -> subprocess.Popen[Any]:
        kw.setdefault("env", self.env())
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(args, preexec_fn=die_with_parent, **kw)
        self._procs.append(proc)
        return proc

    def _start_xvfb(self) -> None:
        read, write = os.pipe()
        width, height = self.screen
        try:
            self._spawn(
                [
                    "Xvfb",
                    "-displayfd",
                    str(write),
                    "-screen",
                    "0",
                    f"{width}x{height}x24",
                    "-nolisten",
                    "tcp",
                    "-noreset",
                ],
                pass_fds=(write,),
                env=dict(os.environ),
            )
        finally:
            os.close(write)
        number = b""
        with os.fdopen(read, "rb") as pipe:
            while not number.endswith(b"\n"):  # two writes: the number, then the newline
                chunk = pipe.read(1)
                if not chunk:
                    raise DesktopSetupError("Xvfb exited before it named its display")
                number += chunk
        self.display = f":{number.decode().strip()}"

    def _start_bus(self) -> None:
        proc = self._spawn(
            ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        assert proc.stdout is not None
        self.bus = proc.stdout.readline().strip()
        if not self.bus:
            raise DesktopSetupError("dbus-daemon --session did not print its address")

    # --- the app -----------------------------------------------------------------------------

    def start_app(
        self, *args: str, home: Path | None = None, port: int | None = None, demo: bool = True
    ) -> App:
        """`lmvp-desktop --demo ARGS` (without --demo if not `demo`) on this display, in a home
        of its own (XDG dirs, a free loopback port for its local server, no keyring), as a
        newcomer runs it."""
        home = home or Path(tempfile.mkdtemp(prefix="home-", dir=self.tmp))
        port = port or free_port()
        env = self.env()
        env = {k: v for k, v in env.items() if not k.startswith(("LMVP_", "XDG_"))}
        env.update(
            HOME=str(home),
            XDG_RUNTIME_DIR=str(self.runtime),
            XDG_DATA_HOME=str(home / "data"),
            XDG_CONFIG_HOME=str(home / "config"),
            XDG_STATE_HOME=str(home / "state"),
            XDG_CACHE_HOME=str(home / "cache"),
            LMVP_PORT=str(port),
            PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
            QT_QPA_PLATFORM="xcb",
            QT_LINUX_ACCESSIBILITY_ALWAYS_ON="1",
        )
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(BIN / "lmvp-desktop"), *(["--demo"] if demo else []), *args],
            env=env,
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,
        )
        app = App(proc, home, port, started)
        self._apps.append(app)
        return app

    # --- reading the screen ------------------------------------------------------------------

    def tree(self, app: str = "LMVP", *, shallow: bool = False) -> Node | None:
        """The accessibility tree of the application named `app`, None if it has none (yet);
        `shallow` leaves out the cells of tables (their `rows` remain): a faster reading."""
        with self._reader_lock:
            if self._reader is None or self._reader.poll() is not None:
                self._reader = self._spawn(
                    [SYSTEM_PYTHON, str(HERE / "atspi_dump.py")],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            assert self._reader.stdin is not None and self._reader.stdout is not None
            self._reader.stdin.write(("shallow " if shallow else "") + app + "\n")
            self._reader.stdin.flush()
            line = self._reader.stdout.readline()
        if not line:
            raise DesktopSetupError("the AT-SPI reader exited")
        apps = json.loads(line)["apps"]
        return Node.from_json(apps[0]) if apps else None

    def select_row(self, table: str, row: int, app: str = "LMVP") -> bool:
        """Select row `row` of the table named `table`, through AT-SPI."""
        with self._reader_lock:
            if self._reader is None or self._reader.poll() is not None:
                self.tree(app)  # starts the reader
            assert self._reader is not None
            assert self._reader.stdin is not None and self._reader.stdout is not None
            self._reader.stdin.write(f"select {app} {table} {row}\n")
            self._reader.stdin.flush()
            line = self._reader.stdout.readline()
        return bool(line and json.loads(line).get("selected"))

    def _ask(self, line: str, app: str) -> dict[str, Any]:
        with self._reader_lock:
            if self._reader is None or self._reader.poll() is not None:
                self._reader = None
        if self._reader is None:
            self.tree(app)  # starts the reader
        with self._reader_lock:
            assert self._reader is not None
            assert self._reader.stdin is not None and self._reader.stdout is not None
            self._reader.stdin.write(line + "\n")
            self._reader.stdin.flush()
            answer = self._reader.stdout.readline()
        return json.loads(answer) if answer else {}

    def press(self, role: str, name: str, app: str = "LMVP") -> bool:
        """Press the showing control of `role` named exactly `name` (no spaces in `role`:
        "push_button"), through AT-SPI's Action, as a screen reader's user does."""
        return bool(self._ask(f"press {app} {role.replace(' ', '_')} {name}", app).get("done"))

    def set_text(self, name: str, text: str, app: str = "LMVP") -> bool:
        """Type `text` into the showing text field whose accessible name is `name`."""
        return bool(self._ask(f"settext {app} {name.replace(' ', '_')} {text}", app).get("done"))

    def text(self, name: str, app: str = "LMVP") -> str | None:
        """The text in the showing text field whose accessible name is `name` (None: none)."""
        text = self._ask(f"gettext {app} {name.replace(' ', '_')}", app).get("text")
        return None if text is None else str(text)

    def wait_for(
        self,
        check: Callable[[Node], T | None],
        *,
        timeout: float,
        app: App | None = None,
        what: str = "",
        interval: float = 0.25,
    ) -> T:
        """Poll the tree until `check(tree)` gives something truthy, and return it. Fails with
        what the screen showed (and the app's log) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last: Node | None = None
        while True:
            if app is not None and app.proc.poll() is not None:
                raise AssertionError(
                    f"lmvp-desktop exited ({app.proc.returncode}) while waiting for "
                    f"{what or check}:\n{app.output()}"
                )
            last = self.tree()
            result = check(last) if last is not None else None
            if result:
                return result
            if time.monotonic() >= deadline:
                shown = last.outline() if last is not None else "(no LMVP application)\n"
                log = app.output() if app is not None else ""
                raise AssertionError(
                    f"not within {timeout} s: {what or check}\nthe screen showed:\n"
                    f"{shown[-6000:]}\nthe app said:\n{log}"
                )
            time.sleep(interval)

    def screenshot(self, path: Path, crop: tuple[int, int, int, int] | None = None) -> Path:
        """The whole screen (or the `crop` x, y, width, height of it) as a PNG: the root
        window as any X client reads it (Qt's screen grab in a process of its own)."""
        x, y, w, h = crop or (0, 0, -1, -1)
        code = (
            "import sys\n"
            "from PySide6.QtGui import QGuiApplication\n"
            "app = QGuiApplication(sys.argv[:1])\n"
            f"image = app.primaryScreen().grabWindow(0, {x}, {y}, {w}, {h})\n"
            "sys.exit(0 if image.save(sys.argv[1]) else 1)\n"
        )
        env = {**self.env(), "QT_QPA_PLATFORM": "xcb"}
        subprocess.run([sys.executable, "-c", code, str(path)], env=env, check=True, timeout=60)
        return path


# --- what the LMVP window shows --------------------------------------------------------------


def main_window(tree: Node) -> Node | None:
    """The LMVP main window, if it is showing."""
    for frame in tree.find_all(role="frame", name=r"^LMVP"):
        if frame.showing:
            return frame
    return None


def version_table(tree: Node) -> Node | None:
    return tree.find(role="table", name=r"^Versions$")


def table_rows(table: Node) -> list[list[str]]:
    """The cells of a table, row by row (the header cells are not rows)."""
    cells = [n.name for n in table.children if n.role == "table cell"]
    columns = table.columns or len([n for n in table.children if n.role == "table column header"])
    if not columns:
        return []
    return [cells[i : i + columns] for i in range(0, len(cells), columns)]


def count_label(tree: Node) -> tuple[int, str] | None:
    """The label under the version table ("7 versions") and the number it says."""
    for node in tree.find_all(role="label", name=r"^\d+ versions?\b"):
        return int(node.name.split()[0]), node.name
    return None


def tree_items(tree: Node) -> list[str]:
    """The names in the project/model tree."""
    view = tree.find(name=r"^Projects and models$", role="tree") or tree.find(
        name=r"^Projects and models$", role="tree table"
    )
    if view is None:
        return []
    return [n.name for n in view.walk() if n.role in ("tree item", "table cell", "list item")]
