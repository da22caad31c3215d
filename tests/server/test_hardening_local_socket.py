"""The local upload socket cannot be exhausted by another local user.

As the audit did: a server limited to 1,024 descriptors (`prlimit --nofile=1024`, the common
systemd soft limit), and another Unix user (`nobody`) opening 1,100 connections to its upload
socket, each trickling a byte every 3 s and reconnecting when closed. It had taken the server
to 1,024 of 1,024 descriptors and its HTTP side stopped answering. Now `/api/v1/health` must
answer within 1 s throughout, the server's descriptors stay far from the limit, the log says
so once rather than in hundreds of tracebacks, and a real local upload works afterwards.

SQLite only: the socket and its limits are the same whatever the database.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.support import (
    ADMIN_PASSWORD,
    Api,
    Deployment,
    ServerProcess,
    sha256_file,
    tus_metadata,
    write_random_file,
)

pytestmark = pytest.mark.backends("sqlite")
FLOOD = Path(__file__).with_name("local_socket_flood.py")
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "python3"
ATTACK_SECONDS = 15
CONNECTIONS = 1100


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def create_upload(api: Api, project: str, length: int) -> tuple[str, str]:
    """A tus upload's id and the socket name the server gives clients on this machine."""
    r = api.post(
        "/uploads",
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(length),
            "Upload-Metadata": tus_metadata(project=project, filename="f.bin"),
        },
    )
    assert r.status_code == 201, r.text
    return r.headers["Location"].rstrip("/").rsplit("/", 1)[-1], r.headers["LMVP-Local-Uploads"]


def local_upload(name: str, token: str, upload: str, path: Path) -> list[dict[str, object]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, path.open("rb") as f:
        sock.settimeout(30)
        sock.connect("\0" + name)
        request = {"authorization": f"Bearer {token}", "upload": upload, "offset": 0}
        socket.send_fds(sock, [json.dumps(request).encode() + b"\n"], [f.fileno()])
        with sock.makefile("rb") as answers:
            return [json.loads(line) for line in answers]


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the attacker as another user (needs root)")
def test_another_user_flooding_the_socket_leaves_http_and_local_uploads_working(
    make_server: Callable[[str], ServerProcess], tmp_path: Path
) -> None:
    server = make_server("sqlite")
    server.command_prefix = ["prlimit", "--nofile=1024", "--"]
    server.start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        assert "1024" in Path(f"/proc/{pid}/limits").read_text().split("Max open files")[1][:40]
        deployment = Deployment(server, Api(server.url).login("admin", ADMIN_PASSWORD))
        owner = deployment.user("local")
        project = deployment.project(owner)
        _, name = create_upload(owner, project, 1)
        nobody = pwd.getpwnam("nobody")

        # The system's Python: the test's own may be in a folder only root can read. The
        # script's text goes on the command line for the same reason.
        attacker = subprocess.Popen(
            [
                SYSTEM_PYTHON,
                "-c",
                FLOOD.read_text(),
                name,
                str(CONNECTIONS),
                "3",
                str(ATTACK_SECONDS),
            ],
            user=nobody.pw_uid,
            group=nobody.pw_gid,
            extra_groups=[],
            cwd="/",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        slowest = 0.0
        most_descriptors = 0
        try:
            while attacker.poll() is None:
                started = time.monotonic()
                try:  # a new connection each time, as a new client's: it needs a descriptor
                    assert requests.get(f"{server.url}/api/v1/health", timeout=1).ok
                except requests.RequestException:
                    raise AssertionError("health did not answer within 1 s") from None
                slowest = max(slowest, time.monotonic() - started)
                most_descriptors = max(most_descriptors, open_descriptors(pid))
                time.sleep(0.2)
        finally:
            if attacker.poll() is None:
                attacker.kill()
            out, err = attacker.communicate(timeout=30)
        report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}

        assert attacker.returncode == 0, err
        assert report["opened"] >= CONNECTIONS, report  # the attack did happen
        assert slowest < 1, slowest
        assert most_descriptors < 400, most_descriptors  # not 1,024 of 1,024

        # Afterwards a real local upload goes through the socket.
        source = tmp_path / "after.bin"
        digest = write_random_file(source, 3 * 1024 * 1024 + 7, seed=5)
        upload, name = create_upload(owner, project, source.stat().st_size)
        answers = local_upload(name, str(owner.token), upload, source)
        assert answers[-1] == {"offset": source.stat().st_size, "sha256": digest}, answers
        assert sha256_file(source) == digest

        log = (server.log_path or Path("/dev/null")).read_text()
        assert "Traceback" not in log
        assert 1 <= log.count("local upload socket:") <= 2, log[-3000:]
    finally:
        server.stop()
