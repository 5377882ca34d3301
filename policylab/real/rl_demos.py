"""Teleoperated demos (`demo_real_robot.py`) -> the RL layout the real_rl task and its actor use.

    python -m policylab.real.rl_demos src=data/real_robot/replay_buffer.zarr out=data/real_robot/rl_demos.zarr \
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

import sys
from pathlib import Path

import numpy as np
import torch

from policylab.data.replay_buffer import ReplayBuffer


def convert_episode(episode: dict[str, np.ndarray], max_delta: float, classifier=None,
                    threshold: float = 0.75) -> dict[str, np.ndarray]:
    """One recorded demo `{key: (L, ...)}` -> the RL layout (action (L, 3), reward, terminal)."""
    for key in ("action", "robot_eef_pose"):
        if key not in episode:
            raise KeyError(f"a demo needs {key!r}; it has {sorted(episode)}")
    target, pose = np.asarray(episode["action"], np.float64), np.asarray(episode["robot_eef_pose"], np.float64)
    n = len(target)
    out = {k: np.asarray(v) for k, v in episode.items() if k not in ("action", "stage", "timestamp")}
    out["action"] = np.clip((target[:, :3] - pose[:, :3]) / max_delta, -1.0, 1.0).astype(np.float32)
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
    out["reward"] = reward
    out["terminal"] = np.zeros(n, np.uint8)
    out["terminal"][-1] = 1
    return out


def main(argv: list[str] | None = None) -> dict:
    args = dict(a.split("=", 1) for a in (sys.argv[1:] if argv is None else argv))
    unknown = set(args) - {"src", "out", "max_delta", "classifier", "threshold"}
    if unknown or not {"src", "out"} <= set(args):
        raise SystemExit("usage: python -m policylab.real.rl_demos src=<demo store> out=<rl store> "
                         "[max_delta=0.02] [classifier=<checkpoint>] [threshold=0.75]")
    classifier = None
    if args.get("classifier"):
        from policylab.rl.reward_classifier import load_reward_classifier

        classifier = load_reward_classifier(args["classifier"])
    src = ReplayBuffer.create_from_path(args["src"], mode="r")
    Path(args["out"]).parent.mkdir(parents=True, exist_ok=True)
    out = ReplayBuffer.create_from_path(args["out"], mode="a")
    added = 0
    for i in range(out.n_episodes, src.n_episodes):
        episode = convert_episode(src.get_episode(i, copy=True), float(args.get("max_delta", 0.02)), classifier,
                                  float(args.get("threshold", 0.75)))
        images = [k for k, v in episode.items() if v.ndim == 4]
        out.add_episode(episode, chunks={k: (1, *episode[k].shape[1:]) for k in images},
                        compressors={k: "image" if k in images else "disk" for k in episode})
        added += 1
    print(f"{added} demos converted; {out.n_episodes} episodes, {out.n_steps} steps in {args['out']}")
    return {"added": added, "episodes": out.n_episodes}


if __name__ == "__main__":
    main()
