"""Numpy records laid out in one `multiprocessing.shared_memory` block.

Hardware processes are forked from the owner after the block exists, so they inherit the
mapping: nothing is pickled and no name lookup happens in the child.
"""

from __future__ import annotations

from collections.abc import Mapping
from multiprocessing import shared_memory

import numpy as np


def record_spec(examples: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """`{key: (shape, dtype)}` of one record; numbers become 0-d arrays, str becomes bytes."""
    spec = {}
    for key, value in examples.items():
        arr = np.asarray(value)
        if arr.dtype.kind == "U":
            arr = arr.astype(f"S{max(arr.dtype.itemsize // 4, 1)}")
        if arr.dtype.kind == "O":
            raise TypeError(f"record key {key!r}: object arrays cannot live in shared memory")
        spec[key] = (tuple(arr.shape), arr.dtype)
    return spec


class SharedArrays:
    """Arrays `(n, *shape)` per key (plus any extra arrays) carved out of one shared block."""

    def __init__(self, layout: Mapping[str, tuple[tuple[int, ...], np.dtype]]):
        offsets, total = {}, 0
        for key, (shape, dtype) in layout.items():
            dtype = np.dtype(dtype)
            total = -(-total // 64) * 64  # cache-line aligned, so int64 counters are aligned too
            offsets[key] = total
            total += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self._shm = shared_memory.SharedMemory(create=True, size=max(total, 1))
        self.arrays = {key: np.ndarray(shape, dtype=np.dtype(dtype), buffer=self._shm.buf, offset=offsets[key])
                       for key, (shape, dtype) in layout.items()}
        for arr in self.arrays.values():
            arr.fill(0)
        self.nbytes = total

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def close(self, unlink: bool = True) -> None:
        """Release the block; only the creating process should unlink it."""
        self.arrays = {}
        try:
            self._shm.close()
        except BufferError:
            pass  # a caller still holds a view; the mapping goes when it is collected
        if unlink:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
