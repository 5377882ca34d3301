"""robosuite 1.5 tasks (Lift, PickPlaceCan, ...) as seeded gymnasium envs with robomimic's keys.

Observation keys and conventions are robomimic's, so a policy trained on robomimic's published
hdf5 datasets (imported with `policylab.data.importers.robomimic`) runs here unchanged:

    robot0_eef_pos (3,)  robot0_eef_quat (4,)  robot0_gripper_qpos (2,)
    object (Do,)         robosuite's "object-state" (Lift 10, PickPlaceCan 14)
    agentview_image, robot0_eye_in_hand_image  (3, S, S) float32 in [0, 1]   (image_obs=True)

robosuite renders with the OpenGL origin, i.e. upside down; images are flipped back, as
robomimic's env wrapper does (its datasets hold upright images).

- Actions: (7,) in [-1, 1] for the default Panda controller (OSC_POSE arm: xyz deltas x 5 cm,
  rotation deltas x 0.5 rad, in the robot base frame; gripper -1 open .. +1 close).
- Seeding: robosuite samples object placements and joint noise from the *global* numpy RNG;
  `reset(seed=s)` seeds it for the duration of the reset and restores it afterwards.
- Success: `info["is_success"]` = the task's `_check_success()`; with `terminate_on_success` the
  episode ends there. Time limits belong to `MultiStepWrapper` (robosuite's horizon is disabled).
- The first `step` in a fresh environment compiles robosuite's numba kernels (~10-20 s, cached
  on disk afterwards).
"""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from policylab.envs.mujoco_render import chw_float

CAMERAS = ("agentview", "robot0_eye_in_hand")
LOW_DIM_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")


def _quiet_robosuite():
    """Import robosuite without its INFO/WARNING chatter about optional extras and macros."""
    import logging

    from policylab.common.extras import require

    robosuite = require("robosuite", extra="robosuite")

    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    for handler in logging.getLogger("robosuite_logs").handlers:
        handler.setLevel(logging.ERROR)
    return robosuite


class RobosuiteEnv(gym.Env):
    """A robosuite manipulation task with robomimic's observation keys.

    Args:
        task: robosuite env name, e.g. "Lift", "PickPlaceCan".
        robots: robot name(s), default "Panda".
        image_obs: add the camera images to the observation.
        image_size: S, side of the camera images (robomimic's datasets use 84).
        render_size: side of `render()` frames (agentview); default image_size.
        control_freq: Hz (robomimic's datasets: 20).
        terminate_on_success: end the episode at the first success.
        reward_shaping: robosuite's dense reward instead of the sparse success reward.
        render_mode: only "rgb_array".
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, task: str = "Lift", robots: str = "Panda", image_obs: bool = False,
                 image_size: int = 84, render_size: int | None = None, control_freq: int = 20,
                 terminate_on_success: bool = True, reward_shaping: bool = False,
                 render_mode: str = "rgb_array"):
        if render_mode != "rgb_array":
            raise ValueError(f"render_mode must be 'rgb_array', got {render_mode!r}")
        suite = _quiet_robosuite()
        self.task, self.image_obs, self.image_size = task, image_obs, image_size
        self.render_size = render_size or image_size
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": control_freq}
        self.sim_env = suite.make(
            task, robots=robots, has_renderer=False, has_offscreen_renderer=True,
            use_camera_obs=image_obs, camera_names=list(CAMERAS), camera_heights=image_size,
            camera_widths=image_size, control_freq=control_freq, horizon=10**9, ignore_done=True,
            hard_reset=False, reward_shaping=reward_shaping)
        self.raw_obs: dict = {}
        self._frame = None
        obs = self._seeded_reset(0)
        obs_space = {k: spaces.Box(-np.inf, np.inf, obs[k].shape, np.float32) for k in LOW_DIM_KEYS}
        if image_obs:
            image = spaces.Box(0, 1, (3, image_size, image_size), np.float32)
            obs_space.update({f"{cam}_image": image for cam in CAMERAS})
        self.observation_space = spaces.Dict(obs_space)
        low, high = self.sim_env.action_spec
        self.action_space = spaces.Box(low.astype(np.float32), high.astype(np.float32))

    @property
    def sim(self):
        """robosuite's MjSim (`.model`, `.data`)."""
        return self.sim_env.sim

    def _seeded_reset(self, seed: int) -> dict:
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            self.raw_obs = self.sim_env.reset()
        finally:
            np.random.set_state(state)
        self._frame = None
        return self._get_obs()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31 - 1))
        return self._seeded_reset(seed), {"is_success": False}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), self.action_space.low, self.action_space.high)
        self.raw_obs, reward, _, _ = self.sim_env.step(action)
        self._frame = None
        success = bool(self.sim_env._check_success())
        terminated = success and self.terminate_on_success
        return self._get_obs(), float(reward), terminated, False, {"is_success": success}

    def render(self) -> np.ndarray:
        """(S, S, 3) uint8 upright frame of the agentview camera."""
        if self.image_obs and self.render_size == self.image_size:
            return np.ascontiguousarray(self.raw_obs["agentview_image"][::-1])
        if self._frame is None:
            frame = self.sim.render(camera_name="agentview", height=self.render_size, width=self.render_size)
            self._frame = np.ascontiguousarray(frame[::-1])
        return self._frame

    def close(self):
        self.sim_env.close()

    def _get_obs(self) -> dict:
        raw = self.raw_obs
        obs = {k: np.asarray(raw["object-state" if k == "object" else k], dtype=np.float32)
               for k in LOW_DIM_KEYS}
        if self.image_obs:
            for cam in CAMERAS:
                obs[f"{cam}_image"] = chw_float(np.ascontiguousarray(raw[f"{cam}_image"][::-1]))
        return obs
