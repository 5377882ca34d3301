"""Teleop devices and key input, and the mapping from a 6-DoF reading to a pose target.

    Teleop.get_motion()          -> (6,) robot-frame [vx, vy, vz, wx, wy, wz] in [-1, 1]
    Teleop.is_button_pressed(i)  -> bool
    KeyInput.get_press_events()  -> ["c", "space", "backspace", ...] since the last call
    KeyInput.held_keys()         -> {"space", ...} held down now
"""

from __future__ import annotations

import abc

import numpy as np

from policylab.common.extras import require
from policylab.real.device import Device

Rotation = require("scipy.spatial.transform", extra="real").Rotation


class Teleop(Device, abc.ABC):
    @abc.abstractmethod
    def get_motion(self) -> np.ndarray:
        ...

    @abc.abstractmethod
    def is_button_pressed(self, index: int) -> bool:
        ...


class KeyInput(Device, abc.ABC):
    @abc.abstractmethod
    def get_press_events(self) -> list[str]:
        ...

    def held_keys(self) -> set[str]:
        """Keys held down now (empty where the input cannot tell)."""
        return set()


class TeleopMapping:
    """Integrates a teleop reading into a target pose, one control step at a time.

    Args:
        max_pos_speed: m/s at full deflection; max_rot_speed: rad/s at full deflection.
        rotate_button: while held, only rotation moves (translation is ignored); null: always both.
        unlock_z_button: z translation moves only while held; null: z always free.
    """

    def __init__(self, max_pos_speed: float = 0.25, max_rot_speed: float = 0.6,
                 rotate_button: int | None = 0, unlock_z_button: int | None = 1):
        self.max_pos_speed, self.max_rot_speed = max_pos_speed, max_rot_speed
        self.rotate_button, self.unlock_z_button = rotate_button, unlock_z_button

    def step(self, pose: np.ndarray, motion: np.ndarray, buttons, dt: float) -> np.ndarray:
        """pose (6,) m / axis-angle rad, motion (6,) in [-1, 1], buttons: pressed flags -> new pose (6,)."""
        pressed = lambda i: i is not None and i < len(buttons) and bool(buttons[i])
        dpos = np.asarray(motion[:3], np.float64) * self.max_pos_speed * dt
        drot = np.asarray(motion[3:], np.float64) * self.max_rot_speed * dt
        if self.rotate_button is not None:
            if pressed(self.rotate_button):
                dpos[:] = 0.0
            else:
                drot[:] = 0.0
        if self.unlock_z_button is not None and not pressed(self.unlock_z_button):
            dpos[2] = 0.0
        out = np.array(pose, np.float64)
        out[:3] += dpos
        # Rotation increments are about the base frame's axes, applied on the left.
        out[3:] = (Rotation.from_rotvec(drot) * Rotation.from_rotvec(out[3:])).as_rotvec()
        return out

    @staticmethod
    def is_active(motion: np.ndarray, buttons) -> bool:
        """True when the human is touching the device (used for takeover during evaluation)."""
        return bool(np.any(np.asarray(motion) != 0) or np.any(np.asarray(buttons)))
