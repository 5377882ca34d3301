"""Meta-World's own scripted v3 policies as `Expert`s (demo generation and interventions).

Meta-World's policies are functions of the current observation (its `get_action(obs)` keeps no
state), so they can take over from any state.
"""

from __future__ import annotations

import warnings

import numpy as np

from policylab.envs.experts import Expert


class MetaWorldExpert(Expert):
    """`metaworld.policies.ENV_POLICY_MAP[task]` on `MetaWorldEnv.raw_obs`.

    Args:
        task: the Meta-World task name (same as the env's).
        action_noise: std of Gaussian action noise (action units).
        seed: noise seed (also set per episode by `reset(seed)`).
    """

    def __init__(self, task: str, action_noise: float = 0.0, seed: int | None = None):
        from metaworld.policies import ENV_POLICY_MAP

        super().__init__(action_noise=action_noise, seed=seed)
        if task not in ENV_POLICY_MAP:
            raise ValueError(f"Meta-World has no scripted policy for {task!r}")
        self.task = task
        self.policy = ENV_POLICY_MAP[task]()

    def clean_action(self, env) -> np.ndarray:
        with warnings.catch_warnings():  # "Constant(s) may be too high": the env clips anyway
            warnings.simplefilter("ignore", UserWarning)
            return np.clip(self.policy.get_action(env.raw_obs), -1, 1)

    def progress(self, env) -> float:
        """Meta-World's shaped reward (0..10) of the last step."""
        return float(env.last_info.get("unscaled_reward", 0.0))
