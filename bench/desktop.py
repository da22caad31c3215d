"""Cold start of the desktop app: from `lmvp-desktop --demo` being started to its window being
visible and populated, once the local server runs (issue 14's target: under 2 s).

    python bench/desktop.py [--runs 5]

On a real X display (Xvfb, 1366x768, Qt's xcb platform), read through the accessibility tree
as in tests/desktop/test_xvfb_acceptance.py: "populated" means the main window is showing, the
project tree lists demo/tiny-net and the version table holds the versions its count says (at
least one). The local server is started first and kept running (the app reuses a server that
answers on its port), and the demo runs once beforehand so that there are versions to show.
Each run is a fresh process; the figure includes Python's and Qt's start-up. The time of each
reading of the accessibility tree is printed too: it bounds the resolution.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmvp_desktop.local_server import LocalServer
from tests.desktop.xdesktop import (
    Node,
    XDesktop,
    count_label,
    tree_items,
    version_table,
)
from tests.support import free_port

TARGET_SECONDS = 2.0


def populated(tree: Node) -> bool:
    window = tree.find(role="frame", name=r"^LMVP - http")
    if window is None or not window.showing:
        return False
    if not {"demo", "tiny-net"} <= set(tree_items(tree)):
        return False
    counted, table = count_label(tree), version_table(tree)
    return bool(counted and table and counted[0] >= 1 and counted[0] == table.rows)


def import_seconds() -> float:
    """How long Python takes to import the app's window code (Qt, pyqtgraph, the daemon)."""
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", "import lmvp_desktop.app, lmvp_desktop.main_window"], check=True
    )
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with XDesktop() as desktop:
        home = Path(tempfile.mkdtemp(prefix="home-", dir=desktop.tmp))
        port = free_port()
        server = LocalServer(home / "data" / "lmvp-server", port)
        server.start()
        try:
            # Once, so that the demo has versions to show.
            app = desktop.start_app(home=home, port=port)
            desktop.wait_for(
                lambda t: (c := count_label(t)) is not None and c[0] >= 2,
                timeout=120,
                app=app,
                what="two demo versions",
            )
            app.stop()

            times, window_times, reads = [], [], []
            for _ in range(args.runs):
                app = desktop.start_app(home=home, port=port)
                window_at: float | None = None
                while True:
                    before = time.monotonic()
                    tree = desktop.tree(shallow=True)
                    if tree is not None:
                        reads.append(time.monotonic() - before)
                        frame = tree.find(role="frame", name=r"^LMVP - http")
                        if window_at is None and frame is not None and frame.showing:
                            window_at = time.monotonic() - app.started
                        if populated(tree):
                            times.append(time.monotonic() - app.started)
                            break
                    if time.monotonic() - app.started > 60 or app.proc.poll() is not None:
                        print(app.output(), file=sys.stderr)
                        raise SystemExit("the window did not show its versions within 60 s")
                    time.sleep(0.02)
                window_times.append(window_at or times[-1])
                app.stop()
        finally:
            server.stop()

    median = statistics.median(times)
    print(f"desktop cold start (server running), {args.runs} runs on Xvfb 1366x768 (xcb):")
    print(f"  window showing:            {', '.join(f'{t:.2f}' for t in window_times)} s")
    print(f"  window showing, populated: {', '.join(f'{t:.2f}' for t in times)} s")
    print(f"  median populated: {median:.2f} s (target < {TARGET_SECONDS:.0f} s)")
    print(f"  one AT-SPI reading takes {statistics.median(reads) * 1000:.0f} ms (resolution)")
    print(f"  of which Python importing the app's modules: {import_seconds():.2f} s")
    return 0 if median < TARGET_SECONDS else 1


if __name__ == "__main__":
    raise SystemExit(main())
