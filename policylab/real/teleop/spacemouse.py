"""A 3Dconnexion SpaceMouse through spacenavd, read in its own process at a fixed rate.

The process keeps the latest 6-DoF reading and button states (spacenavd only sends changes)
and publishes them every `1/frequency` s. The parent maps a reading to robot axes:

    motion (6,) = [axis_map @ xyz, axis_map @ rxyz] of raw / max_value, with |v| < deadzone -> 0

The default `axis_map` turns spacenavd's frame (x right, y up, z towards the user) into a
z-up robot base frame facing the user, Diffusion Policy's convention.
"""

from __future__ import annotations

import os
import time

import numpy as np

from policylab.real.device import DeviceProcess
from policylab.real.shared_memory import SharedRingBuffer
from policylab.real.teleop.base import Teleop
from policylab.real.teleop.spnav import EVENT_BUTTON, EVENT_MOTION, Spnav

ZUP_AXIS_MAP = ((0, 0, -1), (1, 0, 0), (0, 1, 0))


class SpaceMouse(DeviceProcess, Teleop):
    """Args:
        socket_path: spacenavd socket; null uses $SPNAV_SOCKET or the system default.
        max_value: raw reading at full deflection (about 350 wired, 500 wireless).
        deadzone: fraction of full deflection ignored per axis, in [0, 1).
        axis_map: 3x3 matrix from spacenavd axes to robot axes (applied to translation and rotation).
        frequency: publish rate (Hz); n_buttons: buttons tracked.
    """

    def __init__(self, socket_path: str | None = None, max_value: float = 500.0, deadzone: float = 0.05,
                 axis_map=ZUP_AXIS_MAP, frequency: float = 200.0, n_buttons: int = 2,
                 launch_timeout: float = 3.0, heartbeat_timeout: float = 1.0):
        super().__init__("spacemouse", launch_timeout=launch_timeout, heartbeat_timeout=heartbeat_timeout)
        if not 0 <= deadzone < 1:
            raise ValueError(f"deadzone must be in [0, 1), got {deadzone}")
        self.socket_path, self.max_value, self.deadzone = socket_path, float(max_value), float(deadzone)
        self.axis_map = np.asarray(axis_map, dtype=np.float64)
        if self.axis_map.shape != (3, 3):
            raise ValueError(f"axis_map must be 3x3, got {self.axis_map.shape}")
        self.frequency = frequency
        self.ring = SharedRingBuffer({"motion": np.zeros(6), "buttons": np.zeros(n_buttons, np.uint8),
                                      "timestamp": 0.0}, put_frequency=frequency, max_k=8)
        self._buffers.append(self.ring)

    def get_raw(self) -> dict[str, np.ndarray]:
        """Latest `{"motion": (6,) raw counts, "buttons": (n,) 0/1, "timestamp": ()}`."""
        self.check()
        return self.ring.get()

    def get_motion(self) -> np.ndarray:
        return self.transform(self.get_raw()["motion"])

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """(6,) raw counts -> (6,) robot-frame motion in [-1, 1], dead-zone applied."""
        v = np.clip(np.asarray(raw, np.float64) / self.max_value, -1.0, 1.0)
        v[np.abs(v) < self.deadzone] = 0.0
        return np.concatenate([self.axis_map @ v[:3], self.axis_map @ v[3:]])

    def is_button_pressed(self, index: int) -> bool:
        return bool(self.get_raw()["buttons"][index])


    def startup_hint(self) -> str:
        return "is spacenavd running and the SpaceMouse plugged in?"

    def run_device(self) -> None:
        if self.socket_path:
            os.environ["SPNAV_SOCKET"] = str(self.socket_path)
        spnav = Spnav()
        motion = np.zeros(6)
        buttons = np.zeros(self.ring.spec["buttons"][0], np.uint8)
        period = 1.0 / self.frequency
        try:
            while not self.should_stop():
                event = spnav.poll()
                while event is not None:
                    if event.type == EVENT_MOTION:
                        m = event.motion
                        motion[:] = (m.x, m.y, m.z, m.rx, m.ry, m.rz)
                    elif event.type == EVENT_BUTTON and 0 <= event.button.bnum < len(buttons):
                        buttons[event.button.bnum] = 1 if event.button.press else 0
                    event = spnav.poll()
                self.ring.put({"motion": motion, "buttons": buttons, "timestamp": time.time()})
                if self.state != 1:
                    self.set_ready()
                self.beat()
                time.sleep(period)
        finally:
            spnav.close()
