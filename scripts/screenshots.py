"""Take the README's desktop screenshots from the real demo on a real X display.

    python scripts/screenshots.py [--out docs/images]

Runs `lmvp-desktop --demo` as `make run` does, in a home of its own, on Xvfb (1366x768, Qt's
xcb platform), exactly as the acceptance tests do (tests/desktop/xdesktop.py): waits, reading
the window through the accessibility tree, until the demo's job has synced a few checkpoints,
selects the newest version in the table (through AT-SPI, as a screen reader's user would),
and saves the screen: `main-window.png` (the window) and `metric-plot.png` (the run pane).
Nothing is scripted inside the app: the pictures show what a person sees after half a minute
of `make run`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.desktop.xdesktop import Node, XDesktop, count_label, table_rows, version_table

VERSIONS = 5  # checkpoints synced before the pictures are taken


def ready(tree: Node) -> bool:
    counted, table = count_label(tree), version_table(tree)
    if counted is None or table is None or counted[0] < VERSIONS:
        return False
    return counted[0] == len(table_rows(table)) and bool(
        tree.find(role="label", name=r"running: demo-run")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with XDesktop() as desktop:
        app = desktop.start_app()
        desktop.wait_for(ready, timeout=120, app=app, what=f"{VERSIONS} synced versions")
        if not desktop.select_row("Versions", 0):
            print("could not select the newest version; the details pane stays empty")
        time.sleep(1.5)  # the details and the plot's highlighted marker arrive
        tree = desktop.tree()
        assert tree is not None
        window = tree.find(role="frame", name=r"^LMVP - http")
        plot = tree.find(name=r"^Metric plot$")
        metrics = tree.find(role="list", name=r"^Metrics$")
        assert window is not None and window.extents is not None
        assert plot is not None and plot.extents is not None
        desktop.screenshot(args.out / "main-window.png", window.extents)
        x, y, w, h = plot.extents
        if metrics is not None and metrics.extents is not None:  # the run chooser beside it
            left = metrics.extents[0]
            x, w = left, x + w - left
        desktop.screenshot(args.out / "metric-plot.png", (x, y - 30, w, h + 52))
        app.stop()
    print(f"saved {args.out / 'main-window.png'} and {args.out / 'metric-plot.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
