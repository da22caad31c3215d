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
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _server import bench_server, median

import lmvp

SETTLE = 1.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class VersionWatch:
    """When each version of one model appeared, from the server's live event stream.

    Polling the server instead would take CPU from the very upload being timed, on a two-core
    machine; the stream is one idle connection the server wakes when a version is committed.
    """

    def __init__(self, url: str, token: str, model: str) -> None:
        self.model = model
        self.seen: dict[int, float] = {}
        self._cond = threading.Condition()
        self._client = lmvp.Client(url, token)
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        with contextlib.suppress(lmvp.LMVPError):  # the server stops at the end of the bench
            self._follow_events()

    def _follow_events(self) -> None:
        for event in self._client.events():
            if event.kind == "version.created" and event.model == self.model and event.version:
                with self._cond:
                    self.seen[event.version] = time.perf_counter()
                    self._cond.notify_all()

    def wait(self, number: int, timeout: float = 600) -> float:
        """The time version `number` was first seen (waits for it)."""
        with self._cond:
            if not self._cond.wait_for(lambda: number in self.seen, timeout):
                raise TimeoutError(f"version {number} of {self.model} did not appear")
            return self.seen[number]


def write_checkpoint(path: Path, size_mib: int) -> None:
    """A file of fresh random bytes, written in 1 MiB pieces and fsynced."""
    block = os.urandom(1 << 20)
    with path.open("wb") as f:
        for j in range(size_mib):
            f.write(j.to_bytes(8, "little") + block[8:])
        f.flush()
        os.fsync(f.fileno())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmvp-daemon-bench-", dir=os.environ.get("BENCH_DIR")))
    try:
        with bench_server(work / "server") as server:
            client = lmvp.Client(server.url, server.token)
            client.create_project("bench")
            # lmvp.update goes to a project of its own: in the daemon's project the same bytes
            # would already be there, and nothing would be uploaded.
            client.create_project("direct")
            versions = VersionWatch(server.url, server.token, "daemon")
            time.sleep(0.5)  # the stream is open before the first checkpoint
            watched = work / "run"
            watched.mkdir()
            env = dict(
                os.environ,
                LMVP_DAEMON_STATE_DIR=str(work / "state"),
                LMVP_SERVER=server.url,
                LMVP_TOKEN=server.token,
                LMVP_CONFIG_DIR=str(work / "config"),
                LMVP_CACHE_DIR=str(work / "cache"),
            )
            os.environ["LMVP_CACHE_DIR"] = str(work / "cache")
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
                    seen = versions.wait(i + 1)
                    latencies.append(seen - closed - SETTLE)
                number = args.samples

                # Big checkpoints through lmvp.update, then through the daemon, in turns. Each
                # round has bytes of its own, so neither finds them on the server already.
                mb = args.size_mib * (1 << 20) / 1e6
                direct_runs, daemon_runs = [], []
                for r in range(args.rounds):
                    big = work / f"big{r}.safetensors"
                    write_checkpoint(big, args.size_mib)
                    start = time.perf_counter()
                    client.update(f"direct/big{r}", big)
                    direct_runs.append(time.perf_counter() - start)
                    # The daemon gets bytes of its own, written the same way: with the same bytes
                    # the server would already hold them and only throw the upload away. Both
                    # files are fsynced before their clock starts: the figure is the daemon's
                    # pipeline against lmvp.update's, not the kernel flushing a fresh gigabyte.
                    # The daemon's file is written beside the folder and renamed into it (an
                    # atomic save): written in place, its settle window could run out during
                    # the fsync, before the clock started, and one round came out at 4.8 GB/s.
                    staged = work / f"staged{r}.safetensors"
                    write_checkpoint(staged, args.size_mib)
                    staged.rename(watched / f"big_step_{r + 1}.safetensors")
                    closed = time.perf_counter()
                    number += 1
                    seen = versions.wait(number)
                    daemon_runs.append(seen - closed - SETTLE)
                    big.unlink()
                    print(
                        f"  round {r + 1}: lmvp.update {mb / direct_runs[-1]:.0f} MB/s, daemon "
                        f"{mb / daemon_runs[-1]:.0f} MB/s",
                        flush=True,
                    )
                direct_s, daemon_s = median(direct_runs), median(daemon_runs)

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
            f"{args.size_mib} MiB checkpoint, medians of {args.rounds}: lmvp.update "
            f"{mb / direct_s:.0f} MB/s, daemon {mb / daemon_s:.0f} MB/s after settling = "
            f"{direct_s / daemon_s:.2f}x lmvp.update"
        )
        print(
            f"idle, watching {args.files} files: {idle_share * 100:.2f}% of one core "
            f"over {args.idle_seconds:.0f} s"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
