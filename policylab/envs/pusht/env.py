"""PushT with Diffusion Policy's exact definitions, on gymnasium 1.x and pymunk 7.

Definitions (DP `diffusion_policy/env/pusht/pusht_env.py` at 5ba07ac; see also the reference
notes on PushT):

- Arena 512x512 px, y down; 4 static walls (radius 2) between (5,5), (506,5), (506,506), (5,506).
- Agent: kinematic circle, radius 15, passes through walls. Each `step(action)` runs 10 physics
  substeps of 0.01 s (sim 100 Hz, control 10 Hz) with `acc = 100 (action - pos) - 20 vel`,
  `vel += acc dt`, then `space.step(dt)`. `step(None)` skips the physics, as DP.
- Block: the T (bar (-60..60, 0..30), stem (-15..15, 30..120), local px), mass 1, DP's moment
  3000 (twice the bar's) and CoG (0, 45); friction and elasticity 0. block_xy is the body origin.
- Space: gravity 0, damping 0 (quasi-static pushing), chipmunk defaults otherwise.
- Goal (256, 256, pi/4). `coverage = area(goal ∩ block) / area(goal)` (shapely);
  `reward = clip(coverage / 0.95, 0, 1)`; `terminated = coverage > 0.95`. The env never
  truncates: time limits belong to `MultiStepWrapper(max_episode_steps=...)`.
- Seeding: `reset(seed=s)` draws the initial state from `np.random.RandomState(s)` as
  `[randint(50,450), randint(50,450), randint(100,400), randint(100,400), randn()*2pi - pi]`
  and `np_random = default_rng(s)` exactly like DP's `env.seed(s); env.reset()`. Then the agent is
  placed, the block angle and position are set (legacy=False) or position then angle
  (legacy=True, DP's eval setting: chipmunk rotates about the CoG so block_xy moves), and one
  physics step runs without PD.
- `info["n_contacts"]` = ceil(contact points counted in post_solve over the 10 substeps / 10),
  all shape pairs (block-wall too).
- Keypoints: DP's 9 farthest-point-sampled block keypoints, world = R(theta) kp_local + xy.
- Images: DP's pygame drawing on a 512x512 canvas, `cv2.resize` (bilinear) to `render_size`.

What differs from DP (the port):
- pymunk 7 removed `Space.add_collision_handler`; contacts are counted with
  `space.on_collision(0, 0, post_solve=...)`. Physics, contacts and images were checked equal
  to DP's code on pymunk 6.11.1 with the same pygame.
- gymnasium API: `reset(seed=, options=) -> (obs, info)`, 5-tuple `step`. `reset()` without a
  seed draws a fresh episode seed from `np_random` (DP would repeat its last seed).
  `options={"state": (5,)}` resets to a given state (DP's `reset_to_state`).
- Observations are dicts of float32 keyed like the task `shape_meta` (below); DP's keypoint obs
  also carried a visibility mask, always all-ones at DP's `keypoint_visible_rate=1.0`: dropped.
  The state obs angle is `theta mod 2pi`, as DP.
- `info` adds `coverage` and `is_success`; shapes' order is fixed, so coverage is deterministic
  (DP iterates a Python set, which moves coverage by ~1e-16 between runs).

Observation types:
    "state":     {"state": (5,)}  agent x, y, block x, y, angle mod 2pi
    "keypoints": {"keypoint": (18,) 9 block keypoints (x, y) flattened, "agent_pos": (2,)}
    "image":     {"image": (3, S, S) in [0, 1], "agent_pos": (2,)}
"""


from typing import ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from policylab.envs.pusht import render, sim
from policylab.envs.pusht.keypoints import (
    N_BLOCK_KEYPOINTS,
    block_local_keypoints,
    keypoints_world,
)

OBS_TYPES = ("state", "keypoints", "image")
SPAWN_AGENT = (50, 450)  # randint bounds of the seeded initial state, DP's
SPAWN_BLOCK = (100, 400)
EPISODE_SEED_HIGH = 2**31 - 1  # RandomState accepts seeds below 2**32


def initial_state(seed: int) -> np.ndarray:
    """(5,) float64 initial state DP draws for `seed`: agent xy, block xy, angle."""
    rs = np.random.RandomState(seed=seed)
    return np.array([
        rs.randint(*SPAWN_AGENT), rs.randint(*SPAWN_AGENT),
        rs.randint(*SPAWN_BLOCK), rs.randint(*SPAWN_BLOCK),
        rs.randn() * 2 * np.pi - np.pi,
    ])


def _observation_space(obs_type: str, render_size: int) -> spaces.Dict:
    ws = sim.WINDOW_SIZE
    agent = spaces.Box(0, ws, (2,), np.float32)
    if obs_type == "state":
        high = np.array([ws, ws, ws, ws, 2 * np.pi], dtype=np.float32)
        return spaces.Dict({"state": spaces.Box(np.zeros(5, np.float32), high, dtype=np.float32)})
    if obs_type == "keypoints":
        # keypoints can leave the arena when the block overlaps a wall; bounds are nominal
        kp = spaces.Box(-np.inf, np.inf, (2 * N_BLOCK_KEYPOINTS,), np.float32)
        return spaces.Dict({"keypoint": kp, "agent_pos": agent})
    image = spaces.Box(0, 1, (3, render_size, render_size), np.float32)
    return spaces.Dict({"image": image, "agent_pos": agent})


class PushTEnv(gym.Env):
    """DP's PushT as a gymnasium env; see the module docstring for the exact definitions.

    Args:
        obs_type: "state" | "keypoints" | "image".
        legacy: DP's legacy state-setting order (position, then angle). DP's eval runners use
            True; its env default and demo collection use False.
        render_size: S, side of image observations and of `render()` frames.
        render_action: draw DP's red cross at the last action in `render()` frames.
        render_mode: only "rgb_array".
    """

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": sim.CONTROL_HZ}

    def __init__(self, obs_type: str = "state", legacy: bool = False, render_size: int = 96,
                 render_action: bool = True, render_mode: str = "rgb_array"):
        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type must be one of {OBS_TYPES}, got {obs_type!r}")
        if render_mode != "rgb_array":
            raise ValueError(f"render_mode must be 'rgb_array', got {render_mode!r}")
        self.obs_type = obs_type
        self.legacy = legacy
        self.render_size = render_size
        self.render_action = render_action
        self.render_mode = render_mode
        ws = sim.WINDOW_SIZE
        self.observation_space = _observation_space(obs_type, render_size)
        self.action_space = spaces.Box(0, ws, (2,), np.float64)
        self.sim = None
        self.latest_action = None
        self.episode_seed = None
        self._frame = None  # (S, S, 3) uint8 frame of the current state, without marker

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(EPISODE_SEED_HIGH))
            # DP reseeds np_random whenever the episode seed changes
            self._np_random = np.random.default_rng(seed)
        self.episode_seed = seed
        options = options or {}
        state = options.get("state")
        state = initial_state(seed) if state is None else np.asarray(state, dtype=np.float64)
        self.sim = sim.PushTSim()
        self.sim.set_state(state, legacy=self.legacy)
        self.latest_action = None
        self._frame = None
        # DP counts the contacts of the state-setting physics step too (e.g. a block spawned
        # into a wall); its reset info then reports them.
        return self._get_obs(), self._get_info(self.sim.n_contacts())

    def step(self, action):
        n_contacts = 0
        if action is not None:
            action = np.asarray(action, dtype=np.float64)
            self.latest_action = action
            n_contacts = self.sim.step(action)
            self._frame = None
        info = self._get_info(n_contacts)
        reward = float(np.clip(info["coverage"] / sim.SUCCESS_THRESHOLD, 0, 1))
        return self._get_obs(), reward, info["is_success"], False, info

    def render(self) -> np.ndarray:
        """(S, S, 3) uint8 RGB frame of the current state, with the action cross if enabled."""
        frame = self._render_frame().copy()
        if self.render_action and self.latest_action is not None:
            render.draw_action_marker(frame, self.latest_action)
        return frame

    def _render_frame(self) -> np.ndarray:
        if self._frame is None:
            goal = [(sim.COLORS["goal"], verts) for verts in sim.body_polygons(sim.goal_body())]
            canvas = render.draw_space(self.sim.space, goal)
            self._frame = render.resize(canvas, self.render_size)
        return self._frame

    def _get_obs(self) -> dict:
        agent_pos = np.array(self.sim.agent.position, dtype=np.float32)
        if self.obs_type == "state":
            state = self.sim.state
            state[4] = state[4] % (2 * np.pi)
            return {"state": state.astype(np.float32)}
        if self.obs_type == "keypoints":
            kps = keypoints_world(block_local_keypoints(), self.sim.block_pose)
            return {"keypoint": kps.reshape(-1).astype(np.float32), "agent_pos": agent_pos}
        image = np.moveaxis(self._render_frame().astype(np.float32) / 255, -1, 0)
        return {"image": image, "agent_pos": agent_pos}

    def _get_info(self, n_contacts: int) -> dict:
        coverage = self.sim.coverage()
        return {
            "pos_agent": np.array(self.sim.agent.position),
            "vel_agent": np.array(self.sim.agent.velocity),
            "block_pose": self.sim.block_pose,
            "goal_pose": np.array(sim.GOAL_POSE),
            "n_contacts": n_contacts,
            "coverage": coverage,
            "is_success": bool(coverage > sim.SUCCESS_THRESHOLD),
        }

    def get_state(self) -> np.ndarray:
        """(5,) float64 agent xy, block xy, raw block angle (for demo datasets)."""
        return self.sim.state

    def get_keypoints(self) -> np.ndarray:
        """(9, 2) float64 world block keypoints."""
        return keypoints_world(block_local_keypoints(), self.sim.block_pose)
