"""The policy evaluation loop behind `eval_real_robot.py`, for any policy with the policylab contract.

    policy.predict_action({key: (1, To, ...)}) -> {"action": (1, Ta, Da), ...}

Latency compensation: action i of a chunk is due at `t_obs + (i + action_offset) * dt`, where
t_obs is the newest observation's timestamp, so the chunk is anchored to when the scene was
seen, not to when inference finished. Actions already due before now + `exec_latency` are
dropped; if a whole chunk is late (inference over budget) only its last action is sent, one
step ahead. Each inference cycle lasts `steps_per_inference` steps and ends `frame_latency`
early so the next observation is fresh.

Human takeover: while the SpaceMouse is touched, its motion drives the robot (as in the demo)
and the policy's actions are not sent; those steps are recorded with `stage = 1`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from policylab.common.obs import to_policy_obs
from policylab.common.shape_meta import ShapeMeta
from policylab.real.real_env import EmptyEpisodeError, RealEnv
from policylab.real.teleop.base import KeyInput, Teleop, TeleopMapping
from policylab.real.timing import LoopStats, precise_wait

log = logging.getLogger(__name__)


def obs_to_policy(obs: Mapping[str, np.ndarray], shape_meta: ShapeMeta | Mapping, n_obs_steps: int, device="cpu",
                  obs_key_map: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
    """RealEnv observations -> the policy's `{key: (1, To, ...)}` float tensors.

    RealEnv records what it observes, so its observations are in the stored layout and go through
    the dataset's conversion (`policylab.common.obs.to_policy_obs`): a policy trained on RealEnv's
    recordings reads RealEnv's observations unchanged; `obs_key_map` renames dataset keys to
    RealEnv keys for data recorded under other names (e.g. `{img: camera_0, state: robot_eef_pose}`).
    rgb `(To, H, W, 3)` uint8 -> `(1, To, 3, H, W)` in [0, 1], resized to the policy's size;
    low_dim `(To, ...)` -> `(1, To, D)`.
    """
    out = to_policy_obs(obs, shape_meta, stored=True, n_obs_steps=n_obs_steps, batched=False, resize=True,
                        key_map=obs_key_map, device=device)
    return {key: value.unsqueeze(0) for key, value in out.items()}


class ActionToPose:
    """Maps policy actions (Ta, Da) to robot poses (Ta, 6).

    Args:
        pose_indices: which pose entries the Da action dims set, e.g. [0, 1] for an xy policy;
            null means the action is the full 6-D pose. The other entries are held at the
            reference pose (the robot's pose when the policy took over).
    """

    def __init__(self, pose_indices=None):
        self.pose_indices = None if pose_indices is None else list(pose_indices)

    def __call__(self, actions: np.ndarray, reference_pose: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions, np.float64)
        if self.pose_indices is None:
            if actions.shape[-1] != 6:
                raise ValueError(f"actions have Da={actions.shape[-1]}: set pose_indices to say which pose "
                                 "entries they control")
            return actions
        poses = np.repeat(np.asarray(reference_pose, np.float64)[None], len(actions), axis=0)
        poses[:, self.pose_indices] = actions
        return poses


def run_eval(env: RealEnv, policy, keys: KeyInput, teleop: Teleop | None = None,
             mapping: TeleopMapping | None = None, action_to_pose: ActionToPose | None = None,
             steps_per_inference: int | None = None, action_offset: int = 0, exec_latency: float = 0.01,
             frame_latency: float = 1 / 30, max_duration: float = 60.0, max_steps: int | None = None,
             n_episodes: int = 1, auto_start: bool = False, obs_key_map: Mapping[str, str] | None = None,
             stats_path: str | None = None) -> dict:
    """Run `n_episodes` policy episodes (c starts one unless auto_start, s stops it, q quits)."""
    action_to_pose = action_to_pose or ActionToPose()
    policy_input = lambda obs: obs_to_policy(obs, policy.shape_meta, policy.n_obs_steps,
                                             getattr(policy, "device", "cpu"), obs_key_map)
    steps = steps_per_inference or policy.n_action_steps
    summaries = []
    for _ in range(n_episodes):
        if not auto_start and not _wait_for_key(env, keys, "c"):
            break
        summary, quit_now = _run_episode(env, policy, policy_input, keys, teleop, mapping, action_to_pose, steps,
                                         action_offset, exec_latency, frame_latency, max_duration, max_steps)
        summaries.append(summary)
        if quit_now:
            break
    result = {"episodes": summaries, "actions_dropped": env.n_dropped_actions}
    if stats_path:
        Path(stats_path).write_text(json.dumps(result, indent=2))
    return result


def _wait_for_key(env: RealEnv, keys: KeyInput, wanted: str) -> bool:
    while True:
        pressed = keys.get_press_events()
        if "q" in pressed:
            return False
        if wanted in pressed:
            return True
        env.get_obs()  # keeps device health checked while idle
        time.sleep(env.dt)


def _run_episode(env, policy, policy_input, keys, teleop, mapping, action_to_pose, steps, action_offset, exec_latency,
                 frame_latency, max_duration, max_steps) -> tuple[dict, bool]:
    dt = env.dt
    stats = LoopStats(dt * steps, name="eval loop")
    log_rows = []
    reference = env.get_obs()["robot_eef_pose"][-1].copy()
    human_target = reference.copy()
    t_start = time.monotonic()
    env.start_episode(time.time() + dt)
    iter_idx, quit_now, n_human = 0, False, 0
    while time.monotonic() - t_start < max_duration and (max_steps is None or iter_idx < max_steps):
        t_cycle_end = t_start + (iter_idx + steps) * dt
        stats.begin()
        obs = env.get_obs()
        pressed = keys.get_press_events()
        if "s" in pressed or "q" in pressed:
            quit_now = "q" in pressed
            break
        motion = teleop.get_motion() if teleop is not None else np.zeros(6)
        buttons = [teleop.is_button_pressed(i) for i in range(2)] if teleop is not None else []
        if mapping is not None and TeleopMapping.is_active(motion, buttons):
            # Human takeover: one teleop step per control period, the policy is not consulted.
            human_target = mapping.step(human_target, motion, buttons, dt)
            env.exec_actions([human_target], [time.time() + dt], stages=[1])
            n_human += 1
            stats.end(deadline=t_start + (iter_idx + 1) * dt)
            iter_idx += 1
            precise_wait(t_start + iter_idx * dt)
            continue
        row = _policy_step(env, policy, policy_input(obs), obs, action_to_pose, reference, steps, action_offset,
                           exec_latency)
        human_target = obs["robot_eef_pose"][-1].copy()
        log_rows.append(row)
        stats.end(deadline=t_cycle_end - frame_latency)
        precise_wait(t_cycle_end - frame_latency)
        iter_idx += steps
    try:
        n_saved = env.end_episode()
    except EmptyEpisodeError as err:
        log.error("%s", err)
        n_saved = 0
    summary = {**stats.summary(wall_time=time.monotonic() - t_start, steps=iter_idx),
               "steps_saved": n_saved, "human_steps": n_human, "inferences": log_rows}
    log.info("eval episode: %s", {k: v for k, v in summary.items() if k != "inferences"})
    return summary, quit_now


def _policy_step(env, policy, policy_obs, obs, action_to_pose, reference, steps, action_offset,
                 exec_latency) -> dict:
    t0 = time.time()
    with torch.no_grad():
        result = policy.predict_action(policy_obs)
    actions = result["action"][0].detach().cpu().numpy()[:steps]
    t_infer = time.time() - t0
    poses = action_to_pose(actions, reference)
    timestamps = obs["timestamp"][-1] + (np.arange(len(poses)) + action_offset) * env.dt
    now = time.time()
    keep = timestamps >= now + exec_latency
    over_budget = not np.any(keep)
    if over_budget:  # the whole chunk is late: send its last action on the next grid step
        log.warning("inference over budget (%.0f ms): sending only the last action", 1e3 * t_infer)
        next_tick = obs["timestamp"][-1] + np.ceil((now + exec_latency - obs["timestamp"][-1]) / env.dt) * env.dt
        poses, timestamps = poses[-1:], np.array([next_tick])
    else:
        poses, timestamps = poses[keep], timestamps[keep]
    sent_at = time.time()
    env.exec_actions(poses, timestamps)
    return {"obs_time": float(obs["timestamp"][-1]), "inference_s": t_infer, "sent_at": sent_at,
            "action_times": timestamps.tolist(), "over_budget": over_budget}
