"""The camera interface: timestamped frames from a shared ring buffer, plus recording control.

    get()    -> {"color": (H, W, 3) uint8 RGB, "depth": (H, W) uint16, "timestamp": (), ...}
    get(k)   -> the same keys with a leading (k,) axis, oldest first

`timestamp` is the host receive time (s, time.time()); `camera_capture_timestamp` is the
device's own clock (s). Images are at the camera's observation resolution.
"""

from __future__ import annotations

import abc

import numpy as np

from policylab.real.device import Device


class Camera(Device, abc.ABC):
    fps: float

    @abc.abstractmethod
    def get(self, k: int | None = None) -> dict[str, np.ndarray]:
        ...

    @property
    @abc.abstractmethod
    def intrinsics(self) -> dict[str, float]:
        """fx, fy, ppx, ppy (px), width, height of the captured stream, and depth_scale (m/unit)."""

    @abc.abstractmethod
    def start_recording(self, path: str, start_time: float) -> None:
        """Record colour to an mp4 on the `1/fps` grid starting at wall time `start_time`."""

    @abc.abstractmethod
    def stop_recording(self) -> None:
        ...

    def set_exposure(self, exposure: float | None = None, gain: float | None = None) -> None:
        """Manual exposure (us) and gain; None selects auto exposure. No-op where unsupported."""

    def set_white_balance(self, white_balance: float | None = None) -> None:
        """Manual white balance (K); None selects auto. No-op where unsupported."""


def intrinsics_matrix(intr: dict[str, float], resolution: tuple[int, int] | None = None) -> np.ndarray:
    """3x3 K for the captured stream, or rescaled to another (W, H)."""
    sx = sy = 1.0
    if resolution is not None:
        sx, sy = resolution[0] / intr["width"], resolution[1] / intr["height"]
    return np.array([[intr["fx"] * sx, 0, intr["ppx"] * sx], [0, intr["fy"] * sy, intr["ppy"] * sy], [0, 0, 1]])
