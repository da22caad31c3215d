"""The per-tensor compare of issue 17 on two 1 GiB checkpoints: how long
`lmvp.Client.compare_tensors` takes (the server's whole answer) when 10% of the tensors changed,
for files sent whole and for files sent as chunks; how long `lmvp diff` takes to print it (the
whole command, Python's start included); and how long the web console's compare page takes in
headless Chromium, logged in, from navigating to the tensor table showing its 112 rows. The
issue asks for under 5 s on this machine.

The model is BF16: 96 tensors of 8 MiB and 16 of 16 MiB (cut into two chunks each), 1 GiB in
all; the second checkpoint changes 12 of them (every value scaled by about 1%). Everything (the
files, the server's data dir) lives in a temporary folder, by default under /dev/shm.

    .venv/bin/python bench/tensor_compare.py [--dir /dev/shm] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import PASSWORD, BenchServer, bench_server, median

import lmvp

MiB = 1 << 20
SIZES = [8 * MiB] * 96 + [16 * MiB] * 16
CHANGED = set(range(0, len(SIZES), 10))  # 12 of 112: about 10%


def write_checkpoint(path: Path, changed: set[int]) -> None:
    """The model, with the tensors numbered in `changed` fine-tuned."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for i, size in enumerate(SIZES):
        header[f"layers.{i:03d}.weight"] = {
            "dtype": "BF16",
            "shape": [size // 2 // 1024, 1024],
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for i, size in enumerate(SIZES):
            rng = np.random.default_rng(i)
            # Finite BF16 values of both signs between about 0.008 and 1.
            bits = rng.integers(0x3C00, 0x3F80, size // 2, dtype=np.uint16)
            bits |= rng.integers(0, 2, size // 2, dtype=np.uint16) << 15
            if i in changed:
                values = (bits.astype(np.uint32) << 16).view(np.float32) * np.float32(1.01)
                bits = (values.view(np.uint32) >> 16).astype(np.uint16)
            f.write(bits.tobytes())


def published(base: Path) -> Iterator[tuple[str, BenchServer, lmvp.Client, int, int]]:
    """The model and its fine-tune written under `base` and published on a bench server, first
    sent whole, then as chunks: yields (mode, server, an open client, version a, version b) for
    each, the model being `bench/<mode>`. bench/tensor_compare_desktop.py measures the same."""
    files = base / "files"
    (files / "a").mkdir(parents=True)
    (files / "b").mkdir(parents=True)
    write_checkpoint(files / "a" / "model.safetensors", set())
    write_checkpoint(files / "b" / "model.safetensors", CHANGED)
    with bench_server(base / "server") as server:
        for mode, chunks in (("whole", "0"), ("chunked", "1")):
            os.environ["LMVP_CHUNKS"] = chunks
            with lmvp.Client(server.url, server.token, cache_dir=base / "cache") as client:
                model = f"bench/{mode}"
                if mode == "whole":
                    client.create_project("bench")
                client.create_model(model)
                va = client.update(model, files / "a" / "model.safetensors")
                vb = client.update(model, files / "b" / "model.safetensors")
                yield mode, server, client, va.number, vb.number


def run(base: Path, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {"file_bytes": sum(SIZES), "tensors": len(SIZES)}
    for mode, server, client, a, b in published(base):
        times = []
        result = None
        for _ in range(rounds):
            started = time.perf_counter()
            result = client.compare_tensors("bench", mode, a, b)
            times.append(time.perf_counter() - started)
        assert result is not None
        changes = [t.change for t in result.files[0].tensors]
        assert changes.count("changed") == len(CHANGED), changes
        assert changes.count("unchanged") == len(SIZES) - len(CHANGED), changes
        relative = [t.relative_change for t in result.files[0].tensors[: len(CHANGED)]]
        assert all(r is not None and 0.005 < r < 0.015 for r in relative), relative
        out[mode] = {"seconds": [round(t, 3) for t in times], "median": median(times)}
        model = f"bench/{mode}"
        out[mode]["lmvp diff"] = time_cli(server, f"{model}:{a}", f"{model}:{b}", rounds)
        out[mode]["web page in Chromium"] = time_page(
            server.url, f"/projects/bench/models/{mode}/compare?a={a}&b={b}", rounds
        )
    return out


def time_cli(server: BenchServer, a: str, b: str, rounds: int) -> dict[str, Any]:
    """`lmvp diff a b` as a user types it; its output must list the changed tensors."""
    env = dict(os.environ, LMVP_SERVER=server.url, LMVP_TOKEN=server.token)
    lmvp_cli = Path(sys.executable).with_name("lmvp")
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        done = subprocess.run(
            [str(lmvp_cli), "diff", a, b], env=env, capture_output=True, text=True, check=True
        )
        times.append(time.perf_counter() - started)
        assert done.stdout.count("changed") >= len(CHANGED), done.stdout[-2000:]
    return {"seconds": [round(t, 3) for t in times], "median": median(times)}


def time_page(url: str, path: str, rounds: int) -> dict[str, Any]:
    """The console's compare page in headless Chromium (Debian's, driven by Playwright, as the
    web tests drive it), logged in through the login form."""
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium",
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            page = browser.new_context(base_url=url).new_page()
            page.set_default_timeout(60_000)
            page.goto("/login")
            page.fill("input[name=username]", "bench")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(url + "/")
            for _ in range(rounds):
                started = time.perf_counter()
                page.goto(path)
                page.locator("table.compare.tensors tr.changed").first.wait_for()
                times.append(time.perf_counter() - started)
                rows = page.locator("table.compare.tensors tr").count()
                assert rows >= len(SIZES), rows
        finally:
            browser.close()
    return {"seconds": [round(t, 3) for t in times], "median": median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="lmvp-tensor-compare-", dir=args.dir))
    try:
        result = run(base, args.rounds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
