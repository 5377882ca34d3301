"""A single-writer, many-reader ring buffer of timestamped numpy records in shared memory.

Readers never block the writer. Instead of trusting a time budget to mean "nothing was
overwritten while I copied" (Diffusion Policy's approach, which flakes on a loaded machine), a
reader compares the write counter before and after its copy and raises `ReaderFellBehind` when
the writer could have reached any slot it read. The time budget only sizes the buffer:

    capacity = ceil(put_frequency * get_time_budget * safety) + max_k
"""

from __future__ import annotations

import math
import multiprocessing as mp
from collections.abc import Mapping

import numpy as np

from policylab.real.shared_memory._block import SharedArrays, record_spec


class ReaderFellBehind(TimeoutError):
    """The writer lapped the reader while it copied: the copied records may be torn."""


class NotEnoughData(LookupError):
    """Fewer records were written than a reader asked for."""


class SharedRingBuffer:
    """Last `capacity` records `{key: (*shape,)}`; every record carries a float64 `timestamp` (s).

    Args:
        examples: one example record; fixes keys, shapes and dtypes.
        put_frequency: expected writes per second (Hz).
        get_time_budget: the longest a reader may take to copy `max_k` records (s).
        max_k: the most records one `get_last_k` may ask for.
        safety: head room factor on the slots written during one read.
    """

    def __init__(self, examples: Mapping[str, np.ndarray], put_frequency: float, get_time_budget: float = 0.2,
                 max_k: int = 32, safety: float = 2.0, ctx=None):
        if "timestamp" not in examples:
            raise ValueError("every record needs a 'timestamp' (seconds, time.time() clock)")
        self.spec = record_spec(examples)
        self.max_k = int(max_k)
        self.capacity = math.ceil(put_frequency * get_time_budget * safety) + self.max_k
        layout = {key: ((self.capacity, *shape), dtype) for key, (shape, dtype) in self.spec.items()}
        layout["__count"] = ((1,), np.int64)
        self._block = SharedArrays(layout)
        self._count = self._block["__count"]
        # The lock only orders the counter against the data copies (a memory barrier on every
        # platform); it is held for a few instructions, never during a copy.
        self._lock = (ctx or mp.get_context("fork")).Lock()

    @property
    def count(self) -> int:
        """Records written so far."""
        with self._lock:
            return int(self._count[0])

    def put(self, record: Mapping[str, np.ndarray]) -> None:
        """Write one record (single writer). Missing or extra keys raise KeyError."""
        if record.keys() != self.spec.keys():
            raise KeyError(f"record keys {sorted(record)} != buffer keys {sorted(self.spec)}")
        slot = self.count % self.capacity
        for key, value in record.items():
            self._block[key][slot] = value
        with self._lock:
            self._count[0] += 1

    def get(self) -> dict[str, np.ndarray]:
        """The latest record `{key: (*shape,)}`."""
        return {k: v[0] for k, v in self.get_last_k(1).items()}

    def get_last_k(self, k: int) -> dict[str, np.ndarray]:
        """The last k records, oldest first: `{key: (k, *shape)}`."""
        if not 1 <= k <= self.max_k:
            raise ValueError(f"k={k} must be in [1, max_k={self.max_k}]")
        end = self.count
        if end < k:
            raise NotEnoughData(f"asked for the last {k} records but only {end} were written")
        idx = np.arange(end - k, end) % self.capacity
        out = {key: arr[idx] for key, arr in self._block.arrays.items() if key != "__count"}
        self._check_not_lapped(end - k)
        return out

    def get_all(self) -> dict[str, np.ndarray]:
        """Up to `max_k` latest records (all of them when fewer were written)."""
        n = min(self.count, self.max_k)
        if n == 0:
            return {key: np.zeros((0, *shape), dtype) for key, (shape, dtype) in self.spec.items()}
        return self.get_last_k(n)

    def _check_not_lapped(self, oldest_read: int) -> None:
        # The writer fills slot `count % capacity` before bumping count, so after the copy it may
        # be writing index `count`; that slot aliases the oldest one read once count reaches
        # oldest_read + capacity.
        end_after = self.count
        if end_after >= oldest_read + self.capacity:
            raise ReaderFellBehind(
                f"ring buffer of {self.capacity} slots was lapped while reading: {end_after - oldest_read} "
                f"records written since the oldest one read. The reader is too slow for the writer; "
                f"raise get_time_budget (it sizes the buffer) or read fewer records.")

    def close(self, unlink: bool = True) -> None:
        self._block.close(unlink=unlink)
