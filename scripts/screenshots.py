"""Render the real desktop app offscreen and save the README's screenshots.

    python scripts/screenshots.py [--out docs/images]

Starts a throwaway local server, records a short training run with metrics and a few
checkpoints as versions (tied to the run at their steps, one with an alias), opens the main
window on that model, selects a version, and saves `main-window.png` and `metric-plot.png`.
Nothing is mocked: what the pictures show is what the app draws.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QCoreApplication, QEventLoop
from PySide6.QtWidgets import QApplication

import lmvp
from lmvp_desktop.local_server import LocalServer
from lmvp_desktop.main_window import MainWindow
from lmvp_desktop.session import DesktopSession
from lmvp_desktop.settings import DesktopSettings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lmvp-shots-"))
    os.environ["LMVP_CONFIG_DIR"] = str(work / "config")
    os.environ["LMVP_CACHE_DIR"] = str(work / "cache")
    server = LocalServer(work / "server", port=_free_port())
    server.start()
    try:
        client = server.admin_login()
        populate(client, work)
        app = QApplication.instance() or QApplication(sys.argv[:1])
        session = DesktopSession(client, state_dir=work / "state")
        session.outbox.add_watch(work / "run", "vision", "resnet")
        window = MainWindow(session, DesktopSettings())
        window.resize(1400, 900)
        session.start()
        window.start()
        window.show()
        window.show_model("vision", "resnet")
        wait(lambda: window.history.versions.row_of(8) is not None and not window.plot.is_loading)
        window.history.select_version(8)
        wait(lambda: False, seconds=1.5)  # let the selection and the plot settle
        window.grab().save(str(args.out / "main-window.png"))
        window.plot.grab().save(str(args.out / "metric-plot.png"))
        print(f"saved {args.out / 'main-window.png'} and {args.out / 'metric-plot.png'}")
        window.shutdown()
        session.close()
        del app
    finally:
        server.stop()
    return 0


def populate(client: lmvp.Client, work: Path) -> None:
    """A model with a run of 3,000 steps and a checkpoint every 375 steps."""
    rng = random.Random(3)  # noqa: S311 - made-up training noise
    client.create_project("vision", description="image models")
    (work / "run").mkdir(parents=True, exist_ok=True)
    run = client.init_run("vision/resnet", name="resnet50-lr3e-4", params={"lr": 3e-4})
    for step in range(1, 3001):
        progress = step / 3000
        loss = 2.3 * math.exp(-4 * progress) + 0.08 + rng.gauss(0, 0.05)
        run.log(
            {"loss": loss, "accuracy": min(0.98, 0.1 + 0.85 * (1 - math.exp(-5 * progress)))},
            step=step,
        )
        if step % 375 == 0:
            run.flush()
            weights = work / f"model_step_{step}.safetensors"
            weights.write_bytes(rng.randbytes(200_000 + step))
            client.update(
                "vision/resnet",
                weights,
                message=f"epoch {step // 375}: cosine schedule, mixup 0.2",
                run=run,
                step=step,
                aliases=("best",) if step == 2625 else (),
            )
    run.finish()


def wait(condition: object, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
        if callable(condition) and condition():
            return
        time.sleep(0.02)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    raise SystemExit(main())
