"""What this machine has measured of its link to each server, so that a big file takes the path
that is fastest on that link (issue 17).

Chunks (`lmvp.chunked`) pay where the link is the limit: they send only what the server lacks,
compressed. On a link faster than the chunk pipeline itself (cutting, hashing, encoding on
this side, decoding and assembling on the server's), they cost time and save nothing worth it:
a 10 Gbit/s LAN or a server on the next rack moves a whole file sooner than it can be cut.
Every transfer of a big file therefore records the rate it saw, one figure per server and
direction, and `is_fast` tells the next transfer whether the link is faster than `FAST_LINK`.

Rates are kept in ``links.json`` in the user state folder (``$XDG_STATE_HOME/lmvp``, by default
``~/.local/state/lmvp``), as a moving average of seconds per byte: each new figure counts half,
and a slow one outweighs a fast one, so one whole file sent slowly is enough to go back to
chunks (the safe choice) while a fast link must show itself a few times. Figures are forgotten
after `FORGET_AFTER` seconds: a laptop moves between networks. The file is a hint: a damaged or
unwritable one is ignored (the transfer then assumes a slow link, where chunks are the safe
choice), and two processes recording at once may lose one figure, never corrupt the file (it
is replaced whole).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Literal

import platformdirs

__all__ = ["FAST_LINK", "FORGET_AFTER", "MIN_BYTES", "Direction", "is_fast", "rate", "record"]

log = logging.getLogger(__name__)

Direction = Literal["up", "down"]

# At and above this many bytes per second (2 Gbit/s) a whole file is sent or fetched as it is:
# measured here, the chunk pipeline moves a fresh 1 GiB file at about a third of the whole-file
# rate of an unshaped loopback, and a file the server mostly holds in about the time the whole
# file takes at this rate; on a 1 Gbit/s LAN chunks still win.
FAST_LINK = 250_000_000
# A transfer of fewer bytes says more about latency and slow start than about the link.
MIN_BYTES = 8 << 20
# A figure older than this is no longer believed (a week).
FORGET_AFTER = 7 * 86400
_WEIGHT = 0.5  # of a new figure in the average
_FILE = "links.json"


def _path() -> Path:
    return Path(platformdirs.user_state_dir("lmvp")) / _FILE


def _load(path: Path) -> dict[str, dict[str, dict[str, float]]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    servers = data.get("servers") if isinstance(data, dict) else None
    return servers if isinstance(servers, dict) else {}


def _figure(entry: object, now: float) -> float | None:
    if not isinstance(entry, dict):
        return None
    value, at = entry.get("rate"), entry.get("at")
    if not isinstance(value, (int, float)) or not isinstance(at, (int, float)):
        return None
    if not math.isfinite(value) or value <= 0 or not 0 <= now - at <= FORGET_AFTER:
        return None
    return float(value)


def rate(server: str, direction: Direction) -> float | None:
    """The bytes per second recorded for `server` in `direction`; None when nothing recent was
    recorded."""
    return _figure(_load(_path()).get(server, {}).get(direction), time.time())


def is_fast(server: str, direction: Direction) -> bool:
    """Whether the link to `server` was recently measured at `FAST_LINK` or faster."""
    measured = rate(server, direction)
    return measured is not None and measured >= FAST_LINK


def record(server: str, direction: Direction, nbytes: int, seconds: float) -> None:
    """Remember that `nbytes` went to (``up``) or came from (``down``) `server` in `seconds`;
    transfers under `MIN_BYTES` are ignored. Never raises: the figure is only a hint."""
    if nbytes < MIN_BYTES or not seconds > 0:
        return
    path = _path()
    try:
        servers = _load(path)
        now = time.time()
        entry = servers.setdefault(server, {})
        if not isinstance(entry, dict):
            entry = servers[server] = {}
        measured = nbytes / seconds
        before = _figure(entry.get(direction), now)
        if before is not None:  # averaged as seconds per byte: a slow figure weighs more
            measured = 1 / ((1 - _WEIGHT) / before + _WEIGHT / measured)
        entry[direction] = {"rate": round(measured), "at": now}
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{_FILE}.")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump({"servers": servers}, out)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as exc:
        log.debug("could not record the link rate in %s: %s", path, exc)
