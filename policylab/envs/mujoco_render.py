"""Fast offscreen MuJoCo cameras for the MuJoCo-based task adapters (pick_cube, metaworld).

On a CPU renderer (Mesa llvmpipe behind EGL or OSMesa) three defaults dominate the cost of a
frame: shadow maps, reflections and 8x multisampling. `FastCameras` turns all three off; on the
gym-hil Panda scene that takes the 128x128 front camera from ~1 to ~10+ frames/s on 2 busy cores.
Rendering still needs `MUJOCO_GL=egl` (or `osmesa`) on a machine without a display.
"""

from __future__ import annotations

import os

# Headless by default. mujoco reads MUJOCO_GL when first imported, so the task packages
# (pick_cube, metaworld, robosuite) import this module before anything else of theirs.
# An explicit MUJOCO_GL (e.g. osmesa) wins.
os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import numpy as np

from policylab.common.extras import require

mujoco = require("mujoco", extra="tasks")


class FastCameras:
    """Renders named cameras of one model at one size, without shadows, reflections or MSAA.

    Args:
        model, data: the MuJoCo model and data to render.
        height, width: frame size in pixels.
        flip: cameras (by name) whose frames come out upside down and are flipped back.
    """

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData, height: int, width: int,
                 flip: tuple[str, ...] = ()):
        self.model, self.data = model, data
        # the offscreen buffer must hold the frame; MSAA off must be set before the context exists
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), width)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), height)
        model.vis.quality.offsamples = 0
        self.renderer = mujoco.Renderer(model, height=height, width=width)
        flags = self.renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self.flip = set(flip)

    def render(self, camera: str | int) -> np.ndarray:
        """(H, W, 3) uint8 RGB frame of `camera` (a name or an id)."""
        self.renderer.update_scene(self.data, camera=camera)
        frame = self.renderer.render()
        return np.ascontiguousarray(frame[::-1]) if camera in self.flip else frame

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None


def chw_float(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1], the policies' image layout."""
    return np.moveaxis(frame, -1, 0).astype(np.float32) / np.float32(255.0)
