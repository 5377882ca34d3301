"""A fake spacenavd: a Unix socket that speaks the daemon's v0 protocol to the real libspnav.

libspnav 1.0 opens with a 4-byte protocol query; answering 0 selects protocol v0, where every
event is 8 native ints: `[0, x, y, z, rx, ry, rz, period]` for motion, `[1 | 2, bnum, 0...]` for
a button press | release. Point clients at it with `SPNAV_SOCKET=<path>` (or the SpaceMouse's
`socket_path`). It runs as a thread: the client is another process, so no GIL contention.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time


class FakeSpacenavd:
    """Args: socket_path: where to listen. Use `motion`, `button` or `play(script)` to send events."""

    def __init__(self, socket_path: str):
        self.socket_path = str(socket_path)
        self._server: socket.socket | None = None
        self._client: socket.socket | None = None
        self._connected = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> FakeSpacenavd:
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.socket_path)
        self._server.listen(1)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        try:
            client, _ = self._server.accept()
        except OSError:
            return
        client.settimeout(0.2)
        try:
            client.recv(4)  # protocol query (0x0155aa7f-ish); absent in very old clients
        except TimeoutError:
            pass
        client.settimeout(None)
        client.sendall(struct.pack("i", 0))  # protocol 0
        self._client = client
        self._connected.set()

    def wait_connected(self, timeout: float = 5.0) -> bool:
        return self._connected.wait(timeout)

    def _send(self, *ints: int) -> None:
        values = list(ints) + [0] * (8 - len(ints))
        with self._lock:
            self._client.sendall(struct.pack("8i", *values))

    def motion(self, x=0, y=0, z=0, rx=0, ry=0, rz=0, period: int = 16) -> None:
        """Send one 6-DoF reading in raw counts (held by clients until the next one)."""
        self._send(0, int(x), int(y), int(z), int(rx), int(ry), int(rz), int(period))

    def button(self, bnum: int, press: bool) -> None:
        self._send(1 if press else 2, int(bnum))

    def play(self, script, wait: bool = False) -> threading.Thread:
        """Send `[(t, "motion", [x, y, z, rx, ry, rz]) | (t, "button", [bnum, press])]` at t s from now."""
        def run():
            t0 = time.monotonic()
            for t, kind, args in sorted(script, key=lambda e: e[0]):
                time.sleep(max(0.0, t0 + t - time.monotonic()))
                self.motion(*args) if kind == "motion" else self.button(*args)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        if wait:
            thread.join()
        return thread

    def stop(self) -> None:
        for sock in (self._client, self._server):
            if sock is not None:
                sock.close()
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
