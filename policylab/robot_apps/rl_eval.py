"""Evaluate an RL policy (delta actions) on the robot: `python eval_real_robot.py mode=rl_actor`.

The episodes are the online actor's (`rl.actor.run_episode` on `RealRobotRLEnv`), without a
learner: the same observations, action scaling, safety box, resets and SpaceMouse takeovers, so
what is measured is what Stage II trained. Success is the reward classifier's (`rl.reward_classifier`
given) or the operator's `y` key; takeovers are counted, not hidden. Writes `eval_stats.json`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from policylab.rl.actor import run_episode
from policylab.robot_apps.rl_env import RealRobotRLEnv, build_real_rl_env

log = logging.getLogger(__name__)


def make_rl_env(devices: Mapping, shape_meta: Mapping, rl: Mapping):
    """RealRobotRLEnv from `eval.yaml`'s device configs and its `rl` section (classifier included)."""
    options = dict(rl)
    classifier = options.pop("reward_classifier", None)
    env: RealRobotRLEnv = build_real_rl_env(shape_meta=shape_meta, **devices, **options)
    if classifier is None:
        return env
    from policylab.rl.reward_classifier import ClassifierReward

    classifier = dict(classifier)
    return ClassifierReward(env, classifier.pop("checkpoint"), **classifier)


def run_rl_eval(env, policy, n_episodes: int, max_steps: int, seed: int = 0, stats_path: str | None = None) -> dict:
    """`n_episodes` episodes of `policy`; per episode: success, return, length, takeovers, loop rate."""
    episodes = []
    try:
        for i in range(n_episodes):
            _, stats = run_episode(policy, env, seed + i, policy.n_obs_steps, policy.n_action_steps, max_steps)
            inner = env.unwrapped
            stats["fault"] = inner.fault
            episodes.append(stats)
            log.info("episode %d: %s", i, stats)
            if inner.fault is not None:
                break
    except KeyboardInterrupt:  # q while waiting for the next episode
        log.info("stopped by q after %d episodes", len(episodes))
    finally:
        env.close()
    result = {"episodes": episodes, "n_episodes": len(episodes),
              "success_rate": float(np.mean([e["success"] for e in episodes])) if episodes else 0.0,
              "intervention_rate": float(np.mean([e["intervention_rate"] for e in episodes])) if episodes else 0.0}
    if stats_path:
        Path(stats_path).parent.mkdir(parents=True, exist_ok=True)
        Path(stats_path).write_text(json.dumps(result, indent=2))
    return result
