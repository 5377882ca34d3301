"""`RealEnv` as a gymnasium env, so the online workspace's actor (`policylab.rl.actor`) runs a robot.

    action (Da,) in [-1, 1]  ->  end-effector target = current pose + action * max_delta (m; rad)
    obs {camera: (3, H, W) float in [0, 1], low-dim key: (D,) float32}   one step, keys of shape_meta

One `step` is one control period: read the SpaceMouse, schedule the target one period ahead,
wait for the period to end, read the observation. A human takeover (HIL-SERL's rule: the mouse
moved or a button is pressed, or one of the keyboard's motion keys) makes the executed target the
human's: the teleop reading is integrated from the current target as in `demo_real_robot.py`,
and the step's `info` carries `intervention: True` and `action`, the executed action in the
policy's units (what `InterventionWrapper` reports in sim, so episodes are recorded the same way).

The env composes its parts: `ObservationMap` (RealEnv's raw obs -> the policy's step, through
`policylab.common.obs`), `DeltaActions` (action <-> pose change), `Takeover` (who drives this
step), `ResetMode` (how an episode starts) and a `SafetyBox`. The safety box (default the robot's) clips every target, and the recorded action is
the clipped one. Keys: `s` ends the episode (truncated), `y` labels success by hand (reward 1,
terminated: the fallback without a classifier), `q` ends the session (truncated, `info["quit"]`).
A device fault (lost controller connection, protective stop, a camera dying) ends the episode
(truncated, `info["fault"]`); the robot process has stopped commanding the arm by then, and the
next `reset` raises. Resets: `manual` waits for `c` (the operator resets the scene), `pose` moves
the arm to `reset_pose` and waits `reset_seconds` (then `c` too with `wait_for_key`), `none`.

The reward here is 0 unless `y` is pressed: wrap the env in `rl.reward_classifier.ClassifierReward`
for the classifier's. `gym.make("policylab.robot_apps.rl_env:policylab/RealRobot-v0", **kwargs)` builds
the devices from config dicts (`build_real_rl_env`), so a ray actor makes it from the task config.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import ClassVar

import gymnasium as gym
import numpy as np

from policylab.common.obs import to_policy_obs
from policylab.common.shape_meta import ShapeMeta
from policylab.real.device import DeviceError
from policylab.real.real_env import RealEnv
from policylab.real.robots.interpolator import SafetyBox
from policylab.real.shared_memory import NotEnoughData
from policylab.real.teleop.base import KeyInput, Teleop, TeleopMapping
from policylab.real.timing import precise_wait

log = logging.getLogger(__name__)

RESET_SETTLE_S = 0.5  # after a pose reset's motion, before the episode's first observation

# Keyboard takeover without a SpaceMouse: key -> (axis, sign) of a full-deflection motion for one step.
MOTION_KEYS = {"l": (0, 1.0), "j": (0, -1.0), "i": (1, 1.0), "k": (1, -1.0), "u": (2, 1.0), "o": (2, -1.0)}


class ObservationMap:
    """RealEnv's raw observations -> one step of the policy's `{key: shape_meta shape}` float32.

    Args:
        shape_meta: the task's; its `obs` keys are the observation (dataset convention).
        obs_key_map: renames a `zarr_key` to the RealEnv key holding it (`to_policy_obs`'s `key_map`).
    """

    def __init__(self, shape_meta: ShapeMeta | Mapping, obs_key_map: Mapping[str, str] | None = None):
        self.meta = ShapeMeta.parse(shape_meta)
        self.obs_key_map = dict(obs_key_map or {})
        self.space = gym.spaces.Dict({
            key: gym.spaces.Box(0.0, 1.0, spec.shape, np.float32) if spec.is_rgb
            else gym.spaces.Box(-np.inf, np.inf, spec.shape, np.float32)
            for key, spec in self.meta.obs.items()})

    def __call__(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = to_policy_obs(raw, self.meta, stored=True, n_obs_steps=1, batched=False, resize=True,
                                key_map=self.obs_key_map)
        return {key: value[-1].numpy() for key, value in tensors.items()}


@dataclasses.dataclass(frozen=True)
class DeltaActions:
    """action (Da,) in [-1, 1] <-> a pose change: xyz * max_delta (m), rotation vector * max_rot_delta (rad).

    action_dims: 3 (xyz deltas) or 6 (xyz + rotation-vector deltas).
    """

    action_dims: int = 3
    max_delta: float = 0.02
    max_rot_delta: float = 0.05

    def __post_init__(self):
        if self.action_dims not in (3, 6):
            raise ValueError(f"action_dims must be 3 (xyz) or 6 (xyz + rotation), got {self.action_dims}")

    @property
    def space(self) -> gym.spaces.Box:
        return gym.spaces.Box(-1.0, 1.0, (self.action_dims,), np.float32)

    def apply(self, pose: np.ndarray, action: np.ndarray) -> np.ndarray:
        """pose (6,) + action (Da,) -> the target pose (6,)."""
        target = np.array(pose, np.float64)
        target[:3] += action[:3] * self.max_delta
        if self.action_dims == 6:
            from scipy.spatial.transform import Rotation

            rot = Rotation.from_rotvec(action[3:] * self.max_rot_delta) * Rotation.from_rotvec(target[3:])
            target[3:] = rot.as_rotvec()
        return target

    def between(self, pose: np.ndarray, target: np.ndarray) -> np.ndarray:
        """The pose change pose -> target in action units (Da,) float32, clipped to [-1, 1]."""
        delta = (target[:3] - pose[:3]) / self.max_delta
        if self.action_dims == 6:
            from scipy.spatial.transform import Rotation

            rot = Rotation.from_rotvec(target[3:]) * Rotation.from_rotvec(pose[3:]).inv()
            delta = np.concatenate([delta, rot.as_rotvec() / self.max_rot_delta])
        return np.clip(delta, -1.0, 1.0).astype(np.float32)


class Takeover:
    """Who drives a step: the human when the SpaceMouse moved or a button is pressed (HIL-SERL's
    rule), or a keyboard motion key was pressed; the human's target is integrated by `mapping`.

    Args:
        teleop: the SpaceMouse (None: keyboard takeovers only).
        mapping: its mapping (None: any touch takes over, both buttons count, z always free).
    """

    def __init__(self, teleop: Teleop | None = None, mapping: TeleopMapping | None = None):
        self.teleop = teleop
        self.mapping = mapping or TeleopMapping(rotate_button=None, unlock_z_button=None)

    def read(self, pressed: Sequence[str]) -> tuple[np.ndarray, list[bool], float]:
        """(motion (6,) in [-1, 1], buttons, monotonic read time) from the mouse and the pressed keys."""
        motion, buttons = np.zeros(6), []
        if self.teleop is not None:
            motion = np.asarray(self.teleop.get_motion(), np.float64)
            buttons = [self.teleop.is_button_pressed(i) for i in range(2)]
        t_read = time.monotonic()
        for key in pressed:
            if key in MOTION_KEYS:
                axis, sign = MOTION_KEYS[key]
                motion[axis] += sign
        return motion, buttons, t_read

    def target(self, pose: np.ndarray, motion: np.ndarray, buttons: list[bool], dt: float) -> np.ndarray:
        return self.mapping.step(pose, np.clip(motion, -1, 1), buttons, dt)


@dataclasses.dataclass(frozen=True)
class ResetMode:
    """How an episode starts: `manual` waits for `c` (the operator resets the scene), `pose` moves
    the arm to `pose` (6,) over `seconds` (then `c` too with `wait_for_key`), `none` starts where it is."""

    mode: str = "manual"
    pose: Sequence[float] | None = None
    seconds: float = 3.0
    wait_for_key: bool = False

    def __post_init__(self):
        if self.mode not in ("manual", "pose", "none"):
            raise ValueError(f"reset must be 'manual', 'pose' or 'none', got {self.mode!r}")
        if self.mode == "pose" and self.pose is None:
            raise ValueError("reset: pose needs reset_pose [x, y, z, rx, ry, rz]")

    @property
    def needs_key(self) -> bool:
        return self.mode == "manual" or self.wait_for_key


class RealRobotRLEnv(gym.Env):
    """Args:
        env: a RealEnv (started by this env unless `started`).
        observation: RealEnv's raw obs -> the policy's step.
        actions: the action space and its pose changes.
        takeover: the human's devices (None: no takeover).
        reset: how episodes start.
        keys: key input (None: no keys; resets cannot wait for a key then).
        safety_box: a SafetyBox or {low, high} (m); None: the robot's `safety_box`.
        command_latency: s before the period ends at which the SpaceMouse is read.
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, env: RealEnv, observation: ObservationMap, actions: DeltaActions = DeltaActions(),
                 takeover: Takeover | None = None, reset: ResetMode = ResetMode(), keys: KeyInput | None = None,
                 safety_box: SafetyBox | Mapping | None = None, command_latency: float = 0.01, started: bool = False):
        if reset.needs_key and keys is None:
            raise ValueError("reset: manual waits for the c key: give a keyboard (or reset: pose / none)")
        self.env, self.keys, self.observation, self.actions = env, keys, observation, actions
        self.takeover, self.reset_mode = takeover or Takeover(), reset
        box = safety_box or getattr(env.robot, "safety_box", None)
        self.box = SafetyBox(box["low"], box["high"]) if isinstance(box, Mapping) else box
        self.command_latency = float(command_latency)
        self.action_space, self.observation_space = actions.space, observation.space
        self._started = started
        self._devices_started = False
        self.target: np.ndarray | None = None
        self.t_cycle_end = 0.0
        self.fault: str | None = None
        self.step_log: list[dict] = []  # per step: loop timing and takeover (for benches and tests)

    def start(self) -> None:
        if self._devices_started:
            return
        if not self._started:
            self.env.start()
        for device in (self.takeover.teleop, self.keys):
            if device is not None:
                device.start()
        self._devices_started = True

    def close(self) -> None:
        for device in (self.keys, self.takeover.teleop):
            if device is not None:
                device.stop()
        if not self._started and self._devices_started:
            self.env.stop()
        self._devices_started = False

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.start()
        if self.fault is not None:
            raise DeviceError(f"the robot faulted in the last episode ({self.fault}); restart the session")
        pose, mode = None, self.reset_mode
        if mode.mode == "pose":
            pose = np.asarray(mode.pose, np.float64)
            pose = self.box.clip(pose) if self.box is not None else pose
            self.env.robot.servo_to(pose, mode.seconds)
            time.sleep(mode.seconds + RESET_SETTLE_S)
        if mode.needs_key:
            self._wait_for("c")
        raw = self._get_obs()
        # the first target: the reset pose itself (the arm may still be settling), else where the arm is
        self.target = pose.copy() if pose is not None else raw["robot_eef_pose"][-1].astype(np.float64).copy()
        self.t_cycle_end = time.monotonic() + self.env.dt
        self.step_log = []
        self._last = self.observation(raw)
        return self._last, {"is_success": False}

    def step(self, action):
        action = np.clip(np.asarray(action, np.float64).reshape(-1), -1.0, 1.0)
        if action.shape != (self.actions.action_dims,):
            raise ValueError(f"action must have shape ({self.actions.action_dims},), got {action.shape}")
        t_begin = time.monotonic()
        pressed = self.keys.get_press_events() if self.keys is not None else []
        precise_wait(self.t_cycle_end - self.command_latency)
        motion, buttons, t_read = self.takeover.read(pressed)
        human = TeleopMapping.is_active(motion, buttons)
        try:
            current = self.target
            if human:  # the human's target, limited to what one action can do (so it is recorded exactly)
                action = self.actions.between(current, self.takeover.target(current, motion, buttons, self.env.dt))
                action = action.astype(np.float64)
            target = self.actions.apply(current, action)
            if self.box is not None:
                target = self.box.clip(target)
            t_command = time.time() + (self.t_cycle_end - time.monotonic()) + self.env.dt
            self.env.exec_actions([target], [t_command], stages=[int(human)])
            t_sent = time.monotonic()
            self.target = target
            precise_wait(self.t_cycle_end)
            raw = self._get_obs()
        except DeviceError as err:
            return self._faulted(err, action)
        overrun = time.monotonic() - self.t_cycle_end
        self.t_cycle_end = max(self.t_cycle_end + self.env.dt, time.monotonic() + 0.5 * self.env.dt)
        executed = self.actions.between(current, target)  # the box may have clipped it
        self.step_log.append({"t_begin": t_begin, "t_read": t_read, "t_sent": t_sent, "human": human,
                              "overrun_s": max(overrun, 0.0)})
        info = {"intervention": human, "action": executed, "quit": "q" in pressed}
        if "y" in pressed:  # absent otherwise: a reward classifier around this env fills it in
            info.update(is_success=True, human_success=True)
        terminated = "y" in pressed
        truncated = "s" in pressed or "q" in pressed
        obs = self._last = self.observation(raw)
        return obs, float(terminated), terminated, truncated, info

    def _get_obs(self) -> dict:
        deadline = time.monotonic() + 1.0
        while True:
            try:
                return self.env.get_obs()
            except NotEnoughData:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def _wait_for(self, key: str) -> None:
        log.info("reset the scene, then press %s", key)
        while True:
            pressed = self.keys.get_press_events()
            if key in pressed:
                return
            if "q" in pressed:
                raise KeyboardInterrupt("q pressed while waiting for the next episode")
            self.env.get_obs()  # keeps device health checked while idle
            time.sleep(self.env.dt)

    def _faulted(self, err: Exception, action: np.ndarray):
        """End the episode on a device fault: the robot process has stopped commanding the arm."""
        self.fault = str(err)
        log.error("device fault, episode ended: %s", err)
        obs = self._last
        info = {"intervention": False, "action": action.astype(np.float32), "fault": self.fault}
        return obs, 0.0, False, True, info


# Device classes a config may name (configs never import anything else): config/real/* targets.
DEVICE_TARGETS = {
    "policylab.real.robots.ur_rtde.URRTDERobot": ("policylab.real.robots.ur_rtde", "URRTDERobot"),
    "policylab.real.cameras.realsense.RealSenseCamera": ("policylab.real.cameras.realsense", "RealSenseCamera"),
    "policylab.real.teleop.spacemouse.SpaceMouse": ("policylab.real.teleop.spacemouse", "SpaceMouse"),
    "policylab.real.teleop.keyboard.PynputKeys": ("policylab.real.teleop.keyboard", "PynputKeys"),
    "policylab.real.teleop.keyboard.ScriptedKeys": ("policylab.real.teleop.keyboard", "ScriptedKeys"),
    "policylab.real.teleop.base.TeleopMapping": ("policylab.real.teleop.base", "TeleopMapping"),
}


def build_device(cfg: Mapping | None, what: str):
    """A device from `{_target_: <one of DEVICE_TARGETS>, **kwargs}`; None stays None."""
    if cfg is None:
        return None
    import importlib

    kwargs = dict(cfg)
    target = kwargs.pop("_target_", None)
    if target not in DEVICE_TARGETS:
        raise ValueError(f"{what}._target_ {target!r} is not a known device; known: {sorted(DEVICE_TARGETS)}")
    module, name = DEVICE_TARGETS[target]
    return getattr(importlib.import_module(module), name)(**kwargs)


# Config keys of the flat `rl_env.env_kwargs` / `eval.yaml rl` section -> the part and field they set.
ACTION_KEYS = {"action_dims": "action_dims", "max_delta": "max_delta", "max_rot_delta": "max_rot_delta"}
RESET_KEYS = {"reset": "mode", "reset_pose": "pose", "reset_seconds": "seconds", "wait_for_key": "wait_for_key"}


def build_real_rl_env(robot: Mapping, cameras: Mapping[str, Mapping], shape_meta: Mapping,
                      teleop: Mapping | None = None, keyboard: Mapping | None = None,
                      teleop_mapping: Mapping | None = None, frequency: float = 10.0,
                      robot_obs_keys: Sequence[str] = ("robot_eef_pose", "robot_joint"), output_dir: str | None = None,
                      warmup_timeout: float = 10.0, obs_key_map: Mapping[str, str] | None = None,
                      safety_box: Mapping | None = None, command_latency: float = 0.01,
                      **parts) -> RealRobotRLEnv:
    """`RealRobotRLEnv` from plain config dicts (`config/real/robot/*`, `cameras/*`, `teleop/*`, ...).

    The RealEnv keeps one observation step (the actor's `MultiStepWrapper` keeps the history);
    `output_dir` also records the raw episodes and videos as `demo_real_robot.py` does (null: only
    the RL stores). Devices start on the first `reset`. `parts`: `DeltaActions`' keys
    (action_dims, max_delta, max_rot_delta) and `ResetMode`'s (reset, reset_pose, reset_seconds,
    wait_for_key).
    """
    unknown = sorted(set(parts) - set(ACTION_KEYS) - set(RESET_KEYS))
    if unknown:
        raise TypeError(f"unknown RealRobotRLEnv options {unknown}; known: {sorted({**ACTION_KEYS, **RESET_KEYS})}")
    real = RealEnv(build_device(robot, "robot"), {name: build_device(cam, f"cameras.{name}")
                                                  for name, cam in (cameras or {}).items()},
                   frequency=frequency, n_obs_steps=1, output_dir=output_dir, robot_obs_keys=robot_obs_keys,
                   warmup_timeout=warmup_timeout)
    pick = lambda names: {field: parts[key] for key, field in names.items() if key in parts}
    return RealRobotRLEnv(real, ObservationMap(shape_meta, obs_key_map), DeltaActions(**pick(ACTION_KEYS)),
                          Takeover(build_device(teleop, "teleop"), build_device(teleop_mapping, "teleop_mapping")),
                          ResetMode(**pick(RESET_KEYS)), keys=build_device(keyboard, "keyboard"),
                          safety_box=safety_box, command_latency=command_latency)


gym.register("policylab/RealRobot-v0", entry_point=build_real_rl_env, disable_env_checker=True,
             order_enforce=False)
