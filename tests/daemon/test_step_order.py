"""A watch's checkpoints are sent in training-step order (issue 18): after a pause with an
upload limit, version numbers stopped following steps (v26 at step 2400, v25 at step 2600),
because the checkpoints found while paused were recorded in the order a folder scan lists them.
The outbox hands out the lowest step first whatever order they were seen in; checkpoints
without a step keep the order they were first seen."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lmvp_daemon.checkpoints import step_from_name
from lmvp_daemon.outbox import Outbox
from tests.daemon.test_outbox import fingerprint, send


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "state")
    yield box
    box.close()


def _sent_in_order(outbox: Outbox) -> list[str]:
    sent: list[str] = []
    while (cp := outbox.next_ready()) is not None:
        sent.append(cp.key)
        send(outbox, cp.id, version=len(sent))
    return sent


def test_checkpoints_recorded_out_of_step_order_are_sent_by_step(
    outbox: Outbox, tmp_path: Path
) -> None:
    watch = outbox.add_watch(tmp_path, "p", "m")
    # What a rescan after resuming records: directory order, not step order.
    for step in (2600, 2400, 3000, 2800):
        key = f"model_step_{step}.pt"
        cp = outbox.record_seen(watch.id, key, fingerprint(key), step_from_name(key))
        outbox.mark_ready(cp.id)

    assert _sent_in_order(outbox) == [
        "model_step_2400.pt",
        "model_step_2600.pt",
        "model_step_2800.pt",
        "model_step_3000.pt",
    ]


def test_a_lower_step_in_flight_holds_back_the_higher_ones(outbox: Outbox, tmp_path: Path) -> None:
    watch = outbox.add_watch(tmp_path, "p", "m")
    late = outbox.record_seen(watch.id, "ckpt-500", fingerprint("a"), step_from_name("ckpt-500"))
    outbox.mark_ready(late.id)
    early = outbox.record_seen(watch.id, "ckpt-400", fingerprint("b"), step_from_name("ckpt-400"))
    assert outbox.next_ready() is None  # step 400 is still settling: step 500 waits for it
    outbox.mark_ready(early.id)
    assert [cp.key for cp in [outbox.next_ready()] if cp] == ["ckpt-400"]


def test_checkpoints_without_a_step_keep_the_order_first_seen(
    outbox: Outbox, tmp_path: Path
) -> None:
    watch = outbox.add_watch(tmp_path, "p", "m")
    for key in ("last.ckpt", "best.ckpt"):
        cp = outbox.record_seen(watch.id, key, fingerprint(key), step_from_name(key))
        outbox.mark_ready(cp.id)
    assert _sent_in_order(outbox) == ["last.ckpt", "best.ckpt"]
