"""Take the README's screenshots of the web console: a model's page and a run's page.

    python scripts/web_screenshots.py [--out docs/images]

Starts a throwaway `lmvp-server` on loopback, records a training run with metrics and a dozen
checkpoints as versions through the HTTP API (tied to the run at their steps, with aliases),
logs in through the console's form in headless Chromium (Debian's `chromium`, driven by
Playwright, as in the tests) and saves `web-model.png` and `web-run.png`. Nothing is mocked:
the pictures show what the server serves and the browser draws.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

PASSWORD = "screenshot-password"  # noqa: S105 - a throwaway local server's
PROJECT, MODEL = "vision", "resnet50"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with running_server() as url:
        api = httpx.Client(base_url=f"{url}/api/v1", timeout=60)
        token = api.post("/auth/login", json={"username": "ada", "password": PASSWORD})
        api.headers["Authorization"] = f"Bearer {token.raise_for_status().json()['token']}"
        run = record_demo(api)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(
                base_url=url, viewport={"width": 1280, "height": 860}, device_scale_factor=1
            )
            page.goto("/login")
            page.fill("input[name=username]", "ada")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{url}/")
            page.goto(f"/projects/{PROJECT}/models/{MODEL}")
            page.screenshot(path=str(args.out / "web-model.png"))
            page.goto(f"/projects/{PROJECT}/runs/{run}")
            page.wait_for_selector("#charts[data-state=drawn]")
            page.screenshot(path=str(args.out / "web-run.png"))
            browser.close()
    print(f"saved {args.out / 'web-model.png'} and {args.out / 'web-run.png'}")
    return 0


def record_demo(api: httpx.Client) -> int:
    """A project with a model, a run of 3,000 steps and a checkpoint every 250 steps; returns
    the run's id."""
    api.post("/projects", json={"name": PROJECT, "description": "Image models"}).raise_for_status()
    api.post(f"/projects/{PROJECT}/models", json={"name": MODEL}).raise_for_status()
    run = (
        api.post(
            f"/projects/{PROJECT}/runs",
            json={
                "model": MODEL,
                "name": "cosine-lr-0.1",
                "host": "gpu-node-3",
                "params": {"lr": 0.1},
            },
        )
        .raise_for_status()
        .json()["id"]
    )
    rng = random.Random(7)  # noqa: S311 - noise for a demo curve
    steps = list(range(0, 3001, 5))
    loss = [2.4 * math.exp(-s / 700) + 0.25 + rng.gauss(0, 0.04) for s in steps]
    acc = [0.93 - 0.8 * math.exp(-s / 600) + rng.gauss(0, 0.008) for s in steps]
    lr = [0.05 * (1 + math.cos(math.pi * s / 3000)) for s in steps]
    api.post(
        f"/runs/{run}/metrics",
        json={
            "series": [
                {"key": "train/loss", "steps": steps, "values": loss},
                {"key": "eval/accuracy", "steps": steps, "values": acc},
                {"key": "lr", "steps": steps, "values": lr},
            ]
        },
    ).raise_for_status()
    for number, step in enumerate(range(250, 3001, 250), start=1):
        weights = hashlib.sha512(f"weights {step}".encode()).digest() * (2000 + 40 * number)
        files = {"model.safetensors": weights, "config.json": b'{"arch": "resnet50"}'}
        manifest = [
            {"path": path, "size": len(data), "sha256": upload(api, data, path)}
            for path, data in files.items()
        ]
        api.post(
            f"/projects/{PROJECT}/models/{MODEL}/versions",
            json={
                "files": manifest,
                "message": f"epoch {number}",
                "run": run,
                "step": step,
                "metadata": {"framework": "torch", "epoch": number},
                "source": {"host": "gpu-node-3", "path": f"/scratch/runs/resnet50/step-{step}"},
            },
        ).raise_for_status()
    for alias, number in (("production", 8), ("best", 11)):
        api.put(
            f"/projects/{PROJECT}/models/{MODEL}/aliases/{alias}", json={"version": number}
        ).raise_for_status()
    api.patch(f"/runs/{run}", json={"status": "finished"}).raise_for_status()
    return int(run)


def upload(api: httpx.Client, data: bytes, name: str) -> str:
    """Upload bytes with two plain tus requests; returns their sha256."""
    digest = hashlib.sha256(data).hexdigest()
    meta = ",".join(
        f"{k} {base64.b64encode(v.encode()).decode()}"
        for k, v in {"project": PROJECT, "sha256": digest, "filename": name}.items()
    )
    created = api.post(
        "/uploads",
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(len(data)),
            "Upload-Metadata": meta,
        },
    ).raise_for_status()
    api.patch(
        created.headers["Location"],
        content=data,
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    ).raise_for_status()
    return digest


@contextlib.contextmanager
def running_server() -> Iterator[str]:
    """A server on a fresh data dir with the user `ada`; yields its URL."""
    data = Path(tempfile.mkdtemp(prefix="lmvp-web-shots-"))
    env = dict(os.environ, LMVP_DATA_DIR=str(data), LMVP_INITIAL_ADMIN="0")
    env.pop("LMVP_DATABASE_URL", None)
    server = [sys.executable, "-m", "lmvp_server"]
    subprocess.run(
        [*server, "user", "create", "ada", "--admin", "--password-stdin"],
        input=PASSWORD + "\n",
        text=True,
        env=env,
        check=True,
        capture_output=True,
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [*server, "serve", "--port", str(port), "--log-level", "warning"], env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/api/v1/health", timeout=1).is_success:
                    break
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
