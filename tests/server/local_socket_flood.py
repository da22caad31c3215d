"""A local user flooding the server's upload socket, as the audit did: many connections, each
sending one byte every few seconds and never a whole request; a connection the server closes is
opened again. Run as a script (by tests/server/test_hardening_local_socket.py, as another Unix
user); prints what it achieved as one JSON line at the end. Standard library only.

    python local_socket_flood.py SOCKET_NAME CONNECTIONS INTERVAL SECONDS
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time


def connect(name: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # A blocking connect waits while the server's backlog is full; at most a second. (With a
    # Python timeout the socket would be non-blocking, and connect fail at once.)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 1, 0))
    try:
        sock.connect("\0" + name)
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


def main() -> int:
    name, count, interval, seconds = (
        sys.argv[1],
        int(sys.argv[2]),
        float(sys.argv[3]),
        float(sys.argv[4]),
    )
    end = time.monotonic() + seconds
    socks: list[socket.socket | None] = [None] * count
    opened = dropped = failed = most_open = 0
    while time.monotonic() < end:
        started = time.monotonic()
        for i in range(count):
            sock = socks[i]
            if sock is not None:
                try:
                    sock.send(b"{")
                    continue
                except OSError:  # closed by the server
                    sock.close()
                    dropped += 1
            socks[i] = connect(name)
            if socks[i] is None:
                failed += 1
            else:
                opened += 1
            if time.monotonic() >= end:
                break
        most_open = max(most_open, sum(s is not None for s in socks))
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    for sock in socks:
        if sock is not None:
            sock.close()
    report = {"opened": opened, "dropped": dropped, "failed": failed, "most_open": most_open}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
