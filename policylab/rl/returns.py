"""Monte-Carlo return-to-go, ConRFT's rule (its `examples/data_util.py`), for Cal-QL's calibration.

    G_t = r_t + gamma * G_{t+1} * (1 - done_t)          computed backwards over one episode

`done_t` is 1 only at the episode's last step. What follows that step differs by how it ended:

- terminal (success or failure-termination): nothing follows, the tail is 0. This is ConRFT's rule.
- time limit (not terminal): the episode would have gone on, so a zero tail would make a state's
  return depend on how close the time limit was (with negative step rewards, a failing episode
  would look better the shorter the limit). The tail is the last reward continuing for ever,
  `gamma * r_{L-1} / (1 - gamma)`: the stationary guess that needs no critic, and exactly ConRFT's
  sparse special case `reward_neg / (1 - gamma)` when the episode never left reward_neg. ConRFT
  itself cuts timeouts like terminals (tail 0); with a failure reward of 0 (our sparse tasks) the
  two agree, and demos end by termination, where they are identical.

The sparse special case is ConRFT's, unconditional: with `is_sparse` and every reward equal to
`reward_neg` (within float32 rounding: stores hold float32 rewards), G = reward_neg / (1 - gamma)
at every step, also for an episode that terminated by failure.
"""

from __future__ import annotations

import numpy as np


def check_gamma(gamma: float) -> float:
    gamma = float(gamma)
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
    return gamma


def _all_negative(rewards: np.ndarray, reward_neg: float) -> bool:
    return bool(np.all(np.isclose(rewards, reward_neg, rtol=1e-6, atol=1e-7)))


def _check_sparse(is_sparse: bool, reward_neg: float | None) -> None:
    if is_sparse and reward_neg is None:
        raise ValueError("is_sparse=True needs reward_neg (the reward of every non-success step)")


def mc_returns(rewards: np.ndarray, terminal_last: bool, gamma: float, reward_neg: float | None = None,
               is_sparse: bool = False) -> np.ndarray:
    """(L,) float64 discounted return-to-go of one episode, in reward units.

    Args:
        rewards: (L,) per-step rewards r_0..r_{L-1} (already scaled/biased if the caller does so;
            `reward_neg` must then be in the same units).
        terminal_last: the env terminated at step L-1; False for a time-limit end (see the module
            docstring for the tail used then).
        gamma: per-step discount in [0, 1).
        reward_neg, is_sparse: ConRFT's sparse special case.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 1 or len(rewards) == 0:
        raise ValueError(f"rewards must be (L,) with L >= 1, got shape {rewards.shape}")
    gamma = check_gamma(gamma)
    _check_sparse(is_sparse, reward_neg)
    if is_sparse and _all_negative(rewards, reward_neg):
        return np.full(len(rewards), reward_neg / (1.0 - gamma))
    out = np.empty_like(rewards)
    tail = 0.0 if terminal_last else rewards[-1] / (1.0 - gamma)  # G_L
    for t in range(len(rewards) - 1, -1, -1):
        tail = rewards[t] + gamma * tail
        out[t] = tail
    return out


def episode_mc_returns(rewards: np.ndarray, episode_ends: np.ndarray, terminal: np.ndarray | None,
                       gamma: float, reward_neg: float | None = None, is_sparse: bool = False) -> np.ndarray:
    """(N,) float64 `mc_returns` of every episode of a buffer, all episodes advanced together.

    Args:
        rewards: (N,) per-step rewards, episodes concatenated.
        episode_ends: (E,) cumulative episode ends (ReplayBuffer's `meta/episode_ends`).
        terminal: (N,) per-step terminal flags; only the flag at each episode's last step is read.
            None reads every episode as terminal (stores written before `terminal` existed hold
            only successful demos, which end by termination).
    One Python iteration per step of the longest episode, vectorized over episodes.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    ends = np.asarray(episode_ends, dtype=np.int64)
    gamma = check_gamma(gamma)
    _check_sparse(is_sparse, reward_neg)
    if rewards.ndim != 1 or (len(ends) and ends[-1] != len(rewards)):
        raise ValueError(f"rewards must be (N,) with N = episode_ends[-1]; got shape {rewards.shape} "
                         f"and episode_ends ending at {int(ends[-1]) if len(ends) else 0}")
    out = np.empty_like(rewards)
    if len(ends) == 0:
        return out
    starts = np.concatenate([[0], ends[:-1]])
    lengths = ends - starts
    terminal_last = np.ones(len(ends), bool) if terminal is None else np.asarray(terminal)[ends - 1] != 0
    tail = np.where(terminal_last, 0.0, rewards[ends - 1] / (1.0 - gamma))  # G_L
    for i in range(int(lengths.max())):
        alive = lengths > i
        steps = ends[alive] - 1 - i
        tail[alive] = rewards[steps] + gamma * tail[alive]
        out[steps] = tail[alive]
    if is_sparse:
        # Episodes whose every reward is reward_neg: a segment-wise "all" via counts.
        is_neg = np.isclose(rewards, reward_neg, rtol=1e-6, atol=1e-7)
        n_neg = np.add.reduceat(is_neg.astype(np.int64), starts)
        step_episode = np.repeat(np.arange(len(ends)), lengths)
        out[(n_neg == lengths)[step_episode]] = reward_neg / (1.0 - gamma)
    return out
