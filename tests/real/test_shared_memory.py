import multiprocessing as mp
import queue

import numpy as np
import pytest

from policylab.real.shared_memory import (
    NotEnoughData,
    ReaderFellBehind,
    SharedQueue,
    SharedRingBuffer,
)


def _example():
    return {"value": np.zeros(3), "index": np.int64(0), "timestamp": 0.0}


def _record(i):
    return {"value": np.full(3, float(i)), "index": i, "timestamp": 100.0 + i}


def test_ring_buffer_last_k_in_order_across_wraparound():
    ring = SharedRingBuffer(_example(), put_frequency=10, get_time_budget=0.1, max_k=4, safety=1.0)
    try:
        assert ring.capacity == 5
        for i in range(13):
            ring.put(_record(i))
        last = ring.get_last_k(4)
        np.testing.assert_array_equal(last["index"], [9, 10, 11, 12])
        np.testing.assert_array_equal(last["value"][:, 0], [9, 10, 11, 12])
        assert ring.get()["timestamp"] == 112.0
        assert len(ring.get_all()["index"]) == 4
    finally:
        ring.close()


def test_ring_buffer_errors_are_explicit():
    with pytest.raises(ValueError, match="timestamp"):
        SharedRingBuffer({"x": 0.0}, put_frequency=10)
    ring = SharedRingBuffer(_example(), put_frequency=10, max_k=4)
    try:
        ring.put(_record(0))
        with pytest.raises(NotEnoughData, match="only 1"):
            ring.get_last_k(2)
        with pytest.raises(ValueError, match="max_k"):
            ring.get_last_k(5)
        with pytest.raises(KeyError):
            ring.put({"value": np.zeros(3), "timestamp": 1.0})
    finally:
        ring.close()


class _LappingArrays(dict):
    """Simulates a writer that laps the reader while it copies: puts records during items()."""

    def __init__(self, arrays, ring, n_puts):
        super().__init__(arrays)
        self.ring, self.n_puts = ring, n_puts

    def items(self):
        for i in range(self.n_puts):
            self.ring.put(_record(1000 + i))
        return super().items()


@pytest.mark.parametrize("n_puts, lapped", [(0, False), (1, False), (2, True), (10, True)])
def test_reader_falling_behind_is_detected_exactly(n_puts, lapped):
    ring = SharedRingBuffer(_example(), put_frequency=10, get_time_budget=0.1, max_k=4, safety=1.0)
    try:
        for i in range(10):
            ring.put(_record(i))
        # Reading the last 3 of 5 slots: after 2 writes during the copy the writer may already be
        # rewriting the oldest slot read (index 12 shares its slot with index 7).
        ring._block.arrays = _LappingArrays(ring._block.arrays, ring, n_puts)
        if lapped:
            with pytest.raises(ReaderFellBehind, match="lapped"):
                ring.get_last_k(3)
        else:
            assert list(ring.get_last_k(3)["index"]) == [7, 8, 9]
    finally:
        ring._block.arrays = dict(ring._block.arrays)
        ring.close()


def _writer(ring, n):
    for i in range(n):
        ring.put(_record(i))


def test_ring_buffer_across_processes_gives_consistent_records():
    ring = SharedRingBuffer(_example(), put_frequency=1000, get_time_budget=0.2, max_k=16)
    try:
        proc = mp.get_context("fork").Process(target=_writer, args=(ring, 3000))
        proc.start()
        reads = 0
        while proc.is_alive() or reads == 0:
            try:
                last = ring.get_last_k(16)
            except (NotEnoughData, ReaderFellBehind):
                continue
            # every record is whole: its fields agree, and records are consecutive
            np.testing.assert_array_equal(last["value"][:, 0], last["index"])
            np.testing.assert_array_equal(np.diff(last["index"]), 1)
            reads += 1
        proc.join(10)
        assert proc.exitcode == 0
        assert ring.count == 3000
        assert ring.get()["index"] == 2999
    finally:
        ring.close()


def test_queue_fifo_full_and_cross_process():
    q = SharedQueue({"cmd": 0, "pose": np.zeros(6), "path": np.zeros((), "S16")}, capacity=4)
    try:
        q.put({"cmd": 1, "pose": np.ones(6), "path": b"a.mp4"})
        q.put({"cmd": 2})
        out = q.get_all()
        assert list(out["cmd"]) == [1, 2]
        assert out["path"][0] == b"a.mp4"
        np.testing.assert_array_equal(out["pose"][1], np.zeros(6))
        assert len(q.get_all()["cmd"]) == 0
        for i in range(4):
            q.put({"cmd": i})
        with pytest.raises(queue.Full, match="not draining"):
            q.put({"cmd": 9})
        with pytest.raises(KeyError, match="unknown"):
            q.get_all() and q.put({"bogus": 1})
        proc = mp.get_context("fork").Process(target=lambda: [q.put({"cmd": 10 + i}) for i in range(3)])
        proc.start()
        proc.join(5)
        assert list(q.get_all()["cmd"]) == [10, 11, 12]
    finally:
        q.close()
