"""A separate process for the transfer tests: `python -m tests.client.worker JSON`.

It downloads a blob into a cache or uploads a file, exactly as an application would, and can
die abruptly (`os._exit`, no cleanup, like a crash) once `die_after` bytes have moved, so a test
can check what a later process resumes. On success it prints the result as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lmvp._http import HTTP, RetryPolicy
from lmvp.cache import Cache
from lmvp.transfer import hash_file, upload_file

CRASHED = 17


def main() -> None:
    job = json.loads(sys.argv[1])
    http = HTTP(job["server"], job["token"], retry=RetryPolicy(attempts=5, base=0.05))
    moved = 0
    die_after = job.get("die_after")

    def progress(n: int) -> None:
        nonlocal moved
        moved += n
        if die_after is not None and moved >= die_after:
            os._exit(CRASHED)

    if job["action"] == "download":
        cache = Cache(Path(job["cache"]), job["cache_server"])
        path = cache.download_blob(http, job["project"], job["sha256"], job["size"], progress)
        print(json.dumps({"path": str(path), "sha256": hash_file(path)}))
    elif job["action"] == "upload":
        upload_file(
            http,
            job["project"],
            Path(job["path"]),
            sha256=job["sha256"],
            size=job["size"],
            progress=progress,
            state_dir=Path(job["state_dir"]),
        )
        print(json.dumps({"uploaded": job["sha256"]}))


def start(**job: object) -> subprocess.Popen[str]:
    """Start a worker process on `job`; its stdout carries the JSON result."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.client.worker", json.dumps(job)],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(**job: object) -> tuple[int, dict[str, object] | None, str]:
    """Run a worker to its end: (exit code, JSON result or None, stderr)."""
    proc = start(**job)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, (json.loads(out) if proc.returncode == 0 else None), err


if __name__ == "__main__":
    main()
