"""The metric readers under stress: a separate process writes a metric file with random pacing
and random pieces (rows cut anywhere, Lightning's header rewrites, the Trainer's in-place
rewrites, malformed records on purpose) while the reader polls it with random `max_bytes` and
restarts from its saved state at random points. Every round must end with exactly the points
written, each once, and `skipped` equal to the malformed records written.

The rounds are seeded (round i of a format uses seed i, or `LMVP_STRESS_SEED` + i): the writer's
and the reader's choices repeat, their timing does not, which is the point. `make test` runs
`LMVP_STRESS_ROUNDS` (default 20) rounds per format; `make stress` runs 200.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lmvp_daemon.metric_files import Point
from lmvp_daemon.metric_folder import MetricFileReader, find_metric_files

REPO = Path(__file__).resolve().parents[2]
ROUNDS = int(os.environ.get("LMVP_STRESS_ROUNDS", "20"))
FIRST_SEED = int(os.environ.get("LMVP_STRESS_SEED", "0"))
# A read's max_bytes: 1 reads a line a byte at a time; most others end inside a row.
MAX_BYTES = (1, 5, 32, 100, 333, 1024, 4096, 1 << 20)
WALL_TIME_KEYS = ("wall_time", "timestamp", "time")


@dataclass
class Tally:
    """What the rounds of one format went through, to show they met the races they are for."""

    rounds: int = 0
    reads: int = 0
    reads_while_writing: int = 0  # of a file that was there
    restarts: int = 0
    rewritten: int = 0
    incomplete: int = 0


def expected_points(records: list[dict[str, Any]]) -> set[tuple[str, int, str, float | None]]:
    """Each number of each record but its step and wall time, at its step; the first per
    (key, step)."""
    seen: dict[tuple[str, int], tuple[str, int, str, float | None]] = {}
    for record in records:
        wall_time = next((record[k] for k in WALL_TIME_KEYS if k in record), None)
        for key, value in record.items():
            if key == "step" or key in WALL_TIME_KEYS:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            step = record["step"]
            seen.setdefault(
                (key, step),
                (key, step, repr(float(value)), None if wall_time is None else float(wall_time)),
            )
    return set(seen.values())


def as_tuples(points: list[Point]) -> list[tuple[str, int, str, float | None]]:
    return [(p.key, p.step, repr(float(p.value)), p.wall_time) for p in points]


def restarted(reader: MetricFileReader) -> MetricFileReader:
    """A new reader from the old one's state, through strict JSON as the outbox keeps it."""
    text = json.dumps(reader.to_state(), allow_nan=False)
    return MetricFileReader(reader.root, state=json.loads(text))


def one_round(folder: Path, fmt: str, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    folder.mkdir()
    job_root = folder / "job"
    job_root.mkdir()
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.daemon.stress_writer", fmt, str(folder), str(seed)],
        cwd=REPO,
    )
    reader = MetricFileReader(job_root)
    collected: list[Point] = []
    try:
        while True:
            finished = writer.poll() is not None
            for path in find_metric_files(job_root):
                for _ in range(10_000):
                    result = reader.read(path, max_bytes=rng.choice(MAX_BYTES))
                    tally.reads += 1
                    tally.reads_while_writing += not finished and not result.missing
                    tally.rewritten += result.rewritten
                    tally.incomplete += result.incomplete
                    collected += result.points
                    if rng.random() < 0.15:
                        reader = restarted(reader)
                        tally.restarts += 1
                    if not (result.more or (finished and result.incomplete)):
                        break
            if finished:
                break
            if rng.random() < 0.2:
                time.sleep(0.0002)
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0
    written = json.loads((folder / "written.json").read_text())
    got = as_tuples(collected)
    where = f"{fmt}, seed {seed}"
    assert len(got) == len({(key, step) for key, step, _, _ in got}), f"a point twice ({where})"
    assert set(got) == expected_points(written["records"]), f"points differ ({where})"
    assert reader.skipped == written["malformed"], f"skipped differs ({where})"
    assert sum(reader.skipped_files.values()) == reader.skipped, where
    tally.rounds += 1


@pytest.mark.parametrize("fmt", ["jsonl", "lightning_csv", "trainer_state"])
def test_a_reader_following_a_job_ends_with_every_point_once_and_only_real_faults_skipped(
    tmp_path: Path, fmt: str
) -> None:
    tally = Tally()
    started = time.perf_counter()
    for i in range(ROUNDS):
        one_round(tmp_path / str(i), fmt, FIRST_SEED + i, tally)
    print(f"{fmt}: {tally} in {time.perf_counter() - started:.1f} s")
    # The rounds met what they are for: reads while the job wrote, restarts, and (for the
    # rewriting formats) reads that found the file rewritten or caught it half written.
    assert tally.reads_while_writing >= 5 * ROUNDS
    assert tally.restarts >= ROUNDS
    if fmt == "lightning_csv":
        assert tally.rewritten >= 1
    if fmt == "trainer_state":
        assert tally.incomplete >= 1
