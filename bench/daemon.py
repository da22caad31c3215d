"""What the sync daemon costs and how quickly it delivers, against a real server.

Prints, in one run:
- latency: from a small checkpoint's close to its version being visible on the server, minus
  the settle window (target: under 0.5 s);
- throughput: a 1 GiB checkpoint through the daemon (from the file's close to its version,
  minus the settle window) relative to `lmvp.update` of the same file (target: at least 0.9x);
- idle cost: the daemon's CPU use while it watches 10,000 files and nothing changes (target:
  under 1% of one core).
Usage: python bench/daemon.py [--size-mib 1024] [--files 10000] [--idle-seconds 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import bench_server, median

import lmvp

SETTLE = 1.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_version(client: lmvp.Client, ref: str, number: int, timeout: float = 600) -> float:
    """Poll until version `number` of `ref` exists; returns the time it was first seen."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            if client.version(ref).number >= number:
                return time.perf_counter()
        except lmvp.NotFound:
            pass
        time.sleep(0.01)
    raise TimeoutError(f"{ref}:{number} did not appear in {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmvp-daemon-bench-", dir=os.environ.get("BENCH_DIR")))
    try:
        with bench_server(work / "server") as server:
            client = lmvp.Client(server.url, server.token)
            client.create_project("bench")
            # lmvp.update goes to a project of its own: in the daemon's project the same bytes
            # would already be there, and nothing would be uploaded.
            client.create_project("direct")
            watched = work / "run"
            watched.mkdir()
            env = dict(
                os.environ,
                LMVP_DAEMON_STATE_DIR=str(work / "state"),
                LMVP_SERVER=server.url,
                LMVP_TOKEN=server.token,
                LMVP_CONFIG_DIR=str(work / "config"),
            )
            daemon_bin = str(Path(sys.executable).parent / "lmvp-daemon")
            subprocess.run(
                [daemon_bin, "watch", "add", str(watched), "bench/daemon"],
                env=env,
                check=True,
                capture_output=True,
            )
            log = (work / "daemon.log").open("w")
            daemon = subprocess.Popen(
                [daemon_bin, "run", "--settle", str(SETTLE)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                time.sleep(2)
                # Latency of small checkpoints.
                latencies = []
                for i in range(args.samples):
                    path = watched / f"small_step_{i}.pt"
                    with path.open("wb") as f:
                        f.write(os.urandom(100_000))
                    closed = time.perf_counter()
                    seen = wait_for_version(client, "bench/daemon", i + 1)
                    latencies.append(seen - closed - SETTLE)
                number = args.samples

                # One big checkpoint through lmvp.update, then through the daemon.
                big = work / "big.safetensors"
                with big.open("wb") as f:
                    block = os.urandom(1 << 20)
                    for j in range(args.size_mib):
                        f.write(j.to_bytes(8, "little") + block[8:])
                    f.flush()
                    os.fsync(f.fileno())
                start = time.perf_counter()
                client.update("direct/big", big)
                direct_s = time.perf_counter() - start
                mb = args.size_mib * (1 << 20) / 1e6
                # Both files are fsynced before their clock starts: the figure is the daemon's
                # pipeline against lmvp.update's, not the kernel flushing a fresh gigabyte.
                with (watched / "big_step_1.safetensors").open("wb") as out, big.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
                    out.flush()
                    os.fsync(out.fileno())
                closed = time.perf_counter()
                seen = wait_for_version(client, "bench/daemon", number + 1)
                daemon_s = seen - closed - SETTLE

                # Idle cost with many files in the watched tree.
                for k in range(args.files):
                    sub = watched / f"logs/{k // 100:03d}"
                    sub.mkdir(parents=True, exist_ok=True)
                    (sub / f"event_{k}.json").write_text("{}")
                time.sleep(3)  # let it take them in
                before, t0 = cpu_seconds(daemon.pid), time.perf_counter()
                time.sleep(args.idle_seconds)
                idle_share = (cpu_seconds(daemon.pid) - before) / (time.perf_counter() - t0)
            finally:
                daemon.terminate()
                daemon.wait(30)
                client.close()

        print(
            f"small checkpoint close -> version visible, minus the {SETTLE:.0f} s settle "
            f"window: median {median(latencies) * 1000:.0f} ms (of {args.samples}; "
            f"max {max(latencies) * 1000:.0f} ms)"
        )
        print(
            f"{args.size_mib} MiB checkpoint: lmvp.update {mb / direct_s:.0f} MB/s, daemon "
            f"{mb / daemon_s:.0f} MB/s after settling = {direct_s / daemon_s:.2f}x lmvp.update"
        )
        print(
            f"idle, watching {args.files} files: {idle_share * 100:.2f}% of one core "
            f"over {args.idle_seconds:.0f} s"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
