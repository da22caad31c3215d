"""Bytes on the wire: LMVP against MLflow on a shaped 400 Mbit/s link (issue 17's bench).

Everything runs in a network namespace of its own (`ip netns`; needs root, iproute2 and MLflow
in .venv-mlflow: `make bench-deps`), made at the start and removed at the end, also after
Ctrl+C. In it: an LMVP server on the embedded default (SQLite + local folder), MLflow's
tracking server (`mlflow server --serve-artifacts`, SQLite backend, artifacts in a local
folder), and the clients, each operation a process of its own through the public API
(`lmvp.Client.update` / `.download`; `mlflow.log_artifact` / `mlflow.artifacts.
download_artifacts`), so that the bench measures whatever path the client takes.

The link. The namespace's loopback carries two extra addresses that are not loopback ones (so
that the LMVP client treats the server as another machine's and takes the network path, and
LMVP_LOCAL_UPLOADS=0 keeps it off the server's Unix socket): packets to SHAPED go through
`tbf rate 400mbit burst 256kb latency 50ms` (under an htb root that only sorts packets; netem is
missing from this kernel), packets to FAST are not shaped. On SHAPED each server sits behind a
small asyncio TCP relay (in this process) that counts the bytes each way: the clients talk to
the relay, the relay to the server on 127.0.0.1, so only the client's leg is shaped and the
figures are counted, not estimated. Scenario 4 goes to FAST without a relay (at loopback speed
a Python relay would be the bottleneck) and on plain loopback (the qdisc removed: even an idle
htb halves loopback's speed here): its bytes are the namespace's IP bytes sent (IP and TCP
headers included, both ways together), as only the one measured transfer talks.

Scenarios (--size, default 1 GiB; --quick is 128 MiB), every publish and download timed
from the call to its return (imports and process start excluded):
1. fine-tune: a safetensors model of BF16 tensors (several hundred, of mixed sizes: float32
   normal(0, std) cut to bf16 by taking the upper 16 bits), published; then the same model with
   about 10% of its tensors (by bytes) changed, published as the next version.
2. full training: a BF16 checkpoint in which every tensor changed slightly, published after
   the fine-tune; an FP32 checkpoint after another in which every tensor changed; random bytes.
3. download of the fine-tuned version into a cache that holds the base version (downloaded
   first, a row of its own); MLflow has no cache and downloads the whole file.
4. unshaped: a fresh file of random bytes, `lmvp.Client.update` and `.download` beside the
   same calls on the whole-file HTTP path that the client took before chunks ("LMVP whole":
   chunks switched off, lmvp.chunked.ENV=0) and MLflow. "LMVP" takes the path the link rate
   recorded by the transfers before it points to (`lmvp.links`); "LMVP new link" forgets that
   rate first, as on the first transfer to a server (chunks). Each upload sends a file of all
   new random bytes. Both ends write and fsync what they receive, as MLflow does not: the
   disk's fsynced write rate, measured first, is printed with the table.

Each scenario group gets a fresh LMVP server and data folder, and files are deleted as soon as
they are no longer needed (the work folder needs about 6x --size; --work-dir picks where).
Prints a table: scenario, tool, seconds, bytes each way, their ratio to the file's size, MiB/s,
MLflow's time over LMVP's; then issue 17's targets beside the figures.
Usage: python bench/wire.py [--size-mib 1024 | --quick] [--work-dir DIR] [--rate 400mbit]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.client
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MLFLOW_PYTHON = REPO / ".venv-mlflow" / "bin" / "python"
MIB = 1024 * 1024
SHAPED = "10.77.0.1"  # the relays listen here; packets to it pass the tbf
FAST = "10.77.0.2"  # not shaped, and not a loopback address either
PASSWORD = "bench-password-wire"
PROJECT = "wire"
SEED = 17
# The scenarios, as the table names them.
FINE_TUNE = "1 fine-tune (10% changed), publish"
BF16_STEP = "2 BF16 checkpoint, every tensor changed"
F32_STEP = "2 FP32 checkpoint, every tensor changed"
RANDOM = "2 random bytes"
CACHED = "3 fine-tune, base in the cache"
FAST_UP = "4 fresh file, upload (unshaped)"
FAST_DOWN = "4 fresh file, download (unshaped)"


# ---------------------------------------------------------------------------------------------
# The namespace (outside it, as root)


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


def make_namespace(name: str) -> None:
    _run("ip", "netns", "add", name)
    _run("ip", "-n", name, "link", "set", "lo", "up")
    for address in (SHAPED, FAST):
        _run("ip", "-n", name, "addr", "add", f"{address}/32", "dev", "lo")


def remove_namespace(name: str) -> None:
    """End every process still in the namespace (all started by this bench), then remove it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True
        ).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), sig)
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = [p for p in pids if _alive(p)]
        if not pids:
            break
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _alive(pid: str) -> bool:
    """Whether the process runs (a zombie, ended and waiting for its parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def outside(args: argparse.Namespace, argv: list[str]) -> int:
    problems = []
    if os.geteuid() != 0:
        problems.append("run it as root (it makes a network namespace and shapes its loopback)")
    if not (shutil.which("ip") and shutil.which("tc")):
        problems.append("needs ip and tc: `make bench-deps` (apt-get install iproute2)")
    if not MLFLOW_PYTHON.exists():
        problems.append(f"needs MLflow in {MLFLOW_PYTHON.parent.parent}: `make bench-deps`")
    work = Path(args.work_dir or tempfile.gettempdir())
    free = shutil.disk_usage(work).free
    if free < 6.5 * args.size:
        problems.append(
            f"{work} has {free / 2**30:.1f} GiB free, the bench needs about "
            f"{6.5 * args.size / 2**30:.1f}: pick another --work-dir or a smaller --size-mib"
        )
    if problems:
        print("bench/wire.py cannot run:\n  " + "\n  ".join(problems))
        return 2
    name = f"lmvp-wire-{os.getpid()}"
    interruptible()
    folder = tempfile.mkdtemp(prefix="lmvp-bench-wire-", dir=work)
    proc: subprocess.Popen[bytes] | None = None
    try:
        make_namespace(name)
        inner = [sys.executable, __file__, "--inside", name, "--work", folder, *argv]
        proc = subprocess.Popen(["ip", "netns", "exec", name, *inner])
        return proc.wait()
    except KeyboardInterrupt:
        print("interrupted; cleaning up", flush=True)
        return 130
    finally:
        if proc is not None and proc.poll() is None:
            # Ctrl+C reached it too; a SIGTERM of this process is passed on. It stops its servers.
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        remove_namespace(name)
        shutil.rmtree(folder, ignore_errors=True)


def interruptible() -> None:
    """Ctrl+C and SIGTERM raise KeyboardInterrupt (also where the shell started this with
    SIGINT ignored), so that the `finally` clauses stop the servers and remove the folders."""

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


# ---------------------------------------------------------------------------------------------
# The link, inside the namespace


def tc(*arguments: str) -> None:
    _run("tc", *arguments)


def shape(rate: str) -> None:
    """An htb root that only sorts packets: those to SHAPED (both ways of a client's talk with a
    relay) into a tbf, the issue's link; the rest (the relays' legs to the servers, FAST) free."""
    tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "20")
    for classid in ("1:10", "1:20"):
        tc("class", "add", "dev", "lo", "parent", "1:", "classid", classid, "htb",
           "rate", "100gbit", "burst", "4mb", "cburst", "4mb", "quantum", "200000")  # fmt: skip
    tc("qdisc", "add", "dev", "lo", "parent", "1:10", "handle", "10:", "tbf",
       "rate", rate, "burst", "256kb", "latency", "50ms")  # fmt: skip
    tc("filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
       "match", "ip", "dst", f"{SHAPED}/32", "flowid", "1:10")  # fmt: skip


def unshape() -> None:
    """Plain loopback again (no qdisc at all: even an idle htb halves loopback's speed here)."""
    tc("qdisc", "del", "dev", "lo", "root")


class LoopbackCounter:
    """The namespace's IP bytes sent (/proc/net/netstat, IpExt OutOctets: headers included, both
    ways together), for the unshaped transfers, where only the one measured transfer talks."""

    together = True

    def counts(self) -> tuple[int, int]:
        lines = Path("/proc/net/netstat").read_text().splitlines()
        names, values = (line.split() for line in lines if line.startswith("IpExt:"))
        return int(dict(zip(names, values, strict=True))["OutOctets"]), 0


class Relay:
    """A TCP relay from SHAPED:port to 127.0.0.1:target that counts the bytes each way; runs
    its own event loop in a thread."""

    together = False

    def __init__(self, target: int) -> None:
        self.target = target
        self.up = 0  # client -> server
        self.down = 0  # server -> client
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(started,), daemon=True, name="relay"
        )
        self._thread.start()
        started.wait()
        assert self._server is not None
        self.port: int = int(self._server.sockets[0].getsockname()[1])

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, SHAPED, 0)

        self.loop.run_until_complete(start())
        started.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio forgets a handler once its client has gone; this one may still be pumping
        # the server's side, so it is held here until it ends.
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._relay(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            try:
                while data := await src.read(256 * 1024):
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
            except OSError:
                dst.close()

        await asyncio.gather(
            pump(reader, server_writer, True),
            pump(server_reader, writer, False),
            return_exceptions=True,
        )
        for w in (writer, server_writer):
            w.close()

    def counts(self) -> tuple[int, int]:
        return self.up, self.down

    def close(self) -> None:
        if self._server is not None:
            self.loop.call_soon_threadsafe(self._server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


# ---------------------------------------------------------------------------------------------
# The files


D_MODEL, D_FFN = 1024, 2816


def layout(size: int, itemsize: int) -> list[tuple[str, tuple[int, ...], float]]:
    """A decoder's tensors (name, shape, std of the values) filling about `size` bytes: an
    embedding of ~6% of the file, then layers of attention (4 of d x d), MLP (3 of d x ffn) and
    two norms, then a final norm and an output layer of the bytes left; several hundred
    tensors at 1 GiB."""
    d = D_MODEL
    tensors: list[tuple[str, tuple[int, ...], float]] = []
    vocab = max(256, int(size * 0.06 / (d * itemsize)))
    tensors.append(("model.embed_tokens.weight", (vocab, d), 0.02))
    per_layer = (4 * d * d + 3 * d * D_FFN + 2 * d) * itemsize
    layers = max(1, (size - vocab * d * itemsize) // per_layer)
    for i in range(layers):
        p = f"model.layers.{i}."
        std = 0.02 / (2 * layers) ** 0.5
        tensors.append((p + "input_layernorm.weight", (d,), -1.0))
        for n in ("q", "k", "v"):
            tensors.append((p + f"self_attn.{n}_proj.weight", (d, d), 0.02))
        tensors.append((p + "self_attn.o_proj.weight", (d, d), std))
        tensors.append((p + "post_attention_layernorm.weight", (d,), -1.0))
        tensors.append((p + "mlp.gate_proj.weight", (D_FFN, d), 0.02))
        tensors.append((p + "mlp.up_proj.weight", (D_FFN, d), 0.02))
        tensors.append((p + "mlp.down_proj.weight", (d, D_FFN), std))
    tensors.append(("model.norm.weight", (d,), -1.0))
    used = sum(math.prod(shape) for _, shape, _ in tensors) * itemsize
    if (rows := (size - used) // (d * itemsize)) > 0:
        tensors.append(("lm_head.weight", (rows, d), 0.02))  # the rest of the size
    return tensors


def _values(index: int, shape: tuple[int, ...], std: float, salt: int = 0) -> Any:
    """float32 values of one tensor, the same for the same index and salt (norms: about 1)."""
    import numpy as np

    rng = np.random.default_rng([SEED, index, salt])
    n = int(np.prod(shape))
    if std < 0:
        return (1.0 + rng.standard_normal(n, dtype=np.float32) * 0.05).astype(np.float32)
    return rng.standard_normal(n, dtype=np.float32) * np.float32(std)


def _bf16(values: Any) -> Any:
    """float32 -> bf16 bits: the upper 16 bits (truncation)."""
    import numpy as np

    return (values.view(np.uint32) >> 16).astype(np.uint16)


def write_checkpoint(path: Path, size: int, dtype: str, changes: list[set[int] | None]) -> int:
    """A safetensors file of `dtype` ("BF16" or "F32") of about `size` bytes. `changes` lists
    training steps after the initial values: in each, the tensors of the set (None: all) move by
    normal(0, std / 10). Returns the number of tensors."""
    import numpy as np

    itemsize = 2 if dtype == "BF16" else 4
    tensors = layout(size, itemsize)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in tensors:
        length = int(np.prod(shape)) * itemsize
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + length],
        }
        offset += length
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for i, (_, shape, std) in enumerate(tensors):
            values = _values(i, shape, std)
            if dtype == "BF16":
                values = (_bf16(values).astype(np.uint32) << 16).view(np.float32)
            for step, changed in enumerate(changes, start=1):
                if changed is None or i in changed:
                    delta = _values(i, shape, abs(std) / 10 if std > 0 else 0.005, salt=step)
                    values = values + delta
                    if dtype == "BF16":
                        values = (_bf16(values).astype(np.uint32) << 16).view(np.float32)
            data = _bf16(values) if dtype == "BF16" else values.astype("<f4")
            f.write(data.tobytes())
    return len(tensors)


def tenth_by_bytes(size: int) -> tuple[set[int], float, float]:
    """About 10% of the BF16 model's bytes, as tensors picked at random; (their indexes, share
    of the tensors, share of the bytes)."""
    import numpy as np

    tensors = layout(size, 2)
    sizes = [int(np.prod(shape)) * 2 for _, shape, _ in tensors]
    order = np.random.default_rng(SEED).permutation(len(tensors))
    picked: set[int] = set()
    total = 0
    for i in order:
        if total + sizes[i] > 0.105 * sum(sizes):
            continue
        picked.add(int(i))
        total += sizes[i]
        if total >= 0.095 * sum(sizes):
            break
    return picked, len(picked) / len(tensors), total / sum(sizes)


def disk_rate(folder: Path, size: int = 256 * MIB) -> float:
    """MB/s of writing `size` bytes into `folder` and fsyncing them, as a server storing a blob
    or a client caching one does."""
    probe = folder / "disk-probe"
    start = time.perf_counter()
    try:
        with probe.open("wb") as f:
            block = os.urandom(16 * MIB)
            for _ in range(size // len(block)):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        return size / (time.perf_counter() - start) / 1e6
    finally:
        probe.unlink(missing_ok=True)


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as f:
        for start in range(0, size, 16 * MIB):
            f.write(os.urandom(min(16 * MIB, size - start)))


# ---------------------------------------------------------------------------------------------
# One client operation, in a process of its own (--client): prints {"seconds": ..., ...}


def client_operation(op: dict[str, Any]) -> dict[str, Any]:
    kind = op["kind"]
    if kind.startswith("mlflow"):
        return _mlflow_operation(op)
    import lmvp

    if op.get("whole"):  # the whole-file path, as before chunks (a client without them: as ever)
        with contextlib.suppress(ImportError):
            from lmvp import chunked

            os.environ[chunked.ENV] = "0"
    if op.get("forget"):  # a first transfer to this server: no link rate recorded yet
        import platformdirs

        (Path(platformdirs.user_state_dir("lmvp")) / "links.json").unlink(missing_ok=True)
    path = Path(op.get("path", ""))
    with lmvp.Client(op["server"], op["token"]) as client:
        start = time.perf_counter()
        if kind == "lmvp-update":
            version = client.update(f"{PROJECT}/{op['model']}", path)
            return {"seconds": time.perf_counter() - start, "version": version.number}
        if kind == "lmvp-download":
            got = client.download(op["ref"], cache_dir=op["cache"])
            return {"seconds": time.perf_counter() - start, "path": str(got)}
    raise ValueError(kind)


def _mlflow_operation(op: dict[str, Any]) -> dict[str, Any]:
    import mlflow

    mlflow.set_tracking_uri(op["server"])
    if op["kind"] == "mlflow-log":
        client = mlflow.MlflowClient()
        run = client.create_run(op["experiment"])
        start = time.perf_counter()
        client.log_artifact(run.info.run_id, op["path"])
        seconds = time.perf_counter() - start
        client.set_terminated(run.info.run_id)
        return {"seconds": seconds, "run": run.info.run_id}
    start = time.perf_counter()
    got = mlflow.artifacts.download_artifacts(
        run_id=op["run"], artifact_path=op["name"], dst_path=op["dst"]
    )
    seconds = time.perf_counter() - start
    Path(got).unlink()
    return {"seconds": seconds}


# ---------------------------------------------------------------------------------------------
# Inside the namespace: the servers, the scenarios, the table


@dataclass
class Row:
    scenario: str
    tool: str
    seconds: float
    up: int
    down: int
    size: int
    download: bool = False
    load: float = 0.0
    together: bool = False  # `up` holds both ways (plain loopback, no relay)

    @property
    def ratio(self) -> float:
        return (self.down if self.download and not self.together else self.up) / self.size

    @property
    def mib_s(self) -> float:
        return self.size / MIB / self.seconds


@dataclass
class Bench:
    work: Path
    size: int
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lmvp_url: str = ""
    lmvp_fast_url: str = ""
    token: str = ""
    mlflow_url: str = ""
    mlflow_fast_url: str = ""
    experiment: str = ""

    def env(self) -> dict[str, str]:
        """The clients' and MLflow's: their caches, settings and temporary files in the work
        folder, and never the local-upload socket."""
        home = self.work / "home"
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        return dict(
            os.environ,
            TMPDIR=str(home / "tmp"),
            LMVP_LOCAL_UPLOADS="0",
            LMVP_CONFIG_DIR=str(home / "config"),
            XDG_CONFIG_HOME=str(home / "config"),
            XDG_STATE_HOME=str(home / "state"),
            XDG_CACHE_HOME=str(home / "cache"),
            MLFLOW_DISABLE_TELEMETRY="true",
            DO_NOT_TRACK="1",
            PYTHONPATH=str(REPO),
        )

    def client(self, op: dict[str, Any]) -> dict[str, Any]:
        python = str(MLFLOW_PYTHON) if op["kind"].startswith("mlflow") else sys.executable
        result = subprocess.run(
            [python, __file__, "--client", json.dumps(op)],
            env=self.env(),
            capture_output=True,
            text=True,
        )
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines:
            raise RuntimeError(f"{op['kind']} failed:\n{result.stderr[-3000:]}")
        return json.loads(lines[-1])  # type: ignore[no-any-return]

    def measure(
        self,
        scenario: str,
        tool: str,
        op: dict[str, Any],
        counter: Relay | LoopbackCounter,
        size: int,
        download: bool = False,
    ) -> dict[str, Any]:
        before = counter.counts()
        result = self.client(op)
        after = counter.counts()
        row = Row(
            scenario,
            tool,
            result["seconds"],
            after[0] - before[0],
            after[1] - before[1],
            size,
            download,
            os.getloadavg()[0],
            counter.together,
        )
        self.rows.append(row)
        way = (
            f"both ways {row.up / MIB:8.1f} MiB"
            if row.together
            else (f"up {row.up / MIB:8.1f} MiB  down {row.down / MIB:8.1f} MiB")
        )
        print(
            f"  {scenario:44} {tool:11} {row.seconds:7.1f} s  {way}  load {row.load:.1f}",
            flush=True,
        )
        return result


@contextlib.contextmanager
def lmvp_server(bench: Bench, name: str) -> Iterator[Relay]:
    """A fresh LMVP server (SQLite + local folder under the work folder, removed after) behind
    a relay on SHAPED, listening on FAST too; sets bench's URLs and token."""
    sys.path.insert(0, str(REPO))
    from tests.support import Api, ServerProcess

    data = bench.work / f"lmvp-{name}"
    data.mkdir()
    server = ServerProcess(
        data, "", extra_env={"LMVP_LOCAL_UPLOADS": "0"}, serve_args=["--host", "0.0.0.0"]
    )
    created = server.cli(
        "user", "create", "bench", "--admin", "--password-stdin", stdin=PASSWORD + "\n"
    )
    if created.returncode != 0:
        raise RuntimeError(created.stderr)
    server.start(timeout=120)
    relay = Relay(server.port)
    try:
        bench.token = str(Api(server.url).login("bench", PASSWORD).token)
        bench.lmvp_url = f"http://{SHAPED}:{relay.port}"
        bench.lmvp_fast_url = f"http://{FAST}:{server.port}"
        import lmvp

        with lmvp.Client(server.url, bench.token) as client:
            client.create_project(PROJECT)
        yield relay
    finally:
        relay.close()
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(bench: Bench) -> Iterator[tuple[Relay, Path]]:
    """`mlflow server` with its artifacts served by itself, behind a relay on SHAPED; yields
    the relay and the artifact folder."""
    sys.path.insert(0, str(REPO))
    from tests.support import free_port

    folder = bench.work / "mlflow"
    artifacts = folder / "artifacts"
    artifacts.mkdir(parents=True)
    port = free_port()
    log = (folder / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            str(MLFLOW_PYTHON),
            "-m",
            "mlflow",
            "server",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(artifacts),
            "--allowed-hosts",
            "*",
        ],
        env=bench.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    relay = Relay(port)
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not start:\n{(folder / 'server.log').read_text()[-3000:]}"
                )
            time.sleep(0.5)
        bench.mlflow_url = f"http://{SHAPED}:{relay.port}"
        bench.mlflow_fast_url = f"http://{FAST}:{port}"
        yield relay, artifacts
    finally:
        relay.close()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _drop_artifacts(artifacts: Path) -> None:
    """MLflow's stored copies, once measured (the disk holds a few files at a time)."""
    for path in artifacts.rglob("*"):
        if path.is_file():
            path.unlink()


def inside(args: argparse.Namespace) -> int:
    interruptible()
    shape(args.rate)
    size = args.size
    work = Path(args.work)
    bench = Bench(work, size)
    # The unshaped transfers write and fsync 1 GiB at either end: the disk may be their limit.
    bench.notes.append(f"this disk, sequential writes then fsync: {disk_rate(work):.0f} MB/s")
    print(
        f"bench/wire.py: files of {size / MIB:.0f} MiB, link {args.rate} (tbf burst 256kb latency "
        f"50ms) in namespace {args.inside}; {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.1f}; work folder {work}",
        flush=True,
    )
    try:
        with mlflow_server(bench) as (m_relay, artifacts):
            bench.experiment = _mlflow_experiment(bench)
            run_scenarios(bench, m_relay, artifacts)
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(bench, args)
    return 0


def _mlflow_experiment(bench: Bench) -> str:
    result = subprocess.run(
        [
            str(MLFLOW_PYTHON),
            "-c",
            "import mlflow, sys; mlflow.set_tracking_uri(sys.argv[1]); "
            "print(mlflow.create_experiment('wire'))",
            bench.mlflow_url,
        ],
        env=bench.env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


def run_scenarios(bench: Bench, m_relay: Relay, artifacts: Path) -> None:
    size, work = bench.size, bench.work
    base, tuned = work / "model.safetensors", work / "tuned" / "model.safetensors"
    tuned.parent.mkdir()
    changed, count_share, byte_share = tenth_by_bytes(size)
    print("making the base model ...", flush=True)
    tensors = write_checkpoint(base, size, "BF16", [])
    file_size = base.stat().st_size
    bench.notes.append(
        f"the BF16 model: {tensors} tensors, {file_size / MIB:.0f} MiB; the fine-tune changes "
        f"{len(changed)} of them ({count_share:.0%} of the tensors, {byte_share:.1%} of the bytes)"
    )

    def mlflow_log(scenario: str, path: Path, relay: Relay | LoopbackCounter, url: str) -> str:
        op = {
            "kind": "mlflow-log",
            "server": url,
            "experiment": bench.experiment,
            "path": str(path),
        }
        run = str(bench.measure(scenario, "MLflow", op, relay, path.stat().st_size)["run"])
        return run

    print("1. fine-tune and 3. download, on the shaped link:", flush=True)
    with lmvp_server(bench, "finetune") as relay:
        up = {"kind": "lmvp-update", "server": bench.lmvp_url, "token": bench.token}
        bench.measure(
            "1 base model, first publish",
            "LMVP",
            {**up, "model": "ft", "path": str(base)},
            relay,
            file_size,
        )
        mlflow_log("1 base model, first publish", base, m_relay, bench.mlflow_url)
        _drop_artifacts(artifacts)
        print("making the fine-tune ...", flush=True)
        write_checkpoint(tuned, size, "BF16", [changed])
        bench.measure(
            FINE_TUNE,
            "LMVP",
            {**up, "model": "ft", "path": str(tuned)},
            relay,
            file_size,
        )
        tuned_run = mlflow_log(FINE_TUNE, tuned, m_relay, bench.mlflow_url)
        cache = work / "download-cache"
        down = {
            "kind": "lmvp-download",
            "server": bench.lmvp_url,
            "token": bench.token,
            "cache": str(cache),
        }
        bench.measure(
            "3 base version, empty cache",
            "LMVP",
            {**down, "ref": f"{PROJECT}/ft:1"},
            relay,
            file_size,
            True,
        )
        bench.measure(
            CACHED,
            "LMVP",
            {**down, "ref": f"{PROJECT}/ft:2"},
            relay,
            file_size,
            True,
        )
        shutil.rmtree(cache)
        dst = work / "mlflow-download"
        dst.mkdir()
        m_down = {
            "kind": "mlflow-download",
            "server": bench.mlflow_url,
            "run": tuned_run,
            "name": tuned.name,
            "dst": str(dst),
        }
        bench.measure(CACHED, "MLflow", m_down, m_relay, file_size, True)
        _drop_artifacts(artifacts)
    base.unlink()

    print("2. full training, on the shaped link:", flush=True)
    with lmvp_server(bench, "training") as relay:
        prep = {"kind": "lmvp-update", "server": bench.lmvp_fast_url, "token": bench.token}
        up = {"kind": "lmvp-update", "server": bench.lmvp_url, "token": bench.token}
        bench.client({**prep, "model": "train", "path": str(tuned)})  # the step before, unshaped
        step = work / "step" / "model.safetensors"
        step.parent.mkdir()
        write_checkpoint(step, size, "BF16", [changed, None])
        tuned.unlink()
        name = BF16_STEP
        bench.measure(name, "LMVP", {**up, "model": "train", "path": str(step)}, relay, file_size)
        mlflow_log(name, step, m_relay, bench.mlflow_url)
        _drop_artifacts(artifacts)
        step.unlink()
        write_checkpoint(step, size, "F32", [])
        bench.client({**prep, "model": "fp32", "path": str(step)})
        write_checkpoint(step, size, "F32", [None])
        name = F32_STEP
        f32_size = step.stat().st_size
        bench.measure(name, "LMVP", {**up, "model": "fp32", "path": str(step)}, relay, f32_size)
        mlflow_log(name, step, m_relay, bench.mlflow_url)
        _drop_artifacts(artifacts)
        step.unlink()
        noise = work / "noise" / "random.bin"
        noise.parent.mkdir()
        write_random(noise, size)
        name = RANDOM
        bench.measure(name, "LMVP", {**up, "model": "random", "path": str(noise)}, relay, size)
        mlflow_log(name, noise, m_relay, bench.mlflow_url)
        _drop_artifacts(artifacts)

    print("4. a fresh file, unshaped:", flush=True)
    unshape()
    fast = LoopbackCounter()
    with lmvp_server(bench, "fast"):
        name = FAST_UP
        caches = work / "fast-caches"
        up = {"kind": "lmvp-update", "server": bench.lmvp_fast_url, "token": bench.token}
        down = {"kind": "lmvp-download", "server": bench.lmvp_fast_url, "token": bench.token}
        _renew(noise, "warm-up")
        bench.client({**up, "model": "warm-up", "path": str(noise), "whole": True})
        # "LMVP" follows the link rate the transfers before it recorded (lmvp.links); "LMVP
        # new link" forgets it first, as a first transfer to a server does (chunks then).
        plain = (("LMVP whole", True, False), ("LMVP", False, False))
        for tool, whole, forget in (*plain, ("LMVP new link", False, True)):
            write_random(noise, size)  # all new bytes: no chunk of it is on the server
            model = tool.replace(" ", "-")
            op = {**up, "model": model, "path": str(noise), "whole": whole, "forget": forget}
            bench.measure(name, tool, op, fast, size)
        run = mlflow_log(name, noise, fast, bench.mlflow_fast_url)
        name = FAST_DOWN
        for tool, whole, forget in (*plain, ("LMVP new link", False, True)):
            ref = f"{PROJECT}/{tool.replace(' ', '-')}:1"
            op = {**down, "ref": ref, "cache": str(caches / tool), "whole": whole}
            bench.measure(name, tool, {**op, "forget": forget}, fast, size, True)
        bench.notes.append(
            "unshaped: 'LMVP' chose its path by the link rate recorded by the transfers before "
            "it (a fast link: whole files); 'LMVP new link' had none recorded (chunks)"
        )
        shutil.rmtree(caches)
        dst = work / "mlflow-download"
        m_down = {
            "kind": "mlflow-download",
            "server": bench.mlflow_fast_url,
            "run": run,
            "name": noise.name,
            "dst": str(dst),
        }
        bench.measure(name, "MLflow", m_down, fast, size, True)
        _drop_artifacts(artifacts)
    noise.unlink()


def _renew(path: Path, run: str) -> None:
    """New bytes at the start of `path`, so that no server holds the file yet."""
    with path.open("r+b") as f:
        f.write(hashlib.sha256(f"{run}-{time.time()}".encode()).digest())


def report(bench: Bench, args: argparse.Namespace) -> None:
    print(
        f"\n{len(bench.rows)} transfers; bytes counted at the TCP relays (payload) on the "
        f"{args.rate} link; for the unshaped ones the namespace's IP bytes (headers included, "
        "both ways together, in 'up'); ratio: the bytes sent "
        "(publish) or received (download) over the file's size; vs MLflow: MLflow's time over "
        "this tool's"
    )
    for note in bench.notes:
        print(f"({note})")
    print(
        f"{'scenario':44} {'tool':11} {'seconds':>8} {'up MiB':>9} {'down MiB':>9} "
        f"{'ratio':>6} {'MiB/s':>7} {'vs MLflow':>9} {'load':>5}"
    )
    mlflow = {r.scenario: r for r in bench.rows if r.tool == "MLflow"}
    for r in bench.rows:
        other = mlflow.get(r.scenario)
        speedup = f"{other.seconds / r.seconds:.2f}x" if other and r.tool != "MLflow" else ""
        print(
            f"{r.scenario:44} {r.tool:11} {r.seconds:8.2f} {r.up / MIB:9.1f} {r.down / MIB:9.1f} "
            f"{r.ratio:6.3f} {r.mib_s:7.1f} {speedup:>9} {r.load:5.1f}"
        )
    targets(bench)


def targets(bench: Bench) -> None:
    """Issue 17's bounds beside what this run measured (at most: "<", at least: ">")."""

    def ratio(scenario: str) -> float | None:
        mine = _find(bench, scenario, "LMVP")
        return mine.ratio if mine else None

    def faster(scenario: str, than: str) -> float | None:
        mine, theirs = _find(bench, scenario, "LMVP"), _find(bench, scenario, than)
        return theirs.seconds / mine.seconds if mine and theirs else None

    checks: list[tuple[str, float | None, str, float]] = [
        ("fine-tune: bytes sent, of the file", ratio(FINE_TUNE), "<", 0.15),
        ("fine-tune: publish, times faster than MLflow", faster(FINE_TUNE, "MLflow"), ">", 5),
        ("BF16, every tensor changed: bytes sent", ratio(BF16_STEP), "<", 0.75),
        ("FP32, every tensor changed: bytes sent", ratio(F32_STEP), "<", 0.9),
        ("random bytes: bytes sent", ratio(RANDOM), "<", 1.01),
        ("download, base in the cache: bytes received", ratio(CACHED), "<", 0.15),
        (
            "unshaped upload: speed, of the whole-file path's",
            faster(FAST_UP, "LMVP whole"),
            ">",
            0.9,
        ),
        (
            "unshaped download: speed, of the whole-file path's",
            faster(FAST_DOWN, "LMVP whole"),
            ">",
            0.9,
        ),
    ]
    print("\nissue 17's targets:")
    for text, value, way, bound in checks:
        if value is None:
            print(f"  {text}: not measured")
            continue
        ok = value <= bound if way == "<" else value >= bound
        print(f"  {text}: {value:.3f} ({way}= {bound}: {'met' if ok else 'NOT MET'})")


def _find(bench: Bench, scenario: str, tool: str) -> Row | None:
    return next((r for r in bench.rows if r.scenario == scenario and r.tool == tool), None)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="of each file [1024]")
    parser.add_argument("--quick", action="store_true", help="files of 128 MiB")
    parser.add_argument("--work-dir", default=None, help="where the files go [the temp dir]")
    parser.add_argument("--rate", default="400mbit", help="the shaped link's rate [400mbit]")
    parser.add_argument("--inside", default="", help=argparse.SUPPRESS)
    parser.add_argument("--work", default="", help=argparse.SUPPRESS)
    parser.add_argument("--client", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(client_operation(json.loads(args.client))))
        return 0
    args.size = (128 if args.quick else args.size_mib) * MIB
    if args.inside:
        return inside(args)
    return outside(args, sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
