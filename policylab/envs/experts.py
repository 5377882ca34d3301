"""The scripted-expert interface shared by demo generation and the simulated human intervener.

An expert reads the privileged simulator state of an *unwrapped* env and returns the action to
take now. It keeps no memory of the episode's progress beyond per-episode constants drawn in
`reset` (noise offsets), so it can take over at any moment: the intervener
(`policylab.envs.interventions`) calls it on states the policy, not the expert, produced.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class Expert:
    """Base class: `act(env)` -> action (Da,), from the env's current state.

    Args:
        action_noise: std of Gaussian noise added to the action, in action units (the noise is
            clipped with the action to the env's action space).
        seed: seed of the noise generator; `reset(seed)` reseeds it per episode.
    """

    def __init__(self, action_noise: float = 0.0, seed: int | None = None):
        self.action_noise = float(action_noise)
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: reseed the noise and draw per-episode variations."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def act(self, env: gym.Env) -> np.ndarray:
        """The action for the current state of `env` (unwrapped here if needed)."""
        action = np.asarray(self.clean_action(env.unwrapped), dtype=np.float64)
        if self.action_noise > 0:
            action = action + self.rng.normal(0.0, self.action_noise, action.shape)
        space = env.unwrapped.action_space
        return np.clip(action, space.low, space.high)

    def clean_action(self, env: gym.Env) -> np.ndarray:
        """The noise-free action; subclasses implement it."""
        raise NotImplementedError

    def progress(self, env: gym.Env) -> float:
        """A scalar that grows as the task gets closer to done (for stall detection)."""
        return 0.0


class PickExpert(Expert):
    """Base of the scripted pick experts (pick-cube, robosuite Lift): the per-episode variations.

    `reset` draws a hover height (`HOVER` +- 2 cm), a grasp point within the cube (+- 4 mm in x, y,
    and in z unless `GRASP_Z` fixes it) and an approach speed (70-100 %), all scaled by `variation`.

    Args:
        action_noise: std of Gaussian action noise (action units).
        variation: scale of the per-episode offsets (0: the same plan every episode).
        seed: noise seed (also set per episode by `reset(seed)`).
    """

    HOVER = 0.07              # m above the grasp point
    GRASP_Z: float | None = None

    def __init__(self, action_noise: float = 0.0, variation: float = 1.0, seed: int | None = None):
        super().__init__(action_noise=action_noise, seed=seed)
        self.variation = float(variation)
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        v = self.variation
        self.hover = self.HOVER + v * self.rng.uniform(-0.02, 0.02)
        if self.GRASP_Z is None:
            self.grasp_offset = v * self.rng.uniform(-0.004, 0.004, size=3)
        else:
            self.grasp_offset = np.array([*(v * self.rng.uniform(-0.004, 0.004, 2)), self.GRASP_Z])
        self.speed = 1.0 - v * self.rng.uniform(0.0, 0.3)
