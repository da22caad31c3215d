"""How fast `lmvp.chunking.chunk_file` is, against hashing the same file whole, and what it shares.

In one run, on files in a temporary folder (warm in the page cache: each is read once before it
is timed):

- speed: chunk_file and `lmvp.transfer.hash_file` (today's whole-file sha256) of a 1 GiB
  safetensors model, a 1 GiB zip laid out as `torch.save` writes it and 1 GiB of random bytes;
  MB/s of each, their ratio, the CPU time each spends (all threads: on a busy machine the wall
  times move with the load, CPU time much less), how many chunks each file gives, and the time
  of hashing the file twice at once in two threads (what two hashes of every byte cost at least
  on this machine's cores; medians of --repeat runs, taken in turns);
- de-duplication: the safetensors model against a copy in which every tenth tensor changed (the
  share of the copy's bytes whose chunks the first already has; a fine-tune's next checkpoint),
  and a random file against a copy with 1 KiB inserted near its start (content-defined chunks);
- with --sweep, the same for several piece sizes (the longest tensor chunk) and FastCDC average
  sizes, to show what `PIECE_SIZE` and `CDC_AVG_SIZE` trade.

Usage: python bench/chunking.py [--size-mib 1024] [--repeat 3] [--sweep]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lmvp import chunking
from lmvp.chunking import ChunkedFile, TensorInfo, chunk_file
from lmvp.transfer import hash_file
from tests.client.torch_layout import write_torch_zip

MiB = 1 << 20


def model_tensors(total: int) -> list[tuple[str, str, list[int]]]:
    """(name, dtype, shape) of a transformer-like F32 model of about `total` bytes: an embedding
    of an eighth of it, then layers of four 4 MiB attention matrices, two 16 MiB MLP matrices and
    two 4 KiB norms."""
    hidden = 1024
    vocab = max(1, total // 8 // (hidden * 4))
    tensors = [("embed.weight", "F32", [vocab, hidden])]
    size = vocab * hidden * 4
    layer = 0
    while size < total:
        for part in ("q", "k", "v", "o"):
            tensors.append((f"layers.{layer}.attn.{part}.weight", "F32", [hidden, hidden]))
        tensors.append((f"layers.{layer}.mlp.up.weight", "F32", [4 * hidden, hidden]))
        tensors.append((f"layers.{layer}.mlp.down.weight", "F32", [hidden, 4 * hidden]))
        tensors.append((f"layers.{layer}.norm1.weight", "F32", [hidden]))
        tensors.append((f"layers.{layer}.norm2.weight", "F32", [hidden]))
        size += 4 * hidden * hidden * 4 + 2 * 4 * hidden * hidden * 4 + 2 * hidden * 4
        layer += 1
    return tensors


def write_safetensors(
    path: Path, tensors: list[tuple[str, str, list[int]]], data: Callable[[int, int], bytes]
) -> None:
    """A safetensors file of `tensors`, tensor i's bytes being `data(i, nbytes)`; written as the
    format says (8-byte header length, JSON header padded with spaces to 8 bytes, the data)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    sizes = []
    for name, dtype, shape in tensors:
        nbytes = 4 * _count(shape)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        sizes.append(nbytes)
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for i, nbytes in enumerate(sizes):
            f.write(data(i, nbytes))


def _count(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def seeded(seed: int) -> Callable[[int, int], bytes]:
    """Tensor bytes that depend only on (seed, tensor index): the same tensor in two files is
    the same bytes."""
    import random

    def data(i: int, nbytes: int) -> bytes:
        return random.Random(seed * 1_000_003 + i).randbytes(nbytes)

    return data


def shared_share(old: ChunkedFile, new: ChunkedFile) -> tuple[float, float]:
    """The share of `new`'s bytes, and of its chunks, whose chunk hash `old` has."""
    have = {c.sha256 for c in old.chunks}
    shared = [c for c in new.chunks if c.sha256 in have]
    by_bytes = sum(c.length for c in shared) / max(1, new.size)
    return by_bytes, len(shared) / max(1, len(new.chunks))


def cpu_timed(fn: Callable[[], object], repeat: int) -> float:
    """Median CPU time (all threads) of `fn`: steadier than wall time on a shared machine."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def speed(label: str, path: Path, repeat: int) -> None:
    """Wall time and CPU time (all threads) of hash_file and chunk_file, taken in turns so that
    both see the same load on a shared machine; medians."""
    size = path.stat().st_size
    hash_file(path)  # into the page cache
    walls: dict[str, list[float]] = {"hash": [], "chunk": [], "twice": []}
    cpus: dict[str, list[float]] = {"hash": [], "chunk": [], "twice": []}
    chunks = 0
    for _ in range(repeat):
        for name in ("hash", "chunk", "twice"):
            wall, cpu = time.perf_counter(), time.process_time()
            if name == "hash":
                hash_file(path)
            elif name == "chunk":
                chunks = len(chunk_file(path).chunks)
            else:
                with ThreadPoolExecutor(2) as pool:
                    list(pool.map(hash_file, [path, path]))
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    t_hash, t_chunk = statistics.median(walls["hash"]), statistics.median(walls["chunk"])
    t_twice = statistics.median(walls["twice"])
    c_hash, c_chunk = statistics.median(cpus["hash"]), statistics.median(cpus["chunk"])
    mb = size / 1e6
    print(
        f"{label:<20} sha256 {mb / t_hash:6.0f} MB/s  chunk_file {mb / t_chunk:6.0f} MB/s  "
        f"ratio {t_hash / t_chunk:4.2f}  CPU s/GB {c_hash / mb * 1e3:.2f} vs "
        f"{c_chunk / mb * 1e3:.2f}  {chunks:5d} chunks (mean {size / max(1, chunks) / MiB:.2f} MiB)"
    )
    print(
        f"{'':<20} (the file hashed twice at once, in two threads, the least two hashes can "
        f"take here: {mb / t_twice:.0f} MB/s; chunk_file takes {t_chunk / t_twice:.2f}x that)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sweep", action="store_true", help="also try other piece/CDC sizes")
    args = parser.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="lmvp-bench-chunking-") as tmp:
        folder = Path(tmp)
        tensors = model_tensors(size)
        model = folder / "model.safetensors"
        write_safetensors(model, tensors, seeded(1))
        tuned = folder / "tuned.safetensors"
        base, changed = seeded(1), seeded(2)
        write_safetensors(tuned, tensors, lambda i, n: changed(i, n) if i % 10 == 5 else base(i, n))
        storages = [os.urandom(n) for n in _storage_sizes(size)]
        torch_zip = folder / "checkpoint.pt"
        write_torch_zip(torch_zip, storages, pickle_extra={"epoch": 3, "lr": 1e-4})
        del storages
        random_file = folder / "random.bin"
        _write_random(random_file, size)

        print(
            f"cpu: {os.cpu_count()} cores; piece size {chunking.PIECE_SIZE // MiB} MiB; "
            f"CDC target {chunking.CDC_AVG_SIZE // 1024} KiB"
        )
        print(f"-- speed ({args.size_mib} MiB files, warm page cache, median of {args.repeat})")
        speed("safetensors", model, args.repeat)
        speed("torch zip", torch_zip, args.repeat)
        speed("random bytes (CDC)", random_file, args.repeat)

        print("-- de-duplication")
        a, b = chunk_file(model), chunk_file(tuned)
        changed_bytes = sum(
            t.end - t.start for i, t in enumerate(_in_header_order(a, tensors)) if i % 10 == 5
        )
        by_bytes, by_chunks = shared_share(a, b)
        print(
            f"safetensors, every 10th tensor changed ({changed_bytes / b.size:.1%} of the bytes): "
            f"{by_bytes:.1%} of the bytes and {by_chunks:.1%} of the chunks already there"
        )
        inserted = folder / "inserted.bin"
        _insert(random_file, inserted, at=MiB + 12345, data=os.urandom(1024))
        by_bytes, by_chunks = shared_share(chunk_file(random_file), chunk_file(inserted))
        print(
            f"random bytes, 1 KiB inserted at 1 MiB: {by_bytes:.1%} of the bytes and "
            f"{by_chunks:.1%} of the chunks already there"
        )
        if args.sweep:
            # The embedding's last 2% of rows trained (new tokens), everything else frozen: a
            # change inside one tensor, where smaller pieces keep more.
            rows = folder / "new-tokens.safetensors"
            write_safetensors(rows, tensors, lambda i, n: _tail_changed(base, i, n, 0.02))
            sweep(model, tuned, rows, random_file, inserted, args.repeat)


def sweep(
    model: Path, tuned: Path, rows: Path, random_file: Path, inserted: Path, repeat: int
) -> None:
    print(
        "-- piece size (safetensors: CPU s/GB, chunks, share already there of the copy with "
        "every 10th tensor changed, and of the one with the embedding's last 2% of rows changed)"
    )
    size = model.stat().st_size
    for piece in (4 * MiB, 8 * MiB, 16 * MiB, 32 * MiB, 64 * MiB):
        t = cpu_timed(functools.partial(chunk_file, model, piece_size=piece), repeat)
        a, b = chunk_file(model, piece_size=piece), chunk_file(tuned, piece_size=piece)
        c = chunk_file(rows, piece_size=piece)
        print(
            f"piece {piece // MiB:3d} MiB: {t / size * 1e9:.2f} CPU s/GB, {len(a.chunks):5d} "
            f"chunks, {shared_share(a, b)[0]:.1%} / {shared_share(a, c)[0]:.1%} shared"
        )
    print("-- FastCDC target size (random bytes: CPU s/GB, chunks, share after a 1 KiB insert)")
    size = random_file.stat().st_size
    for avg in (256 * 1024, 512 * 1024, MiB, 2 * MiB, 4 * MiB):
        t = cpu_timed(functools.partial(chunk_file, random_file, cdc_avg_size=avg), repeat)
        a = chunk_file(random_file, cdc_avg_size=avg)
        b = chunk_file(inserted, cdc_avg_size=avg)
        print(
            f"avg {avg // 1024:5d} KiB: {t / size * 1e9:.2f} CPU s/GB, {len(a.chunks):5d} "
            f"chunks, {shared_share(a, b)[0]:.1%} shared"
        )


def _in_header_order(
    chunked: ChunkedFile, tensors: list[tuple[str, str, list[int]]]
) -> list[TensorInfo]:
    by_name = {t.name: t for t in chunked.tensors}
    return [by_name[name] for name, _, _ in tensors]


def _tail_changed(base: Callable[[int, int], bytes], i: int, nbytes: int, share: float) -> bytes:
    """Tensor i as `base` makes it, but for tensor 0 (the embedding) with its last `share` of
    bytes different."""
    data = base(i, nbytes)
    if i != 0:
        return data
    keep = nbytes - int(nbytes * share)
    return data[:keep] + os.urandom(nbytes - keep)


def _storage_sizes(total: int) -> list[int]:
    """Storage sizes of a checkpoint: many small ones (biases, norms, step counters) among
    4-64 MiB matrices."""
    sizes: list[int] = []
    pattern = [64 * MiB, 4, 4096, 16 * MiB, 4 * MiB, 4096, 32 * MiB, 8 * MiB]
    i = 0
    while sum(sizes) < total:
        sizes.append(min(pattern[i % len(pattern)], total - sum(sizes)))
        i += 1
    return sizes


def _write_random(path: Path, size: int) -> None:
    with path.open("wb") as f:
        for start in range(0, size, 64 * MiB):
            f.write(os.urandom(min(64 * MiB, size - start)))


def _insert(source: Path, target: Path, *, at: int, data: bytes) -> None:
    with source.open("rb") as f, target.open("wb") as out:
        out.write(f.read(at))
        out.write(data)
        while block := f.read(64 * MiB):
            out.write(block)


if __name__ == "__main__":
    main()
