"""One lifecycle for every hardware process: start / stop / is_ready, context managers, health.

A device runs in its own forked process (the GIL would otherwise let a camera decoder starve a
125 Hz servo loop). The parent never blocks without a deadline: `start` waits at most
`launch_timeout` for the child to report ready (ur_rtde, for one, blocks forever on a silent
peer), and `check` turns a dead child, a reported error or a stale heartbeat into a
`DeviceError` naming the device.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import time
import traceback
from contextlib import contextmanager

import numpy as np

from policylab.real.shared_memory._block import SharedArrays

log = logging.getLogger(__name__)

STARTING, READY, STOPPING, STOPPED, FAILED = range(5)
_STATE_NAMES = ["starting", "ready", "stopping", "stopped", "failed"]


class DeviceError(RuntimeError):
    """A device process failed, died, hung or did not become ready in time."""


class Device:
    """Base class of the hardware lifecycle; subclasses without a process override start/stop."""

    def start(self, wait: bool = True) -> None:
        raise NotImplementedError

    def stop(self, wait: bool = True) -> None:
        raise NotImplementedError

    @property
    def is_ready(self) -> bool:
        raise NotImplementedError

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def _opencv_pool_stopped():
    """Fork with OpenCV's worker pool stopped, then restart it in the parent.

    The pool does not survive fork: a child forked after the parent ran a parallel cv2 call (a
    large resize, say) hangs in its first cv2 call, and a camera then never reports ready."""
    cv2 = sys.modules.get("cv2")
    threads = cv2.getNumThreads() if cv2 is not None else None
    if cv2 is not None:
        cv2.setNumThreads(1)
    try:
        yield
    finally:
        if cv2 is not None:
            cv2.setNumThreads(threads)


class DeviceProcess(Device):
    """A device whose loop runs in a child process; subclasses implement `run_device`.

    Args:
        name: shown in every error message.
        launch_timeout: seconds `start` waits for the child to call `set_ready` (s).
        heartbeat_timeout: a ready child that has not called `beat` for this long is hung (s).
    """

    def __init__(self, name: str, launch_timeout: float = 10.0, heartbeat_timeout: float = 2.0):
        self.name = name
        self.launch_timeout = launch_timeout
        self.heartbeat_timeout = heartbeat_timeout
        self._ctx = mp.get_context("fork")
        self._status = SharedArrays({"state": ((1,), np.int64), "stop": ((1,), np.int64),
                                     "heartbeat": ((1,), np.float64), "error": ((1,), "S2048")})
        self._proc: mp.Process | None = None
        self._buffers = [self._status]  # shared blocks freed by stop(); subclasses add theirs

    def start(self, wait: bool = True) -> None:
        if self._proc is not None:
            raise DeviceError(f"{self.name}: already started")
        self._status["state"][0], self._status["stop"][0] = STARTING, 0
        self._proc = self._ctx.Process(target=self._child_main, name=self.name, daemon=True)
        with _opencv_pool_stopped():
            self._proc.start()
        if wait:
            self.start_wait()

    def start_wait(self) -> None:
        deadline = time.monotonic() + self.launch_timeout
        while time.monotonic() < deadline:
            state = self.state
            if state == READY:
                return
            if state == FAILED or not self._proc.is_alive():
                self._reap()
                raise DeviceError(f"{self.name}: failed to start: {self.error or 'process exited'}")
            time.sleep(0.005)
        self._reap(kill=True)
        raise DeviceError(f"{self.name}: not ready after {self.launch_timeout:.1f} s (launch_timeout); "
                          f"{self.startup_hint()}")

    def stop(self, wait: bool = True) -> None:
        """Ask the child to finish, wait for it (killing it after `stop_timeout`), free the buffers."""
        if self._proc is not None:
            self._status["stop"][0] = 1
            if not wait:
                return
            self._proc.join(self.stop_timeout())
            self._reap(kill=True)
        for buffer in self._buffers:
            buffer.close()
        self._buffers = []

    def stop_timeout(self) -> float:
        return 5.0

    def startup_hint(self) -> str:
        return "is the device reachable?"

    @property
    def is_ready(self) -> bool:
        return self._proc is not None and self._proc.is_alive() and self.state == READY

    @property
    def state(self) -> int:
        return int(self._status["state"][0])

    @property
    def error(self) -> str:
        return bytes(self._status["error"][0]).decode(errors="replace")

    def check(self) -> None:
        """Raise DeviceError if the device failed, died or stopped beating its heartbeat."""
        if self._proc is None:
            raise DeviceError(f"{self.name}: not started")
        state = self.state
        if state == FAILED:
            raise DeviceError(f"{self.name}: {self.error}")
        if not self._proc.is_alive():
            raise DeviceError(f"{self.name}: process exited (code {self._proc.exitcode}) in state "
                              f"{_STATE_NAMES[state]}")
        age = time.monotonic() - float(self._status["heartbeat"][0])
        if state == READY and age > self.heartbeat_timeout:
            self._fail(f"hung: no heartbeat for {age:.2f} s (heartbeat_timeout {self.heartbeat_timeout} s)")
            self._reap(kill=True)
            raise DeviceError(f"{self.name}: {self.error}")

    def _reap(self, kill: bool = False) -> None:
        if self._proc is None:
            return
        if kill and self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(1.0)
            if self._proc.is_alive():
                self._proc.kill()  # a C library ignoring SIGTERM (ur_rtde mid-handshake)
        self._proc.join(1.0)

    def _fail(self, message: str) -> None:
        self._status["error"][0] = message.encode()[:2047]
        self._status["state"][0] = FAILED

    def _child_main(self) -> None:
        self.beat()
        try:
            self.run_device()
            self._status["state"][0] = STOPPED
        except BaseException as err:  # noqa: BLE001  (report everything: the parent only sees this buffer)
            log.debug("%s failed:\n%s", self.name, traceback.format_exc())
            self._fail(f"{type(err).__name__}: {err}")
            os._exit(1)

    def run_device(self) -> None:
        """Child: connect, call `set_ready()`, loop while not `should_stop()` calling `beat()`."""
        raise NotImplementedError

    def set_ready(self) -> None:
        self.beat()
        self._status["state"][0] = READY

    def beat(self) -> None:
        self._status["heartbeat"][0] = time.monotonic()

    def should_stop(self) -> bool:
        return bool(self._status["stop"][0])
