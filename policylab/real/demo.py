"""The teleoperated demonstration loop behind `demo_real_robot.py`.

Keys: c = start an episode, s = stop and save it, backspace = drop the last saved episode,
space = next stage (recorded per step), q = quit. Each iteration reads the observations,
handles keys, waits until `command_latency` before the cycle ends, reads the teleop device and
schedules the integrated target pose one period ahead.

An iteration whose work overruns its period is reported (its command would land in the past
and be dropped); the loop then re-synchronises to the grid instead of piling up late commands.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from policylab.real.real_env import EmptyEpisodeError, RealEnv
from policylab.real.teleop.base import KeyInput, Teleop, TeleopMapping
from policylab.real.timing import LoopStats, precise_wait

log = logging.getLogger(__name__)


class Preview:
    """Optional live view of the cameras (OpenCV window); disables itself when there is no GUI."""

    def __init__(self, enabled: bool):
        # Qt-based OpenCV aborts the whole process (uncatchable) when it finds no display.
        has_display = sys.platform != "linux" or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
        if enabled and not has_display:
            log.warning("live preview disabled: no display (DISPLAY is not set)")
        # PyAV loaded before OpenCV makes Qt's cv2.imshow hang (see cameras/video.py).
        av_first = "av" in sys.modules and "cv2" not in sys.modules
        if enabled and has_display and av_first:
            log.warning("live preview disabled: PyAV was imported before OpenCV, and cv2.imshow would hang")
        self.enabled = enabled and has_display and not av_first
        if self.enabled:
            import cv2  # noqa: F401  (before anything else can load PyAV into this process)

    def show(self, obs: dict, camera_names, text: str) -> None:
        if not self.enabled:
            return
        try:
            import cv2

            tiles = [obs[name][-1][..., ::-1] for name in camera_names]
            image = np.concatenate(tiles, axis=1) if tiles else np.zeros((96, 96, 3), np.uint8)
            cv2.putText(image, text, (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
            cv2.imshow("policylab", image)
            cv2.pollKey()
        except Exception as err:  # noqa: BLE001  (headless OpenCV raises cv2.error on imshow)
            log.warning("live preview disabled: %s", err)
            self.enabled = False


def run_demo(env: RealEnv, teleop: Teleop, keys: KeyInput, mapping: TeleopMapping, command_latency: float = 0.01,
             max_duration: float | None = None, preview: bool = False, stats_path: str | None = None) -> dict:
    """Run until `q` (or `max_duration` s); returns the loop timing summary and episode counts."""
    dt = env.dt
    stats = LoopStats(dt, name="demo loop")
    view = Preview(preview)
    target = env.get_obs()["robot_eef_pose"][-1].copy()
    box = getattr(env.robot, "safety_box", None)
    stage, saved, empty = 0, 0, 0
    t_start = time.monotonic()
    iter_idx = 0
    while max_duration is None or time.monotonic() - t_start < max_duration:
        t_cycle_end = t_start + (iter_idx + 1) * dt
        stats.begin()
        obs = env.get_obs()
        quit_now = False
        for key in keys.get_press_events():
            if key == "q":
                quit_now = True
            elif key == "c" and not env.is_recording:
                # The episode grid starts on the next cycle boundary, in wall time.
                env.start_episode(time.time() + (t_cycle_end - time.monotonic()))
                stage = 0
            elif key == "s" and env.is_recording:
                saved, empty = _end(env, saved, empty)
            elif key == "backspace" and not env.is_recording and env.replay_buffer.n_episodes:
                env.drop_episode()
                saved -= 1
            elif key == "space":
                stage += 1
        if quit_now:
            break
        view.show(obs, env.cameras, f"episode {env.episode_id} {'REC' if env.is_recording else ''} stage {stage}")
        precise_wait(t_cycle_end - command_latency)
        motion = teleop.get_motion()
        buttons = [teleop.is_button_pressed(i) for i in range(2)]
        target = mapping.step(target, motion, buttons, dt)
        if box is not None:
            target = box.clip(target)  # do not integrate past the box the robot clips to anyway
        t_command = time.time() + (t_cycle_end - time.monotonic()) + dt
        if env.exec_actions([target], [t_command], stages=[stage]) == 0:
            log.warning("demo command dropped as late (iteration %d)", iter_idx)
        late = stats.end(deadline=t_cycle_end)
        precise_wait(t_cycle_end)
        iter_idx += 1
        if late:  # skip the grid ticks already missed rather than sending late commands
            iter_idx = max(iter_idx, math.ceil((time.monotonic() - t_start) / dt) - 1)
    if env.is_recording:
        saved, empty = _end(env, saved, empty)
    summary = {**stats.summary(wall_time=time.monotonic() - t_start), "episodes_saved": saved,
               "episodes_empty": empty, "actions_dropped": env.n_dropped_actions}
    if stats_path:
        Path(stats_path).write_text(json.dumps(summary, indent=2))
    log.info("demo loop: %s", summary)
    return summary


def _end(env: RealEnv, saved: int, empty: int) -> tuple[int, int]:
    try:
        env.end_episode()
        return saved + 1, empty
    except EmptyEpisodeError as err:
        log.error("%s", err)
        return saved, empty + 1
