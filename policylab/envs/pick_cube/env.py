"""Pick-cube with a MuJoCo Franka Panda: an adapter over gym-hil's `PandaPickCubeGymEnv`.

gym-hil (LeRobot's HIL-SERL simulator, the PyTorch-side analogue of ConRFT's franka_sim) owns the
scene, the operational-space controller and the success test; this adapter fixes what a policy
library needs from it:

- Seeding: gym-hil draws a random cube position from the *global* numpy RNG; here `reset(seed=s)`
  draws it from the env's own generator, uniform over `cube_xy_range` (gym-hil's sampling box),
  so seed s is the same episode in every process.
- Actions: (4,) in [-1, 1]: end-effector deltas x, y, z scaled by `ee_step` metres (gym-hil's
  default step, 0.025 m at 10 Hz), then a gripper command added to the gripper's closing target
  in [0, 1] (+1 closes fully within one step, -1 opens), as gym-hil's EE wrapper and franka_sim.
  The orientation is held by the controller.
- Observations: a dict keyed like the task `shape_meta`:
      ee_pos   (3,)  pinch-site position, m            ee_vel (3,)  its linear velocity, m/s
      gripper  (1,)  finger closure, 0 open .. 1 closed (the joint, not the command)
      cube_pos (3,)  cube centre, m
      front, wrist (3, S, S) float32 in [0, 1]          (image_obs=True only)
- Success (`info["is_success"]`): gym-hil's sparse test, the cube lifted more than 0.1 m.
  The episode terminates on success, or (failure) when the cube leaves the sampling box by 5 cm,
  as gym-hil. Time limits belong to `MultiStepWrapper` (gym-hil registers 100 steps).
- Rendering: shadows, reflections and multisampling off (see `policylab.envs.mujoco_render`).
- Speed: `fast_control=True` (default) runs gym-hil's control step through
  `policylab.envs.pick_cube.fast_control.FastOpspace`: bit-identical dynamics, about 2.3x the
  state-only steps/s (`bench/env_speed.py`); `fast_control=False` calls gym-hil's `step`.
"""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from policylab.envs.mujoco_render import FastCameras, chw_float
from policylab.envs.pick_cube.fast_control import FastOpspace

CAMERAS = {"front": "front", "wrist": "handcam_rgb"}
GRIPPER_CLOSED_QPOS = 0.8  # driver joint angle of a fully closed, empty 2F-85 gripper
LIFT_SUCCESS = 0.1         # m, gym-hil's sparse success threshold


class PickCubeEnv(gym.Env):
    """gym-hil's Panda pick-cube with seeded resets, 4-D actions and named observations.

    Args:
        image_obs: add the front and wrist camera images to the observation.
        image_size: S, side of the camera images.
        render_size: side of `render()` frames (the front camera); default image_size.
        ee_step: metres per unit of the xyz action.
        control_dt: seconds per step (gym-hil's 0.1, i.e. 10 Hz; physics at 2 ms).
        reward_type: gym-hil's "sparse" (1 when lifted) or "dense" (reach + lift shaping).
        cube_xy_range: ((x_lo, y_lo), (x_hi, y_hi)) of the initial cube position, m.
        render_mode: only "rgb_array".
        fast_control: step through `FastOpspace` (same dynamics, faster) instead of gym-hil.
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, image_obs: bool = False, image_size: int = 96, render_size: int | None = None,
                 ee_step: float = 0.025, control_dt: float = 0.1, reward_type: str = "sparse",
                 cube_xy_range=((0.3, -0.15), (0.5, 0.15)), render_mode: str = "rgb_array",
                 fast_control: bool = True):
        from gym_hil.envs.panda_pick_gym_env import (
            _SAMPLING_BOUNDS,
            PandaPickCubeGymEnv,
        )
        from gym_hil.mujoco_gym_env import GymRenderingSpec

        if render_mode != "rgb_array":
            raise ValueError(f"render_mode must be 'rgb_array', got {render_mode!r}")
        if reward_type not in ("sparse", "dense"):
            raise ValueError(f"reward_type must be 'sparse' or 'dense', got {reward_type!r}")
        # gym-hil renders once in its constructor with its own (slow) renderer: keep that tiny
        self.sim = PandaPickCubeGymEnv(control_dt=control_dt, reward_type=reward_type,
                                       render_spec=GymRenderingSpec(height=8, width=8))
        self.image_obs, self.image_size = image_obs, image_size
        self.render_size = render_size or image_size
        self.render_mode = render_mode
        self.ee_step = ee_step
        self.cube_xy_range = np.asarray(cube_xy_range, dtype=np.float64)
        self.metadata = {**self.metadata, "render_fps": round(1 / control_dt)}
        self._driver_qpos = self.sim.model.joint("right_driver_joint").qposadr[0]
        self._control = FastOpspace(self.sim) if fast_control else None
        # gym-hil's failure test: the cube more than 5 cm outside its sampling box, m
        self._cube_lo, self._cube_hi = _SAMPLING_BOUNDS[0] - 0.05, _SAMPLING_BOUNDS[1] + 0.05
        # sensor views (named lookups cost microseconds each)
        data = self.sim.data
        self._ee_pos_s = data.sensor("2f85/pinch_pos").data
        self._ee_vel_s = data.sensor("2f85/pinch_vel").data
        self._cube_pos_s = data.sensor("block_pos").data
        self._cameras = self._render_cameras = None
        self._frames: dict[str, np.ndarray] = {}

        vec = lambda n: spaces.Box(-np.inf, np.inf, (n,), np.float32)
        obs_space = {"ee_pos": vec(3), "ee_vel": vec(3),
                     "gripper": spaces.Box(0, 1, (1,), np.float32), "cube_pos": vec(3)}
        if image_obs:
            image = spaces.Box(0, 1, (3, image_size, image_size), np.float32)
            obs_space.update({name: image for name in CAMERAS})
        self.observation_space = spaces.Dict(obs_space)
        self.action_space = spaces.Box(-1, 1, (4,), np.float32)

    @property
    def ee_pos(self) -> np.ndarray:
        return self._ee_pos_s.copy()

    @property
    def cube_pos(self) -> np.ndarray:
        return self._cube_pos_s.copy()

    @property
    def gripper(self) -> float:
        """Finger closure, 0 open .. 1 fully closed on nothing."""
        return float(np.clip(self.sim.data.qpos[self._driver_qpos] / GRIPPER_CLOSED_QPOS, 0, 1))

    @property
    def cube_rest_z(self) -> float:
        """Cube centre height at reset (the table height plus half the cube)."""
        return float(self.sim._z_init)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.sim.reset()
        cube_xy = self.np_random.uniform(*self.cube_xy_range)
        self.sim.data.jnt("block").qpos[:3] = (*cube_xy, self.sim._block_z)
        mujoco.mj_forward(self.sim.model, self.sim.data)
        self.sim._z_init = float(self.sim.data.sensor("block_pos").data[2])
        self.sim._z_success = self.sim._z_init + LIFT_SUCCESS
        self._frames = {}
        return self._get_obs(), {"is_success": False}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -1, 1)
        if action.shape != (4,):
            raise ValueError(f"action must have shape (4,), got {action.shape}")
        sim_action = np.zeros(7)
        sim_action[:3] = action[:3] * self.ee_step
        sim_action[6] = action[3]
        if self._control is None:
            _, reward, terminated, _, info = self.sim.step(sim_action)
            success = info["succeed"]
        else:
            self._control.apply_action(sim_action)
            reward, terminated, success = self._outcome()
        self._frames = {}
        return self._get_obs(), float(reward), bool(terminated), False, {"is_success": bool(success)}

    def render(self) -> np.ndarray:
        """(S, S, 3) uint8 frame of the front camera."""
        if self.image_obs and self.render_size == self.image_size:
            return self._frame("front")
        if self._render_cameras is None:
            self._render_cameras = FastCameras(self.sim.model, self.sim.data,
                                               self.render_size, self.render_size)
        return self._render_cameras.render(CAMERAS["front"])

    def close(self):
        for cams in (self._cameras, self._render_cameras):
            if cams is not None:
                cams.close()
        self._cameras = self._render_cameras = None
        self.sim.close()

    def _outcome(self) -> tuple[float, bool, bool]:
        """(reward, terminated, success) after a control step, as gym-hil's `step` computes
        them (it also builds an observation this adapter does not use)."""
        reward = self.sim._compute_reward()
        success = self.sim._is_success()
        if self.sim.reward_type == "sparse":
            success = reward == 1.0
        cube_xy = self._cube_pos_s[:2]
        exceeded = np.any(cube_xy < self._cube_lo) or np.any(cube_xy > self._cube_hi)
        return reward, bool(success or exceeded), success

    def _frame(self, name: str) -> np.ndarray:
        if name not in self._frames:
            if self._cameras is None:
                self._cameras = FastCameras(self.sim.model, self.sim.data,
                                            self.image_size, self.image_size)
            self._frames[name] = self._cameras.render(CAMERAS[name])
        return self._frames[name]

    def _get_obs(self) -> dict:
        obs = {
            "ee_pos": self._ee_pos_s.astype(np.float32),
            "ee_vel": self._ee_vel_s.astype(np.float32),
            "gripper": np.array([self.gripper], dtype=np.float32),
            "cube_pos": self._cube_pos_s.astype(np.float32),
        }
        if self.image_obs:
            obs.update({name: chw_float(self._frame(name)) for name in CAMERAS})
        return obs
