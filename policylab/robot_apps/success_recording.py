"""Record labelled frames for the reward classifier: `python demo_real_robot.py mode=record_success`.

Teleoperate as in a demo; `c` starts a recording, `s` saves it, `backspace` drops the last one,
`q` quits. While `success_key` (default space) is held, the frames are labelled success; the rest
are failures. Record the task being done and undone from many angles, and 2-3 times more failure
frames than success ones (HIL-SERL's advice): near-misses above all (the object grasped but not
placed, the arm in the goal pose without the object).

Each control step stores every camera's newest frame, the robot keys and the label in
`<output_dir>/success_frames.zarr` (`policylab.rl.success_frames` layout); a recording is
appended in one atomic write when it is saved (also when the loop ends by `q` or an error).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from policylab.data.replay_buffer import ReplayBuffer
from policylab.real.real_env import RealEnv
from policylab.real.teleop.base import KeyInput, Teleop, TeleopMapping
from policylab.real.timing import LoopStats, precise_wait
from policylab.rl.success_frames import SUCCESS, add_frames

log = logging.getLogger(__name__)

STORE_NAME = "success_frames.zarr"


def run_record_success(env: RealEnv, teleop: Teleop, keys: KeyInput, mapping: TeleopMapping, output_dir: str | Path,
                       success_key: str = "space", command_latency: float = 0.01,
                       max_duration: float | None = None) -> dict:
    """Run until `q` (or `max_duration` s); returns counts and loop timing."""
    store = ReplayBuffer.create_from_path(str(Path(output_dir) / STORE_NAME), mode="a")
    dt, stats = env.dt, LoopStats(env.dt, name="success recording")
    target = env.get_obs()["robot_eef_pose"][-1].copy()
    box = getattr(env.robot, "safety_box", None)
    rows: list[dict] | None = None
    saved = 0
    t_start, iter_idx = time.monotonic(), 0
    try:
        while max_duration is None or time.monotonic() - t_start < max_duration:
            t_cycle_end = t_start + (iter_idx + 1) * dt
            stats.begin()
            obs = env.get_obs()
            pressed = keys.get_press_events()
            if "q" in pressed:
                break
            for key in pressed:  # in order: several may arrive in one late cycle
                if key == "c" and rows is None:
                    rows = []
                    log.info("recording %d started: hold %s while the task is done", store.n_episodes, success_key)
                elif key == "s" and rows is not None:
                    saved += _save(store, rows)
                    rows = None
                elif key == "backspace" and rows is None and store.n_episodes:
                    store.drop_episode()
                    saved -= 1
            if rows is not None:
                row = {key: np.asarray(obs[key][-1]) for key in [*env.cameras, *env.robot_obs_keys]}
                row[SUCCESS] = np.uint8(success_key in keys.held_keys())
                rows.append(row)
            precise_wait(t_cycle_end - command_latency)
            target = mapping.step(target, teleop.get_motion(), [teleop.is_button_pressed(i) for i in range(2)], dt)
            if box is not None:
                target = box.clip(target)
            env.exec_actions([target], [time.time() + (t_cycle_end - time.monotonic()) + dt])
            stats.end(deadline=t_cycle_end)
            precise_wait(t_cycle_end)
            iter_idx += 1
    finally:
        if rows:
            saved += _save(store, rows)
    labels = store[SUCCESS][:] if SUCCESS in store else np.zeros(0)
    return {**stats.summary(wall_time=time.monotonic() - t_start), "recordings_saved": saved,
            "frames": len(labels), "success_frames": int(labels.sum())}


def _save(store: ReplayBuffer, rows: list[dict]) -> int:
    if not rows:
        log.error("recording has no frames: not saved")
        return 0
    episode = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    add_frames(store, episode)
    log.info("recording %d saved: %d frames, %d success", store.n_episodes - 1, len(rows), int(episode[SUCCESS].sum()))
    return 1
