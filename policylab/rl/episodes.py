"""The RL episode contract: its keys, the store layout, the one validator, intervention routing.

An episode is `{key: (L, ...)}`, one row per env step; a store (a `ReplayBuffer`) concatenates
episodes along the first axis and ends each at `meta/episode_ends`::

    <obs zarr_key> (L, ...)   the env's obs the step's action was chosen from, in the stored layout
                              (`to_store`): rgb (H, W, 3) uint8, the rest float32
    action (L, Da)            float32, the EXECUTED action (the human's while intervening)
    reward (L,)               float32
    terminal (L,)             uint8, 1 only at the last step and only if the env terminated there
                              (a time limit is not terminal); absent in demo stores written before
                              it existed: every such episode is terminal at its last step
    intervention (L,)         uint8, optional, 1 where the executed action was the human's
                              (absent: zeros)
    <embedding key> (L, D)    float32, optional: a frozen encoder on the obs window ending there
    trunk_<rgb key> (L, C, h, w)  float16, optional: the critic's frozen image trunk on that
                              step's frame (`models.critic.trunk_key`; `rl.trunk_features`)
    stem_<rgb key> (L, C, h, w)   float16, optional: the frozen encoder's stem maps an actor's
                              image head reads, when the critic's trunk is another (`policies.image_head`)

Writers: the RL actor (`rl.actor`, sim and robot), the scripted-demo generator
(`data.generate.demos`), the robot's demo converter (`robot_apps.rl_demos`). Readers: the
learner's stores (`rl.buffers`) and the transition sampler (`rl.transitions`). Every rule an
episode must keep is checked by `validate_steps`, for one episode or a whole store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import gymnasium as gym
import numpy as np

from policylab.common.obs import stored_to_policy
from policylab.common.shape_meta import ShapeMeta
from policylab.models.critic import STEM_PREFIX, TRUNK_PREFIX, stem_key, trunk_key

ACTION, REWARD, TERMINAL, INTERVENTION, EMBEDDING = "action", "reward", "terminal", "intervention", "embedding"
FLAG_KEYS = (TERMINAL, INTERVENTION)


def to_store(obs: Mapping, observation_space: gym.spaces.Dict) -> dict[str, np.ndarray]:
    """One env obs -> its store row: (3, H, W) images in [0, 1] back to (H, W, 3) uint8, rest float32.

    A non-finite image is refused (ValueError naming the key): cast to uint8, NaN would become a
    black frame that every later check passes. Values a rounding error past [0, 1] are clipped
    (cast alone, 1.003 would wrap to 0).
    """
    row = {}
    for key, value in obs.items():
        space = observation_space[key]
        if len(space.shape) == 3 and space.shape[0] == 3:
            value = np.asarray(value)
            if not np.isfinite(value).all():
                raise ValueError(f"observation {key!r} holds non-finite values (NaN/inf) at "
                                 f"{int(np.count_nonzero(~np.isfinite(value)))} pixels: a camera frame must be finite")
            row[key] = np.clip(np.rint(np.moveaxis(value, 0, -1) * 255), 0, 255).astype(np.uint8)
        else:
            row[key] = np.asarray(value, dtype=np.float32)
    return row


def store_keys(meta: ShapeMeta, embedding_key: str | None = None, trunk_rgb_keys=(), stem_rgb_keys=()) -> list[str]:
    """The keys an RL store holds for `meta`: its obs `zarr_key`s, action, reward, the flags, the
    embedding, the cached trunk features of `trunk_rgb_keys` and the stem maps of `stem_rgb_keys`."""
    keys = {spec.zarr_key for spec in meta.obs.values()} | {meta.action_zarr_key, REWARD, *FLAG_KEYS}
    keys |= {trunk_key(k) for k in trunk_rgb_keys} | {stem_key(k) for k in stem_rgb_keys}
    return sorted(keys | ({embedding_key} if embedding_key else set()))


def validate_steps(steps: Mapping[str, np.ndarray], ends: np.ndarray, label: Callable[[int], str]) -> None:
    """Raise ValueError naming the key and the episode (`label(e)`) unless every step keeps the contract.

    Args:
        steps: `{key: (N, ...)}` of consecutive episodes (one episode: N = L).
        ends: (E,) cumulative episode ends within `steps`, the last equal to N.
        label: episode index (into `ends`) -> how the error names it, e.g. "episode 3 (actor 7)".
    Checked: floating values are finite; flags hold 0/1; `terminal` is set at an episode's last
    step only.
    """
    ends = np.asarray(ends, dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    for key, value in steps.items():
        value = np.asarray(value)
        if key in FLAG_KEYS:
            bad = np.flatnonzero(~np.isin(value, (0, 1)))
            if len(bad):
                e = int(np.searchsorted(ends, bad[0], side="right"))
                raise ValueError(f"{label(e)}: key {key!r} must hold 0/1 flags, got values {np.unique(value)[:5]}")
        elif np.issubdtype(value.dtype, np.floating) and len(value):
            bad = np.flatnonzero(~np.isfinite(value.reshape(len(value), -1)).all(axis=1))
            if len(bad):
                e = int(np.searchsorted(ends, bad[0], side="right"))
                raise ValueError(f"{label(e)}: key {key!r} has non-finite values (NaN/inf) at {len(bad)} "
                                 f"steps, first at step {int(bad[0] - starts[e])}")
    if TERMINAL in steps:
        flags = np.flatnonzero(np.asarray(steps[TERMINAL]))
        early = flags[~np.isin(flags, ends - 1)]
        if len(early):
            e = int(np.searchsorted(ends, early[0], side="right"))
            raise ValueError(f"{label(e)}: key {TERMINAL!r} is set at step {int(early[0] - starts[e])}, "
                             f"before the last step {int(ends[e] - 1 - starts[e])}")


def validate_episode(episode: Mapping[str, np.ndarray], label: str = "episode") -> None:
    """Raise ValueError naming the key unless `episode` keeps the contract (module docstring).

    It needs action, reward and terminal, L >= 1 steps in every key, and `validate_steps`' rules.
    """
    missing = sorted({ACTION, REWARD, TERMINAL} - set(episode))
    if missing:
        raise ValueError(f"{label}: missing keys {missing}; it has {sorted(episode)}")
    length = len(episode[ACTION])
    for key, value in episode.items():
        if np.ndim(value) == 0:
            raise ValueError(f"{label}: key {key!r} is a scalar; every key is (L, ...) per step")
        if len(value) != length:
            raise ValueError(f"{label}: key {key!r} has {len(value)} steps but {ACTION!r} has {length} "
                             f"(every key is (L, ...), one row per step)")
    if length == 0:
        raise ValueError(f"{label}: key {ACTION!r} is empty; an episode has L >= 1 steps")
    validate_steps(episode, np.array([length]), lambda _: label)


def prepare_episode(episode: Mapping, keys: list[str], meta: ShapeMeta, stored: Mapping, label: str) -> dict:
    """The episode's store `keys`, validated and cast to the store's dtypes; ValueError naming the key.

    Floats become float32 (trunk features float16), flags uint8; a missing `intervention` becomes zeros. The per-step
    shapes must equal `stored`'s arrays (a store's first episode: fit `meta`).
    """
    missing = sorted(set(keys) - set(episode) - {INTERVENTION})
    if missing:
        raise ValueError(f"{label}: missing keys {missing} (the store needs {keys})")
    out = {}
    for key in keys:
        if key not in episode:
            continue
        value = np.asarray(episode[key])
        if key not in FLAG_KEYS and value.ndim and (key in (ACTION, REWARD, meta.action_zarr_key)
                                                    or np.issubdtype(value.dtype, np.floating)):
            if not np.issubdtype(value.dtype, np.number) or np.issubdtype(value.dtype, np.complexfloating):
                raise ValueError(f"{label}: key {key!r} has dtype {value.dtype}, expected real numbers")
            value = value.astype(np.float16 if key.startswith((TRUNK_PREFIX, STEM_PREFIX)) else np.float32)
        out[key] = value
    validate_episode({ACTION: out[meta.action_zarr_key], **out}, label)
    length = len(out[meta.action_zarr_key])
    out[INTERVENTION] = out.get(INTERVENTION, np.zeros(length, np.uint8))
    for key in FLAG_KEYS:
        out[key] = out[key].astype(np.uint8)
    for key, value in out.items():
        _check_step_shape(key, value, meta, stored, label)
    return out


def _check_step_shape(key: str, value: np.ndarray, meta: ShapeMeta, stored: Mapping, label: str) -> None:
    if key in stored:
        want, dtype = tuple(stored[key].shape[1:]), stored[key].dtype
        if value.shape[1:] != want or value.dtype != dtype:
            raise ValueError(f"{label}: key {key!r} has per-step shape {value.shape[1:]} {value.dtype} but "
                             f"the store holds {want} {dtype}")
        return
    if key in (REWARD, *FLAG_KEYS) and value.ndim != 1:
        raise ValueError(f"{label}: key {key!r} must be (L,), got {value.shape}")
    if key == meta.action_zarr_key and (value.ndim != 2 or value.shape[1] != meta.action_dim):
        raise ValueError(f"{label}: key {key!r} must be (L, {meta.action_dim}), got {value.shape}")
    for obs_key, spec in meta.obs.items():
        if spec.zarr_key != key:
            continue
        got = stored_to_policy(spec, value[:1], 1).shape[1:]
        if tuple(got) != spec.shape:
            raise ValueError(f"{label}: key {key!r} per-step shape {value.shape[1:]} gives "
                             f"shape_meta.obs.{obs_key} {tuple(got)}, expected {spec.shape}")


def route_episode(episode: Mapping[str, np.ndarray]) -> tuple[dict, list[dict] | None]:
    """(the whole episode for the online store, its intervened segments for the demo side or None).

    Each maximal run of `intervention == 1`, steps a..b-1, becomes one demo-side episode. When
    the run stops before the episode's end, the next step b (a policy step) is kept as the
    segment's last, non-terminal step: it holds the next observation of the run's last action, so
    every intervened chunk keeps its transition, while b's own action is never executed in a
    transition (a non-terminal last step has no next observation). A run reaching the episode's
    end keeps the episode's `terminal` flag. Without `intervention`, there is nothing to route.
    """
    episode = {key: np.asarray(value) for key, value in episode.items()}
    if INTERVENTION not in episode or not episode[INTERVENTION].any():
        return episode, None
    flag = episode[INTERVENTION].astype(bool)
    length = len(flag)
    edges = np.flatnonzero(np.diff(np.concatenate([[False], flag, [False]]).astype(np.int8)))
    segments = []
    for start, stop in zip(edges[::2], edges[1::2]):
        end = min(stop + 1, length)
        segment = {key: value[start:end].copy() for key, value in episode.items()}
        if TERMINAL in segment:
            segment[TERMINAL][:] = 0
            segment[TERMINAL][-1] = episode[TERMINAL][-1] if end == length else 0
        segments.append(segment)
    return episode, segments
