"""The client against a hostile server (audit, issue 12 finding 1).

A server, or anyone on a plain-HTTP path, chooses every name, number, path and hash in a
version's reply, and those become folders and files on the user's disk. Here a real HTTP server
on loopback answers the client's real requests (`GET .../versions/{ref}`, `GET .../blobs/{sha}`)
with hostile JSON; each test then compares the whole tree around the cache and the output folder
with what it was: nothing may appear or change outside them, and the error must say that the
server sent an invalid reply.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import unicodedata
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import lmvp
from tests.support import Deployment

PROJECT, MODEL = "vision", "resnet"
PAYLOAD = b"weights of a model\n"
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
VICTIM = b'{"the user\'s own": "json file"}'
_VERSION_PATH = re.compile(r"^/api/v1/projects/([^/]+)/models/([^/]+)/versions/([^/?]+)$")
_BLOB_PATH = re.compile(r"^/api/v1/projects/([^/]+)/blobs/([^/?]+)$")


class HostileServer:
    """An HTTP server on 127.0.0.1 that answers a version request with `reply` (any JSON) and a
    blob request with the blob's bytes when it has them; it records the paths asked for."""

    def __init__(self) -> None:
        self.reply: Any = None
        self.blobs: dict[str, bytes] = {DIGEST: PAYLOAD}
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(self.path)
                if _VERSION_PATH.match(self.path):
                    self._send(200, json.dumps(owner.reply).encode(), "application/json")
                elif (blob := _BLOB_PATH.match(self.path)) and blob[2] in owner.blobs:
                    self._send(200, owner.blobs[blob[2]], "application/octet-stream")
                else:
                    body = {"error": {"code": "not_found", "message": "no such thing"}}
                    self._send(404, json.dumps(body).encode(), "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def version_reply(**changes: Any) -> dict[str, Any]:
    """A well-formed reply for vision/resnet:1 holding one file, with `changes` applied."""
    reply: dict[str, Any] = {
        "project": PROJECT,
        "model": MODEL,
        "number": 1,
        "message": "",
        "metadata": {},
        "metrics": {},
        "author": "someone",
        "parent": None,
        "aliases": [],
        "size": len(PAYLOAD),
        "files": [{"path": "weights.bin", "size": len(PAYLOAD), "sha256": DIGEST}],
        "source": {"host": "", "path": ""},
        "created_at": "2026-01-01T00:00:00Z",
    }
    reply.update(changes)
    return reply


def files(*entries: tuple[str, int, str]) -> list[dict[str, Any]]:
    return [{"path": p, "size": s, "sha256": h} for p, s, h in entries]


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with the bytes of its files (None for a folder or a link)."""
    out: dict[str, bytes | None] = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            out[rel] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return out


class Home:
    """A user's files around the client: `cache/` (the client's cache), `out/` (the folder a
    download is asked to write to), and the user's own files beside them, which a hostile
    reply aims at: `victim.json` (a JSON file the user can write), `elsewhere/` (a folder)."""

    def __init__(self, root: Path, server: HostileServer) -> None:
        self.root = root
        self.server = server
        self.cache = root / "home" / "cache"
        self.out = root / "home" / "out"
        (root / "victim.json").write_bytes(VICTIM)
        (root / "elsewhere").mkdir()
        self.before = tree(root)

    def download(self, ref: str = f"{PROJECT}/{MODEL}") -> Path:
        with lmvp.Client(self.server.url, "lmvp_not-a-real-token", retries=1) as client:
            return client.download(ref, cache_dir=self.cache, local_dir=self.out)

    def written_outside(self) -> list[str]:
        """What appeared, changed or went away outside `cache/` and `out/`."""
        after = tree(self.root)
        ours = ("home/cache", "home/out")
        changed = {
            k for k in set(self.before) | set(after) if self.before.get(k) != after.get(k)
        } | (set(self.before) ^ set(after))
        return sorted(k for k in changed if not k.startswith(ours) and k != "home")

    def written_to_output(self) -> list[str]:
        return sorted(tree(self.out)) if self.out.exists() else []


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    server = HostileServer()
    yield server
    server.close()


@pytest.fixture
def home(tmp_path: Path, hostile: HostileServer) -> Home:
    return Home(tmp_path, hostile)


def test_the_fake_server_speaks_the_protocol_so_refusals_are_the_clients(home: Home) -> None:
    # The control: a well-formed reply downloads, so what the tests below see refused is refused
    # for what the reply holds, not because the fake server is not understood.
    home.server.reply = version_reply()
    path = home.download()
    assert path == home.out / "weights.bin"
    assert path.read_bytes() == PAYLOAD
    assert home.written_outside() == []
    assert any("/blobs/" in r for r in home.server.requests)


def _absolute(home: Home) -> str:
    return str(home.root / "elsewhere")


# Each case: what the hostile reply changes, given the home it aims at.
HOSTILE: dict[str, Callable[[Home], dict[str, Any]]] = {
    # The audit's finding: the manifest was stored at manifests/<project>/<model>/<number>.json.
    "project climbs out of the cache": lambda h: {"project": "../../../../elsewhere"},
    "project is an absolute path": lambda h: {"project": _absolute(h)},
    "project is '..'": lambda h: {"project": ".."},
    "project is a home folder": lambda h: {"project": "~"},
    "model climbs out of the cache": lambda h: {"model": "../../../../../elsewhere"},
    "model is an absolute path": lambda h: {"model": _absolute(h)},
    "number overwrites the user's victim.json": lambda h: {"number": "../../../../../../victim"},
    "number is an absolute path": lambda h: {"number": str(h.root / "victim")},
    "number is text": lambda h: {"number": "1"},
    "number is zero": lambda h: {"number": 0},
    "number is negative": lambda h: {"number": -1},
    "number is a boolean": lambda h: {"number": True},
    "answers for another project": lambda h: {"project": "other"},
    "answers for another model": lambda h: {"model": "other"},
    "file path climbs out of the output folder": lambda h: {
        "files": files(("../../escaped.bin", len(PAYLOAD), DIGEST))
    },
    "file path climbs from inside a folder": lambda h: {
        "files": files(("a/../../../escaped.bin", len(PAYLOAD), DIGEST))
    },
    "file path is absolute": lambda h: {
        "files": files((str(h.root / "elsewhere" / "abs.bin"), len(PAYLOAD), DIGEST))
    },
    "file path climbs with backslashes": lambda h: {
        "files": files(("..\\..\\escaped.bin", len(PAYLOAD), DIGEST))
    },
    "file path has a drive letter": lambda h: {
        "files": files(("C:escaped.bin", len(PAYLOAD), DIGEST))
    },
    "file path holds a NUL": lambda h: {
        "files": files(("weights.bin\x00../../x", len(PAYLOAD), DIGEST))
    },
    "file path holds a newline": lambda h: {
        "files": files(("weights\n.bin", len(PAYLOAD), DIGEST))
    },
    "file path is empty": lambda h: {"files": files(("", len(PAYLOAD), DIGEST))},
    "file path is not text": lambda h: {"files": files((7, len(PAYLOAD), DIGEST))},  # type: ignore[arg-type]
    "two paths that are one file after normalisation": lambda h: {
        "files": files(
            (unicodedata.normalize("NFC", "café.bin"), len(PAYLOAD), DIGEST),
            (unicodedata.normalize("NFD", "café.bin"), len(PAYLOAD), DIGEST),
        )
    },
    "a path that is a file and a folder": lambda h: {
        "files": files(("a", len(PAYLOAD), DIGEST), ("a/b", len(PAYLOAD), DIGEST))
    },
    "sha256 climbs out of the blobs folder": lambda h: {
        "files": files(("weights.bin", len(PAYLOAD), "../../../../victim.json"))
    },
    "sha256 in capitals": lambda h: {"files": files(("weights.bin", len(PAYLOAD), DIGEST.upper()))},
    "sha256 too short": lambda h: {"files": files(("weights.bin", len(PAYLOAD), DIGEST[:40]))},
    "size is negative": lambda h: {"files": files(("weights.bin", -1, DIGEST))},
    "size is text": lambda h: {"files": files(("weights.bin", "19", DIGEST))},  # type: ignore[arg-type]
    "files is not a list of files": lambda h: {"files": ["weights.bin"]},
    "no files field": lambda h: {"files": None},
    "reply is not an object": lambda h: {"__whole__": ["not", "a", "version"]},
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_reply_is_refused_and_nothing_is_written_outside(home: Home, case: str) -> None:
    changes = HOSTILE[case](home)
    home.server.reply = changes["__whole__"] if "__whole__" in changes else version_reply(**changes)

    with pytest.raises(lmvp.ProtocolError) as raised:
        home.download()

    message = str(raised.value)
    assert message.startswith("the server sent an invalid reply"), message
    assert "nothing of it was written" in message
    assert home.written_outside() == []
    assert (home.root / "victim.json").read_bytes() == VICTIM
    assert home.written_to_output() == []
    # Refused before a byte was fetched.
    assert not any("/blobs/" in r for r in home.server.requests)


def test_a_download_never_writes_through_a_link_in_the_output_folder(home: Home) -> None:
    # A folder of the manifest that is a symbolic link in the output folder (to elsewhere/)
    # would take the file outside: the download refuses instead of following it.
    home.out.mkdir(parents=True)
    (home.out / "sub").symlink_to(home.root / "elsewhere")
    home.before = tree(home.root)
    home.server.reply = version_reply(files=files(("sub/escaped.bin", len(PAYLOAD), DIGEST)))

    with pytest.raises(lmvp.LMVPError, match="symbolic link"):
        home.download()

    assert home.written_outside() == []
    assert list((home.root / "elsewhere").iterdir()) == []


def test_offline_reads_no_hostile_manifest_left_in_the_cache(home: Home) -> None:
    # A manifest remembered by an older client (before replies were checked) is checked again
    # when read offline, before its paths are used.
    home.server.reply = version_reply()
    home.download(f"{PROJECT}/{MODEL}:1")
    manifest = next((home.cache).rglob("manifests/*/*/1.json"))
    data = json.loads(manifest.read_text())
    data["files"][0]["path"] = "../../escaped.bin"
    manifest.write_text(json.dumps(data))
    home.before = tree(home.root)

    with (
        lmvp.Client(home.server.url, "lmvp_not-a-real-token") as client,
        pytest.raises(lmvp.ProtocolError, match="invalid reply"),
    ):
        client.download(f"{PROJECT}/{MODEL}:1", cache_dir=home.cache, offline=True)
    assert home.written_outside() == []


def test_lmvp_pull_against_a_hostile_server_exits_1_saying_so(home: Home) -> None:
    # `lmvp pull -o` as a user runs it: the reply that replaced victim.json is refused.
    home.server.reply = version_reply(number="../../../../../../victim")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMVP_")}
    env.update(
        LMVP_SERVER=home.server.url,
        LMVP_TOKEN="lmvp_not-a-real-token",
        LMVP_CACHE_DIR=str(home.cache),
        LMVP_CONFIG_DIR=str(home.root / "home" / "config"),
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
    )
    home.before = tree(home.root)

    result = subprocess.run(
        [str(Path(sys.executable).parent / "lmvp"), "pull", f"{PROJECT}/{MODEL}", "-o", home.out],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )

    assert result.returncode == 1, result.stderr
    assert "the server sent an invalid reply" in result.stderr
    assert "Traceback" not in result.stderr
    assert home.written_outside() == []
    assert (home.root / "victim.json").read_bytes() == VICTIM


def test_the_real_server_still_downloads_into_the_output_folder(
    deployment_sqlite: Deployment, tmp_path: Path
) -> None:
    user = deployment_sqlite.user("hostile-control")
    folder = tmp_path / "checkpoint"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "weights.bin").write_bytes(PAYLOAD)
    (folder / "config.json").write_text("{}")
    with lmvp.Client(deployment_sqlite.url, user.token, cache_dir=tmp_path / "cache") as client:
        project = client.create_project("hostile-" + os.urandom(3).hex()).name
        client.update(f"{project}/m", folder)
        path = client.download(f"{project}/m", local_dir=tmp_path / "out")
    assert path == tmp_path / "out"
    assert (path / "sub" / "weights.bin").read_bytes() == PAYLOAD
    assert (path / "config.json").read_text() == "{}"
