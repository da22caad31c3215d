"""`lmvp-server blobs migrate --to s3://...`: a server's local blobs copied into a bucket while
it serves them, resumably (what the bucket holds with the right size is skipped, an object of
the wrong size replaced), each verified on the way (a damaged blob is named and never stored);
then a server on the bucket serves every version."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from collections.abc import Callable

from lmvp_server.s3 import S3Location
from tests.s3 import BUCKET, SeaweedFS
from tests.support import ADMIN_PASSWORD, Api, Deployment, ServerProcess, sha256_bytes, unique

MiB = 1024 * 1024


def _key(location: S3Location, sha256: str) -> str:
    return location.key("blobs", sha256[:2], sha256[2:4], sha256)


def _migrate(server: ServerProcess, to: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lmvp_server", "blobs", "migrate", "--to", to],
        env=server.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_local_blobs_migrate_to_a_bucket_resumably_verified_while_served(
    make_server: Callable[[str], ServerProcess], seaweedfs: SeaweedFS
) -> None:
    server = make_server("sqlite")
    s3_env = seaweedfs.server_env()
    del s3_env["LMVP_BLOB_STORE"]  # the server serves from its folder until it is told
    server.extra_env.update(s3_env)
    location = S3Location(BUCKET, unique("migrated"))
    server.start()
    deployment = Deployment(server, Api(server.url).login("admin", ADMIN_PASSWORD))
    owner = deployment.user("migrate")
    project = deployment.project(owner)
    files = {
        f"f{i}.bin": hashlib.sha512(str(i).encode()).digest() * (size // 64)
        for i, size in enumerate([64, 4096, 3 * MiB, 24 * MiB, 640 * 1024])
    }
    assert deployment.commit(owner, project, "net", files).status_code == 201
    digests = [sha256_bytes(data) for data in files.values()]
    client = seaweedfs.client()
    # From an earlier, stopped run: one blob already there, one cut short (wrong size).
    client.put_object(Bucket=BUCKET, Key=_key(location, digests[0]), Body=files["f0.bin"])
    client.put_object(Bucket=BUCKET, Key=_key(location, digests[3]), Body=b"cut short")

    # Readers keep being served from the local store while the copy runs.
    served: list[bool] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            got = owner.get(f"/projects/{project}/blobs/{digests[2]}").content
            served.append(sha256_bytes(got) == digests[2])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        run = _migrate(server, str(location))
        out, err = run.communicate(timeout=300)
    finally:
        stop.set()
        reader.join()
    assert run.returncode == 0, err
    assert served and all(served)
    assert "copied 4 blobs, 1 were already in" in out
    assert f"LMVP_BLOB_STORE={location}" in out
    assert f"LMVP_S3_ENDPOINT_URL={seaweedfs.endpoint_url}" in out
    assert "5/5 blobs" in out
    held = seaweedfs.objects(prefix=location.key("blobs"))
    assert held == {_key(location, d): len(data) for d, data in zip(digests, files.values())}

    # Run again (the server still up): nothing left to copy.
    again = server.cli("blobs", "migrate", "--to", str(location))
    assert again.returncode == 0, again.stderr
    assert "copied 0 blobs, 5 were already in" in again.stdout

    # A local blob damaged on disk is named and never stored.
    damaged = digests[1]
    local = server.data_dir / "blobs" / damaged[:2] / damaged[2:4] / damaged
    client.delete_object(Bucket=BUCKET, Key=_key(location, damaged))
    data = bytearray(local.read_bytes())
    data[100] ^= 0xFF
    local.write_bytes(bytes(data))
    broken = server.cli("blobs", "migrate", "--to", str(location))
    assert broken.returncode == 1
    assert damaged in broken.stderr and "damaged" in broken.stderr
    assert _key(location, damaged) not in seaweedfs.objects(prefix=location.key("blobs"))
    local.write_bytes(files["f1.bin"])
    assert server.cli("blobs", "migrate", "--to", str(location)).returncode == 0
    server.stop()

    # The same database served from the bucket: every version's bytes are there.
    server.extra_env["LMVP_BLOB_STORE"] = str(location)
    server.start()
    try:
        for digest in digests:
            got = owner.get(f"/projects/{project}/blobs/{digest}")
            assert got.status_code == 200 and sha256_bytes(got.content) == digest
    finally:
        server.stop()


def test_migrate_names_a_bad_target(make_server: Callable[[str], ServerProcess]) -> None:
    server = make_server("sqlite")
    result = server.cli("blobs", "migrate", "--to", "s3://X")
    assert result.returncode == 2 and "names no valid bucket" in result.stderr
