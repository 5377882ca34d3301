"""RealEnv: one robot and N cameras as an environment with timestamped observations and actions.

Gym's `step` is split in two, because on a real robot time passes between them:

    get_obs()                          -> {camera: (To, H, W, 3) uint8, robot key: (To, 6), "timestamp": (To,)}
    exec_actions(actions (N, 6), timestamps (N,))   schedule poses at wall times; late ones are dropped

Observations are aligned on a grid: the To target times end at the newest camera frame and step
back by dt = 1/frequency; each source contributes its latest sample at or before each target.

Recording: between `start_episode` and `end_episode` every camera frame and robot sample is
gathered on the episode's grid `start_time + k * dt` (a sample fills the grid ticks up to its
time; see `timing.grid_indices`), actions by their scheduled time. `end_episode` writes one
ReplayBuffer episode (atomic) keyed like the observations, which any image task can train on,
and each camera also writes `videos/<episode>/<camera>.mp4` at its own frame rate.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from policylab.data.replay_buffer import ReplayBuffer
from policylab.real.cameras.base import Camera
from policylab.real.device import Device, DeviceError
from policylab.real.robots.base import Robot
from policylab.real.shared_memory import NotEnoughData
from policylab.real.timing import align_indices, grid_indices

log = logging.getLogger(__name__)


class EmptyEpisodeError(RuntimeError):
    """An episode ended with no complete step: nothing was saved."""


class _GridAccumulator:
    """Samples of one source on the episode grid: tick k holds the first sample at or after tick k."""

    def __init__(self, start_time: float, dt: float):
        self.start_time, self.dt = start_time, dt
        self.last_time = -math.inf
        self.next_tick = 0
        self.values: dict[str, list[np.ndarray]] = {}

    def extend(self, samples: Mapping[str, np.ndarray], times: np.ndarray) -> None:
        new = times > self.last_time
        if not np.any(new):
            return
        times = times[new]
        idx, _, self.next_tick = grid_indices(times, self.start_time, self.dt, self.next_tick)
        for key, value in samples.items():
            self.values.setdefault(key, []).extend(np.asarray(value)[new][idx])
        self.last_time = float(times[-1])

    def __len__(self) -> int:
        return self.next_tick


class RealEnv(Device):
    """Args:
        robot: a Robot; cameras: {name: Camera} (names become observation / dataset keys).
        frequency: control rate (Hz); the grid step dt = 1/frequency.
        n_obs_steps: To, observations returned by `get_obs`.
        output_dir: where `replay_buffer.zarr` and `videos/` go; null disables recording.
        robot_obs_keys: robot state keys in observations and episodes.
        image_compressor: zarr compressor for camera frames ("image" = Jpeg2k, "disk" = lossless).
        action_latency: actions scheduled sooner than now + this are dropped (s).
        warmup_timeout: `start` waits this long for every source to fill To observations (s).
    """

    def __init__(self, robot: Robot, cameras: Mapping[str, Camera], frequency: float = 10.0,
                 n_obs_steps: int = 2, output_dir: str | None = None,
                 robot_obs_keys=("robot_eef_pose", "robot_joint"), image_compressor: str = "image",
                 action_latency: float = 0.0, warmup_timeout: float = 10.0):
        self.robot, self.cameras = robot, dict(cameras)
        self.frequency, self.dt, self.n_obs_steps = frequency, 1.0 / frequency, n_obs_steps
        self.robot_obs_keys = tuple(robot_obs_keys)
        self.image_compressor, self.action_latency = image_compressor, action_latency
        self.warmup_timeout = warmup_timeout
        self.output_dir = Path(output_dir) if output_dir else None
        self.replay_buffer = None
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.replay_buffer = ReplayBuffer.create_from_path(self.output_dir / "replay_buffer.zarr", mode="a")
        self._episode: dict | None = None
        self.n_dropped_actions = 0

    def start(self, wait: bool = True) -> None:
        started = []
        try:  # start in parallel, then wait: camera and robot start-up overlap
            for device in [*self.cameras.values(), self.robot]:
                device.start(wait=False)
                started.append(device)
            for device in started:
                device.start_wait()
            if wait:
                self._warm_up()
        except BaseException:
            for device in started:
                device.stop()
            raise

    def _warm_up(self) -> None:
        deadline = time.monotonic() + self.warmup_timeout
        while True:
            try:
                self.get_obs()
                return
            except NotEnoughData:
                if time.monotonic() > deadline:
                    raise DeviceError(f"sources did not fill {self.n_obs_steps} observations within "
                                      f"{self.warmup_timeout} s") from None
                time.sleep(0.02)

    def stop(self, wait: bool = True) -> None:
        """Save an episode still being recorded (if it has steps), then stop every device."""
        try:
            if self.is_recording:
                self.end_episode()
        except (EmptyEpisodeError, DeviceError) as err:  # stopping must not be skipped over this
            log.error("episode not saved on stop: %s", err)
        finally:
            for device in [*self.cameras.values(), self.robot]:
                device.stop(wait)

    @property
    def is_ready(self) -> bool:
        return self.robot.is_ready and all(c.is_ready for c in self.cameras.values())

    def _read_camera(self, camera: Camera) -> dict[str, np.ndarray]:
        """Enough frames to align To observations; while recording, as many as buffered (<= max_k)."""
        k = math.ceil(self.n_obs_steps * camera.fps / self.frequency) + 2
        if self.is_recording:
            k = max(k, min(camera.ring.count, camera.ring.max_k))
        return camera.get(min(k, camera.ring.max_k))

    def get_obs(self) -> dict[str, np.ndarray]:
        """`{camera: (To, H, W, 3) uint8, camera_depth: (To, H, W), robot key: (To, ...), timestamp: (To,)}`."""
        frames = {name: self._read_camera(cam) for name, cam in self.cameras.items()}
        state = self.robot.get_all_state()
        if len(state["timestamp"]) == 0:
            raise NotEnoughData("no robot state yet")
        last = max((f["timestamp"][-1] for f in frames.values()), default=state["timestamp"][-1])
        targets = last - self.dt * np.arange(self.n_obs_steps)[::-1]
        obs = {}
        for name, f in frames.items():
            idx = align_indices(f["timestamp"], targets)
            obs[name] = f["color"][idx]
            if "depth" in f:
                obs[f"{name}_depth"] = f["depth"][idx]
        idx = align_indices(state["timestamp"], targets)
        for key in self.robot_obs_keys:
            obs[key] = state[key][idx]
        obs["timestamp"] = targets
        if self.is_recording:
            self._gather(frames, state)
        return obs

    def exec_actions(self, actions, timestamps, stages=None) -> int:
        """Schedule `actions (N, 6)` poses at wall times `timestamps (N,)`; returns how many were sent.

        Actions due before now + action_latency are dropped (and counted in `n_dropped_actions`):
        the robot could not reach them on time.
        """
        actions = np.asarray(actions, np.float64).reshape(-1, 6)
        timestamps = np.asarray(timestamps, np.float64).reshape(-1)
        if len(actions) != len(timestamps):
            raise ValueError(f"{len(actions)} actions but {len(timestamps)} timestamps")
        stages = np.zeros(len(actions), np.int64) if stages is None else np.asarray(stages).reshape(-1)
        keep = timestamps >= time.time() + self.action_latency
        self.n_dropped_actions += int(np.sum(~keep))
        for action, t in zip(actions[keep], timestamps[keep]):
            self.robot.schedule_waypoint(action, t)
        if self.is_recording:
            ep = self._episode
            ticks = np.round((timestamps[keep] - ep["start_time"]) / self.dt).astype(int)
            for tick, action, stage in zip(ticks, actions[keep], stages[keep]):
                if tick >= 0:
                    ep["actions"][int(tick)] = (action, int(stage))  # a newer plan overwrites
        return int(np.sum(keep))

    @property
    def is_recording(self) -> bool:
        return self._episode is not None

    @property
    def episode_id(self) -> int:
        return self.replay_buffer.n_episodes if self.replay_buffer is not None else 0

    def start_episode(self, start_time: float | None = None) -> None:
        if self.replay_buffer is None:
            raise RuntimeError("RealEnv was built without output_dir: nothing to record into")
        start_time = time.time() if start_time is None else start_time
        video_dir = self.output_dir / "videos" / str(self.episode_id)
        video_dir.mkdir(parents=True, exist_ok=True)
        for name, cam in self.cameras.items():
            cam.start_recording(str(video_dir / f"{name}.mp4"), start_time)
        self._episode = {"start_time": start_time, "actions": {}, "video_dir": video_dir,
                         "sources": {name: _GridAccumulator(start_time, self.dt)
                                     for name in [*self.cameras, "robot"]}}
        log.info("episode %d started", self.episode_id)

    def _gather(self, frames=None, state=None) -> None:
        """Move new camera frames and robot samples into the episode's grid accumulators."""
        sources = self._episode["sources"]
        for name, cam in self.cameras.items():
            f = frames[name] if frames else self._read_camera(cam)
            keys = {name: f["color"], **({f"{name}_depth": f["depth"]} if "depth" in f else {})}
            sources[name].extend(keys, f["timestamp"])
        state = state if state is not None else self.robot.get_all_state()
        sources["robot"].extend({k: state[k] for k in self.robot_obs_keys}, state["timestamp"])

    def end_episode(self) -> int:
        """Save the episode (atomically); returns its step count. Raises EmptyEpisodeError if none."""
        ep, episode_id = self._episode, self.episode_id
        self._gather()
        for cam in self.cameras.values():
            cam.stop_recording()
        self._episode = None
        n_obs = min(len(src) for src in ep["sources"].values())
        last_action = max(ep["actions"], default=-1)
        n = min(n_obs, last_action + 1)
        if n <= 0:
            shutil.rmtree(ep["video_dir"], ignore_errors=True)
            raise EmptyEpisodeError(
                f"episode {episode_id} has no complete step ({n_obs} observation steps, "
                f"{last_action + 1} action steps; {self.n_dropped_actions} actions dropped as late): "
                "not saved. Is the control loop keeping up with its frequency?")
        episode = self._episode_arrays(ep, n)
        chunks = {k: (1, *v.shape[1:]) for k, v in episode.items() if k in self.cameras}
        compressors = {k: (self.image_compressor if k in self.cameras else "disk") for k in episode}
        self.replay_buffer.add_episode(episode, chunks=chunks, compressors=compressors)
        log.info("episode %d saved: %d steps", episode_id, n)
        return n

    def _episode_arrays(self, ep: dict, n: int) -> dict[str, np.ndarray]:
        actions, stages, held = [], [], None
        for tick in range(n):
            held = ep["actions"].get(tick, held)  # ticks without a new command hold the last one
            if held is None:
                held = next(ep["actions"][t] for t in sorted(ep["actions"]))
            actions.append(held[0])
            stages.append(held[1])
        out = {"timestamp": ep["start_time"] + self.dt * np.arange(n),
               "action": np.asarray(actions, np.float64), "stage": np.asarray(stages, np.int64)}
        for src in ep["sources"].values():
            for key, values in src.values.items():
                out[key] = np.stack(values[:n]) if values else np.zeros((n,))
        return out

    def drop_episode(self) -> None:
        """Delete the last saved episode and its videos."""
        if self.is_recording:
            raise RuntimeError("end the current episode before dropping one")
        if self.replay_buffer.n_episodes == 0:
            raise IndexError("no episode to drop")
        episode_id = self.replay_buffer.n_episodes - 1
        self.replay_buffer.drop_episode()
        shutil.rmtree(self.output_dir / "videos" / str(episode_id), ignore_errors=True)
        log.info("episode %d dropped", episode_id)
