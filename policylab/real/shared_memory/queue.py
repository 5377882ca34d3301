"""A bounded FIFO of numpy records in shared memory: commands from the owner to a device process."""

from __future__ import annotations

import multiprocessing as mp
import queue
from collections.abc import Mapping

import numpy as np

from policylab.real.shared_memory._block import SharedArrays, record_spec


class SharedQueue:
    """Records `{key: (*shape,)}` in order; many writers (locked), one reader.

    `put` raises `queue.Full` instead of overwriting a command the reader has not seen.
    """

    def __init__(self, examples: Mapping[str, np.ndarray], capacity: int = 256, ctx=None):
        self.spec = record_spec(examples)
        self.capacity = int(capacity)
        layout = {key: ((self.capacity, *shape), dtype) for key, (shape, dtype) in self.spec.items()}
        layout["__counters"] = ((2,), np.int64)  # [written, read]
        self._block = SharedArrays(layout)
        self._counters = self._block["__counters"]
        self._lock = (ctx or mp.get_context("fork")).Lock()

    def qsize(self) -> int:
        with self._lock:
            return int(self._counters[0] - self._counters[1])

    def put(self, record: Mapping[str, np.ndarray]) -> None:
        """Append one record; keys not given are zero-filled."""
        unknown = set(record) - set(self.spec)
        if unknown:
            raise KeyError(f"unknown queue keys {sorted(unknown)}; the queue has {sorted(self.spec)}")
        with self._lock:
            written, read = int(self._counters[0]), int(self._counters[1])
            if written - read >= self.capacity:
                raise queue.Full(f"command queue full ({self.capacity} records): its reader is not draining it")
            slot = written % self.capacity
            for key in self.spec:
                self._block[key][slot] = record.get(key, 0)
            self._counters[0] = written + 1

    def get_all(self) -> dict[str, np.ndarray]:
        """Drain every pending record: `{key: (n, *shape)}`, n >= 0."""
        with self._lock:
            written, read = int(self._counters[0]), int(self._counters[1])
            idx = np.arange(read, written) % self.capacity
            out = {key: self._block[key][idx] for key in self.spec}
            self._counters[1] = written
        return out

    def close(self, unlink: bool = True) -> None:
        self._block.close(unlink=unlink)
