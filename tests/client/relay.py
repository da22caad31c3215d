"""A TCP relay for transfer tests: it sits between the client and a real server, counts the
bytes that cross it each way, and can drop the connection after a number of bytes, like a
flaky network does. Counting at the wire proves what was (not) sent, where timing cannot.

A relay stands for a network between client and server. A client on the server's machine would
hand the server its files over a Unix socket, around the relay; so while a relay is open the
clients of this process (and the processes they start) send over HTTP, unless the test asks
for `local_uploads=True`."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time


class CountingRelay:
    """Relays 127.0.0.1:<port> to the server at `target_port`.

    `sent` counts bytes from the client to the server, `received` the other way. With
    `cut_after=N`, the first connection to carry N client bytes has exactly those forwarded
    and is then dropped (both sides shut down); later connections are left alone.
    `cut_received_after=N` does the same for bytes from the server. `rate` (bytes per second)
    slows the client's bytes down to what a network link carries, `received_rate` the
    server's.
    """

    def __init__(
        self,
        target_port: int,
        *,
        cut_after: int | None = None,
        cut_received_after: int | None = None,
        rate: float | None = None,
        received_rate: float | None = None,
        local_uploads: bool = False,
    ) -> None:
        self._saved_env = os.environ.get("LMVP_LOCAL_UPLOADS")
        if not local_uploads:
            os.environ["LMVP_LOCAL_UPLOADS"] = "0"
        self.rate = rate
        self.received_rate = received_rate
        self.target_port = target_port
        self.cut_after = cut_after
        self.cut_received_after = cut_received_after
        self.sent = 0
        self.received = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._pumping = 0  # pumps still relaying (two per connection)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until every connection so far has ended both ways: what a client that died
        left in flight has reached the server, and the server has answered it."""
        deadline = time.monotonic() + timeout
        while self._pumping:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._pumping} relay pumps still running after {timeout}s")
            time.sleep(0.05)

    def reset_counts(self) -> None:
        with self._lock:
            self.sent = self.received = 0

    def close(self) -> None:
        if not self._closed:
            if self._saved_env is None:
                os.environ.pop("LMVP_LOCAL_UPLOADS", None)
            else:
                os.environ["LMVP_LOCAL_UPLOADS"] = self._saved_env
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in self._sockets:
            # shutdown first: a bare close() from this thread neither wakes a pump blocked in
            # recv() nor tells the peer, and a server left reading a request body from a relay
            # that is gone kept its graceful stop waiting (10 s at the end of the run).
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> CountingRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            state = {"cut": False}
            with self._lock:
                self._pumping += 2
            threading.Thread(
                target=self._pump, args=(client, upstream, True, state), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, False, state), daemon=True
            ).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, outgoing: bool, state: dict[str, bool]
    ) -> None:
        started, relayed = time.monotonic(), 0
        try:
            while not state["cut"]:
                data = src.recv(1 << 20)
                if not data:
                    break
                if outgoing:
                    with self._lock:
                        if self.cut_after is not None and self.sent + len(data) >= self.cut_after:
                            data = data[: self.cut_after - self.sent]
                            self.cut_after = None
                            self.cuts += 1
                            state["cut"] = True
                        self.sent += len(data)
                else:
                    with self._lock:
                        limit = self.cut_received_after
                        if limit is not None and self.received + len(data) >= limit:
                            data = data[: limit - self.received]
                            self.cut_received_after = None
                            self.cuts += 1
                            state["cut"] = True
                        self.received += len(data)
                dst.sendall(data)
                relayed += len(data)
                pace = self.rate if outgoing else self.received_rate
                if pace:
                    time.sleep(max(0.0, started + relayed / pace - time.monotonic()))
        except OSError:
            pass
        # Half-close onwards so that bytes already relayed still arrive, then drop both ends.
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        if state["cut"]:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
        with self._lock:
            self._pumping -= 1
