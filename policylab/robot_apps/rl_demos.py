"""Teleoperated demos (`demo_real_robot.py`) -> the RL layout the real_rl task and its actor use.

    python -m policylab.robot_apps.rl_demos src=data/real_robot/replay_buffer.zarr out=data/real_robot/rl_demos.zarr \
        [max_delta=0.02] [classifier=<reward-classifier checkpoint>] [threshold=0.75]

`demo_real_robot.py` records `action (N, 6)` as the commanded target pose. `RealRobotRLEnv` acts
in end-effector deltas: action = clip((target xyz - current xyz) / max_delta, -1, 1) (the same
`max_delta` as the task's `rl_env`), so SFT, Stage I and the actor share one action space. Every
other key is copied. `reward (N,)`: with a classifier, its verdict on the frame after each step
(the last step: its own frame); without one, 1 at each demo's last step (demos are stopped at
success). `terminal (N,)`: 1 at each demo's last step. Episodes are appended one by one (atomic);
episodes already in `out` are skipped, so re-running adds only new demos.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

from policylab.common.overrides import MISSING, parse_overrides
from policylab.data.replay_buffer import ReplayBuffer
from policylab.rl.episodes import ACTION, REWARD, TERMINAL


@dataclasses.dataclass
class RLDemosConfig:
    """Command-line options (all `key=value`)."""

    src: str = MISSING                # the teleop demo store (demo_real_robot.py's replay_buffer.zarr)
    out: str = MISSING                # the RL store written (appended to)
    max_delta: float = 0.02           # m per step at |action| = 1, as the task's rl_env
    classifier: str | None = None     # a reward-classifier checkpoint; null: reward 1 at each demo's last step
    threshold: float = 0.75           # classifier probability counted as success


def convert_episode(episode: dict[str, np.ndarray], max_delta: float, classifier=None,
                    threshold: float = 0.75) -> dict[str, np.ndarray]:
    """One recorded demo `{key: (L, ...)}` -> the RL layout (action (L, 3), reward, terminal)."""
    for key in (ACTION, "robot_eef_pose"):
        if key not in episode:
            raise KeyError(f"a demo needs {key!r}; it has {sorted(episode)}")
    target, pose = np.asarray(episode[ACTION], np.float64), np.asarray(episode["robot_eef_pose"], np.float64)
    n = len(target)
    out = {k: np.asarray(v) for k, v in episode.items() if k not in (ACTION, "stage", "timestamp")}
    out[ACTION] = np.clip((target[:, :3] - pose[:, :3]) / max_delta, -1.0, 1.0).astype(np.float32)
    reward = np.zeros(n, np.float32)
    if classifier is None:
        reward[-1] = 1.0
    else:
        from policylab.rl.reward_classifier import frames_to_tensor

        nxt = np.minimum(np.arange(n) + 1, n - 1)
        with torch.no_grad():
            for t in range(n):
                obs = {key: frames_to_tensor(out[key][nxt[t]]) for key in classifier.obs_meta}
                reward[t] = float(classifier.probability(obs)[0] >= threshold)
    out[REWARD] = reward
    out[TERMINAL] = np.zeros(n, np.uint8)
    out[TERMINAL][-1] = 1
    return out


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_overrides(RLDemosConfig, sys.argv[1:] if argv is None else argv,
                          prog="python -m policylab.robot_apps.rl_demos", usage=__doc__)
    classifier = None
    if cfg.classifier:
        from policylab.rl.reward_classifier import load_reward_classifier

        classifier = load_reward_classifier(cfg.classifier)
    src = ReplayBuffer.create_from_path(cfg.src, mode="r")
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    out = ReplayBuffer.create_from_path(cfg.out, mode="a")
    added = 0
    for i in range(out.n_episodes, src.n_episodes):
        episode = convert_episode(src.get_episode(i, copy=True), cfg.max_delta, classifier, cfg.threshold)
        images = [k for k, v in episode.items() if v.ndim == 4]
        out.add_episode(episode, chunks={k: (1, *episode[k].shape[1:]) for k in images},
                        compressors={k: "image" if k in images else "disk" for k in episode})
        added += 1
    print(f"{added} demos converted; {out.n_episodes} episodes, {out.n_steps} steps in {cfg.out}")
    return {"added": added, "episodes": out.n_episodes}


if __name__ == "__main__":
    main()
