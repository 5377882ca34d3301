"""Meta-World (metaworld 3.x) single tasks as seeded gymnasium envs with named observations.

Any Meta-World v3 task (`metaworld.env_dict.ALL_V3_ENVIRONMENTS`, e.g. "push-v3") in the MT1
setting: the goal is observed (`partially_observable=False`, Meta-World's MT override).

- Seeding: Meta-World's `reset` ignores its seed and MT1 draws the 50 object/goal placements from
  the global numpy RNG. Here `reset(seed=s)` seeds the task's own generator (`env.seed(s)`,
  `seeded_rand_vec`), so seed s is one fixed placement in every process, drawn from the task's
  whole random-reset space.
- Observations: `state` (39,) Meta-World's full observation (hand xyz, gripper opening, two
  objects' poses, the previous frame's 18 values, the goal); `agent_pos` (4,) its first 4
  entries (hand xyz + gripper opening); with image_obs, `image` (3, S, S) float32 in [0, 1]
  from `camera`. Meta-World's "corner" camera renders upside down; it is flipped back.
- Actions: Meta-World's (4,) in [-1, 1]: hand xyz deltas (x 1 cm) and gripper effort.
- Success: `info["is_success"]` = Meta-World's own `info["success"]`; with
  `terminate_on_success` the episode ends there (Meta-World itself never terminates). Time
  limits belong to `MultiStepWrapper`; Meta-World's own `max_path_length` is raised past them.
"""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from policylab.envs.mujoco_render import FastCameras, chw_float

FLIPPED_CAMERAS = ("corner",)
MAX_PATH_LENGTH = 100_000  # Meta-World raises past its own limit; MultiStepWrapper cuts first


class MetaWorldEnv(gym.Env):
    """One Meta-World v3 task with seeded resets and dict observations.

    Args:
        task: a v3 task name, e.g. "push-v3", "pick-place-v3", "drawer-open-v3".
        image_obs: add `image` to the observation.
        image_size: S, side of the image observation.
        render_size: side of `render()` frames; default image_size.
        camera: Meta-World camera for images and renders ("corner", "corner2", "topview", ...).
        terminate_on_success: end the episode at the first success.
        render_mode: only "rgb_array".
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(self, task: str = "push-v3", image_obs: bool = False, image_size: int = 96,
                 render_size: int | None = None, camera: str = "corner",
                 terminate_on_success: bool = True, render_mode: str = "rgb_array"):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        if task not in ALL_V3_ENVIRONMENTS:
            raise ValueError(f"unknown Meta-World v3 task {task!r}; e.g. push-v3, pick-place-v3")
        if render_mode != "rgb_array":
            raise ValueError(f"render_mode must be 'rgb_array', got {render_mode!r}")
        sim = ALL_V3_ENVIRONMENTS[task]()
        sim._partially_observable = False  # MT1's override: the goal is part of the observation
        sim.__dict__.pop("sawyer_observation_space", None)  # a cached_property of the old setting
        sim._set_task_called = True
        sim._freeze_rand_vec, sim.seeded_rand_vec = False, True
        sim.max_path_length = MAX_PATH_LENGTH
        self.sim, self.task = sim, task
        self.image_obs, self.image_size = image_obs, image_size
        self.render_size = render_size or image_size
        self.camera = camera
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": round(1 / sim.dt)}
        self.raw_obs = None    # (39,) float64, what Meta-World's scripted policies read
        self.last_info: dict = {}
        self._cameras = {}
        self._frame = None

        obs_space = {"state": spaces.Box(-np.inf, np.inf, (39,), np.float32),
                     "agent_pos": spaces.Box(-np.inf, np.inf, (4,), np.float32)}
        if image_obs:
            obs_space["image"] = spaces.Box(0, 1, (3, image_size, image_size), np.float32)
        self.observation_space = spaces.Dict(obs_space)
        self.action_space = spaces.Box(-1, 1, (4,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31 - 1))
        self.sim.seed(seed)
        self.sim.curr_path_length = 0
        self.raw_obs, _ = self.sim.reset()
        self.last_info = {"is_success": False}
        self._frame = None
        return self._get_obs(), dict(self.last_info)

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float32), -1, 1)
        self.raw_obs, reward, _, _, info = self.sim.step(action)
        self._frame = None
        success = bool(info["success"])
        self.last_info = {**info, "is_success": success}
        terminated = success and self.terminate_on_success
        return self._get_obs(), float(reward), terminated, False, dict(self.last_info)

    def render(self) -> np.ndarray:
        """(S, S, 3) uint8 frame of `camera`."""
        if self.image_obs and self.render_size == self.image_size:
            return self._image()
        return self._render(self.render_size)

    def close(self):
        for cams in self._cameras.values():
            cams.close()
        self._cameras = {}
        self.sim.close()

    def _render(self, size: int) -> np.ndarray:
        if size not in self._cameras:
            self._cameras[size] = FastCameras(self.sim.model, self.sim.data, size, size,
                                              flip=FLIPPED_CAMERAS)
        return self._cameras[size].render(self.camera)

    def _image(self) -> np.ndarray:
        if self._frame is None:
            self._frame = self._render(self.image_size)
        return self._frame

    def _get_obs(self) -> dict:
        state = self.raw_obs.astype(np.float32)
        obs = {"state": state, "agent_pos": state[:4].copy()}
        if self.image_obs:
            obs["image"] = chw_float(self._image())
        return obs
