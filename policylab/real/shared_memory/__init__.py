"""Shared-memory primitives for device processes: a ring buffer of samples, a command queue."""

from policylab.real.shared_memory.queue import SharedQueue
from policylab.real.shared_memory.ring_buffer import (
    NotEnoughData,
    ReaderFellBehind,
    SharedRingBuffer,
)

__all__ = ["NotEnoughData", "ReaderFellBehind", "SharedQueue", "SharedRingBuffer"]
