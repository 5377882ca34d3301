"""A simulated human intervener: a scripted expert that takes over from the policy.

On a real robot a person watches and grabs the SpaceMouse when the policy goes wrong; in
simulation `InterventionWrapper` plays that person so human-in-the-loop RL runs in CI. Every
inner step it asks the expert (`policylab.envs.experts.Expert`) for its action on the current
state, then decides who acts:

- **deviation**: the policy's action is farther than `deviation_threshold` (L2, action units)
  from the expert's for `patience` consecutive steps;
- **stall**: the expert's `progress(env)` has not improved by `stall_eps` for `stall_steps` steps.

Either starts a takeover of `takeover_steps` steps during which the expert's action is executed
(like a person who, once holding the mouse, corrects for a while before letting go). `info`
records, on every step:

    intervention    bool         whether the executed action was the expert's
    expert_action   (Da,)        the expert's action for this state (whoever acted)
    policy_action   (Da,)        the action the policy proposed
    action          (Da,)        the executed action (what a replay buffer should store)
    intervention_reason  str     "deviation" | "stall" | "" (while a takeover continues: its reason)

`get_intervention_stats()` counts takeovers and intervened steps of the current episode.
"""

from __future__ import annotations

import gymnasium as gym
import hydra
import numpy as np

from policylab.envs.experts import Expert


class InterventionWrapper(gym.Wrapper):
    """Executes the expert's action instead of the policy's when the policy strays or stalls.

    Args:
        env: the env the expert can read (its `unwrapped` exposes the expert's state).
        expert: the scripted expert.
        deviation_threshold: L2 distance between policy and expert actions that counts as a
            deviation (None: never).
        patience: consecutive deviating steps before taking over.
        stall_steps: steps without progress before taking over (None: never).
        stall_eps: minimum progress improvement that resets the stall counter.
        takeover_steps: length of one takeover, in steps.
        max_interventions: takeovers allowed per episode (None: unlimited).
        action_dims: which action dimensions the deviation is measured on (None: all).
    """

    def __init__(self, env: gym.Env, expert: Expert, deviation_threshold: float | None = 1.0,
                 patience: int = 2, stall_steps: int | None = 15, stall_eps: float = 0.005,
                 takeover_steps: int = 10, max_interventions: int | None = None,
                 action_dims: list[int] | None = None):
        super().__init__(env)
        if takeover_steps < 1 or patience < 1:
            raise ValueError("takeover_steps and patience must be >= 1")
        self.expert = expert
        self.deviation_threshold = deviation_threshold
        self.patience, self.takeover_steps = patience, takeover_steps
        self.stall_steps, self.stall_eps = stall_steps, stall_eps
        self.max_interventions = max_interventions
        self.action_dims = None if action_dims is None else list(action_dims)
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._remaining = 0
        self._reason = ""
        self._n_deviating = 0
        self._best_progress = -np.inf
        self._since_progress = 0
        self.n_interventions = 0
        self.n_intervened_steps = 0
        self.n_steps = 0

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.expert.reset(seed)
        self._reset_counters()
        self._best_progress = self.expert.progress(self.env.unwrapped)
        return obs, info

    def step(self, action):
        policy_action = np.asarray(action, dtype=np.float64)
        expert_action = np.asarray(self.expert.act(self.env), dtype=np.float64)
        if self._remaining == 0:
            self._maybe_take_over(policy_action, expert_action)
        intervening = self._remaining > 0
        executed = expert_action if intervening else policy_action
        obs, reward, terminated, truncated, info = self.env.step(executed)

        self.n_steps += 1
        if intervening:
            self._remaining -= 1
            self.n_intervened_steps += 1
        self._track_progress()
        info = dict(info)
        info.update(intervention=intervening, intervention_reason=self._reason if intervening else "",
                    expert_action=expert_action, policy_action=policy_action, action=executed)
        return obs, reward, terminated, truncated, info

    def _maybe_take_over(self, policy_action: np.ndarray, expert_action: np.ndarray) -> None:
        if self.max_interventions is not None and self.n_interventions >= self.max_interventions:
            return
        dims = self.action_dims if self.action_dims is not None else slice(None)
        deviation = float(np.linalg.norm(policy_action[dims] - expert_action[dims]))
        deviating = self.deviation_threshold is not None and deviation > self.deviation_threshold
        self._n_deviating = self._n_deviating + 1 if deviating else 0
        stalled = self.stall_steps is not None and self._since_progress >= self.stall_steps
        reason = "deviation" if self._n_deviating >= self.patience else "stall" if stalled else ""
        if reason:
            self._remaining, self._reason = self.takeover_steps, reason
            self.n_interventions += 1
            self._n_deviating = 0
            self._since_progress = 0

    def _track_progress(self) -> None:
        progress = self.expert.progress(self.env.unwrapped)
        if progress > self._best_progress + self.stall_eps:
            self._best_progress, self._since_progress = progress, 0
        else:
            self._since_progress += 1

    def get_intervention_stats(self) -> dict:
        """Takeovers, intervened steps and steps of the current episode."""
        return {"n_interventions": self.n_interventions,
                "n_intervened_steps": self.n_intervened_steps, "n_steps": self.n_steps}


def make_intervened_env(env_id: str, expert: dict | Expert, env_kwargs: dict | None = None,
                        **wrapper_kwargs) -> InterventionWrapper:
    """`gymnasium.make(env_id, **env_kwargs)` wrapped in an `InterventionWrapper`.

    `expert` is an Expert or a Hydra `_target_` dict (e.g. from a task config's `expert` entry),
    so env runners and RL actors can build an intervened env from config alone.
    """
    if not isinstance(expert, Expert):
        expert = hydra.utils.instantiate(expert)
    return InterventionWrapper(gym.make(env_id, **(env_kwargs or {})), expert, **wrapper_kwargs)


if "policylab/Intervened-v0" not in gym.registry:
    # gym.make("policylab.envs.interventions:policylab/Intervened-v0", env_id=..., expert={...})
    gym.register(id="policylab/Intervened-v0", entry_point=make_intervened_env)
