"""The robot interface: timestamped state out, timed pose waypoints in.

    get_state()            -> {key: (...)}        latest sample, with `timestamp` (s, time.time())
    get_state(k)           -> {key: (k, ...)}     the last k samples, oldest first
    schedule_waypoint(pose (6,), target_time)      reach `pose` at wall time `target_time`
    servo_to(pose (6,), duration)                  go to `pose` now, within `duration` s or slower

Poses are `[x, y, z, rx, ry, rz]` in the base frame: m and axis-angle rad.
"""

from __future__ import annotations

import abc

import numpy as np

from policylab.real.device import Device, DeviceError


class RobotFault(DeviceError):
    """The robot stopped on its own (protective stop, lost connection, silent controller)."""


class Robot(Device, abc.ABC):
    """Lifecycle (start / stop / is_ready, `with`) plus timestamped state and timed commands."""

    state_keys: tuple[str, ...] = ()

    @abc.abstractmethod
    def get_state(self, k: int | None = None) -> dict[str, np.ndarray]:
        ...

    @abc.abstractmethod
    def get_all_state(self) -> dict[str, np.ndarray]:
        """Every buffered sample, `{key: (n, ...)}`, oldest first."""

    @abc.abstractmethod
    def schedule_waypoint(self, pose: np.ndarray, target_time: float) -> None:
        ...

    @abc.abstractmethod
    def servo_to(self, pose: np.ndarray, duration: float) -> None:
        ...
