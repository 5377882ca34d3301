"""RL buffers: zarr stores in the run directory, RLPD-style mixed batches, intervention routing.

ConRFT keeps two buffers: the online replay buffer (every actor step) and the demo buffer (the
demonstrations plus every intervened step, so interventions fill half of each Stage II batch).
Both are `OnlineReplayStore`s here: a zarr ReplayBuffer on disk, written first (its `add_episode`
grows the data arrays, then writes `meta/episode_ends`; a torn append is discarded on open), and a
numpy copy in memory that the TransitionSampler reads. Reopening a path resumes with its episodes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from policylab.common.obs import stored_to_policy
from policylab.common.shape_meta import ShapeMeta
from policylab.data.replay_buffer import EPISODE_ENDS, ReplayBuffer, get_optimal_chunks
from policylab.rl.transitions import INTERVENTION, REWARD, TERMINAL, TransitionSampler

FLOAT_KEYS = ("action", REWARD)
FLAG_KEYS = (TERMINAL, INTERVENTION)
# Rows per zarr chunk are sized for a long buffer, not the first episode: appends then
# rewrite one partial chunk instead of creating a file per episode.
CHUNK_ROWS = 4096


class OnlineReplayStore:
    """Episodes on disk at `path` (zarr, lossless) mirrored in memory, with a TransitionSampler.

    Store keys: the shape_meta obs `zarr_key`s, action (L, Da) float32, reward (L,) float32,
    terminal (L,) uint8, intervention (L,) uint8 (zeros when an episode has none) and
    `embedding_key` (L, D) float32 if given. Other keys of an added episode are not stored.

    Args:
        path: a `.zarr` directory; created if missing, reopened (resume) if present.
        shape_meta, horizon, n_obs_steps, n_action_steps, gamma, **sampler_kwargs: the
            TransitionSampler's arguments (reward_scale, reward_bias, reward_neg, ...).
    """

    def __init__(self, path, shape_meta, horizon: int, n_obs_steps: int, n_action_steps: int, gamma: float,
                 **sampler_kwargs):
        self.path = Path(path)
        self.meta = ShapeMeta.parse(shape_meta)
        self.shape_meta = self.meta.to_dict()
        self.embedding_key = sampler_kwargs.get("embedding_key")
        self.disk = ReplayBuffer.create_from_path(self.path, mode="a")
        if self.disk.n_episodes:
            self._check_keys(set(self.disk.keys()), f"store {self.path}")
        n = self.disk.n_steps
        self.replay_buffer = ReplayBuffer({
            "data": {key: np.asarray(arr[:n]) for key, arr in self.disk.items()},
            "meta": {EPISODE_ENDS: self.disk.episode_ends.copy()},
        })
        self.sampler = TransitionSampler(self.replay_buffer, self.shape_meta, horizon, n_obs_steps,
                                         n_action_steps, gamma, **sampler_kwargs)

    @classmethod
    def from_demos(cls, path, demos: ReplayBuffer, shape_meta, horizon: int, n_obs_steps: int,
                   n_action_steps: int, gamma: float,
                   transform: Callable[[dict], dict] | None = None, **sampler_kwargs) -> OnlineReplayStore:
        """The demo-side store at `path`: a copy of `demos` the first time, reopened afterwards.

        Demo episodes without `terminal` get 1 at their last step (demo stores hold successful
        episodes, which end by termination). `transform(episode) -> episode` runs on each first,
        e.g. to add frozen-encoder embeddings. The copy is written next to `path` and renamed
        into place, so a crash never leaves a half-copied store that would be reopened as whole.
        """
        path = Path(path)
        if not path.exists():
            keys = _store_keys(ShapeMeta.parse(shape_meta), sampler_kwargs.get("embedding_key"))
            memory = ReplayBuffer.create_empty_numpy()
            # Only the store's keys are read (demo stores may hold images the task does not use);
            # a transform may need any of them.
            read = list(demos.keys()) if transform else [k for k in keys if k in demos]
            for i in range(demos.n_episodes):
                steps = demos.get_episode_slice(i)
                episode = {k: np.asarray(demos[k][steps]) for k in read}
                if TERMINAL not in episode:
                    episode[TERMINAL] = np.zeros(len(episode["action"]), np.uint8)
                    episode[TERMINAL][-1] = 1
                episode = transform(episode) if transform else episode
                memory.add_episode(prepare_episode(episode, keys, shape_meta, memory, f"demo episode {i}"))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
            memory.save_to_path(tmp / path.name, compressors=dict.fromkeys(memory.keys(), "disk"),
                                chunks=_chunks(dict(memory.items())))
            os.replace(tmp / path.name, path)
            shutil.rmtree(tmp, ignore_errors=True)
        return cls(path, shape_meta, horizon, n_obs_steps, n_action_steps, gamma, **sampler_kwargs)

    @property
    def keys(self) -> list[str]:
        return _store_keys(self.meta, self.embedding_key)

    @property
    def n_episodes(self) -> int:
        return self.replay_buffer.n_episodes

    @property
    def n_steps(self) -> int:
        return self.replay_buffer.n_steps

    def _check_keys(self, stored: set[str], where: str) -> None:
        if stored != set(self.keys):
            raise ValueError(f"{where} holds keys {sorted(stored)} but this store needs {self.keys}: "
                             f"missing {sorted(set(self.keys) - stored)}, extra {sorted(stored - set(self.keys))}")

    def add_episode(self, episode: Mapping[str, np.ndarray], name: str | None = None) -> None:
        """Validate, then append `{key: (L, ...)}` on disk and in memory, and extend the sampler.

        Refused with a ValueError naming the episode and the key, and nothing written, when a
        required key is missing, lengths or per-step shapes disagree with the store (or the
        shape_meta for its first episode), a float value is NaN/inf, or a flag is not 0/1 or
        `terminal` is set before the last step.
        """
        label = f"episode {self.n_episodes}" + (f" ({name})" if name else "")
        episode = prepare_episode(episode, self.keys, self.shape_meta, self.replay_buffer, label)
        self.disk.add_episode(episode, chunks=_chunks(episode), compressors="disk")
        self.replay_buffer.add_episode(episode)
        self.sampler.extend()


def _store_keys(meta: ShapeMeta, embedding_key: str | None) -> list[str]:
    keys = {spec.zarr_key for spec in meta.obs.values()} | {meta.action_zarr_key}
    keys |= {REWARD, TERMINAL, INTERVENTION} | ({embedding_key} if embedding_key else set())
    return sorted(keys)


def _chunks(arrays) -> dict:
    return {k: get_optimal_chunks((CHUNK_ROWS, *v.shape[1:]), v.dtype) for k, v in arrays.items()}


def prepare_episode(episode: Mapping, keys: list[str], shape_meta, stored: ReplayBuffer, label: str) -> dict:
    """The episode's store keys, cast to the store dtypes and checked; ValueError naming the key."""
    meta = ShapeMeta.parse(shape_meta)
    action_key = meta.action_zarr_key
    missing = sorted(set(keys) - set(episode) - {INTERVENTION})
    if missing:
        raise ValueError(f"{label}: missing keys {missing} (the store needs {keys})")
    out = {}
    for key in keys:
        if key == INTERVENTION and key not in episode:
            continue
        value = np.asarray(episode[key])
        if value.ndim == 0:
            raise ValueError(f"{label}: key {key!r} is a scalar; every key is (L, ...) per step")
        if key in FLAG_KEYS:
            if not np.isin(value, (0, 1)).all():
                raise ValueError(f"{label}: key {key!r} must hold 0/1 flags, got values {np.unique(value)[:5]}")
            value = value.astype(np.uint8)
        elif key in FLOAT_KEYS or key == action_key or np.issubdtype(value.dtype, np.floating):
            if not np.issubdtype(value.dtype, np.number) or np.issubdtype(value.dtype, np.complexfloating):
                raise ValueError(f"{label}: key {key!r} has dtype {value.dtype}, expected real numbers")
            value = value.astype(np.float32)
            bad = np.flatnonzero(~np.isfinite(value.reshape(len(value), -1)).all(axis=1))
            if len(bad):
                raise ValueError(f"{label}: key {key!r} has non-finite values (NaN/inf) at {len(bad)} "
                                 f"steps, first at step {int(bad[0])}")
        out[key] = value
    length = len(out[action_key])
    odd = {key: len(v) for key, v in out.items() if len(v) != length}
    if odd:
        raise ValueError(f"{label}: key {next(iter(odd))!r} has {odd[next(iter(odd))]} steps but "
                         f"{action_key!r} has {length} (every key is (L, ...), one row per step)")
    if length == 0:
        raise ValueError(f"{label}: key {action_key!r} is empty; an episode has L >= 1 steps")
    out.setdefault(INTERVENTION, np.zeros(length, np.uint8))
    if out[TERMINAL][:-1].any():
        raise ValueError(f"{label}: key 'terminal' is set at step {int(np.flatnonzero(out[TERMINAL])[0])}, "
                         f"before the last step {length - 1}")
    for key, value in out.items():
        _check_step_shape(key, value, meta, action_key, stored, label)
    return out


def _check_step_shape(key: str, value: np.ndarray, meta: ShapeMeta, action_key: str, stored: ReplayBuffer,
                      label: str) -> None:
    if key in stored:
        want, dtype = tuple(stored[key].shape[1:]), stored[key].dtype
        if value.shape[1:] != want or value.dtype != dtype:
            raise ValueError(f"{label}: key {key!r} has per-step shape {value.shape[1:]} {value.dtype} but "
                             f"the store holds {want} {dtype}")
        return
    if key in (REWARD, *FLAG_KEYS) and value.ndim != 1:
        raise ValueError(f"{label}: key {key!r} must be (L,), got {value.shape}")
    if key == action_key and (value.ndim != 2 or value.shape[1] != meta.action_dim):
        raise ValueError(f"{label}: key {key!r} must be (L, {meta.action_dim}), "
                         f"got {value.shape}")
    for obs_key, spec in meta.obs.items():
        if spec.zarr_key != key:
            continue
        got = stored_to_policy(spec, value[:1], 1).shape[1:]
        if tuple(got) != spec.shape:
            raise ValueError(f"{label}: key {key!r} per-step shape {value.shape[1:]} gives "
                             f"shape_meta.obs.{obs_key} {tuple(got)}, expected {spec.shape}")


class MixedSampler:
    """RLPD batches: round(B * online_fraction) online transitions, the rest demo-side.

    All from demos while the online sampler is empty (and all online if the demo side is).
    The generator comes from the caller, so a resumed run that restores it continues exactly.
    """

    def __init__(self, demo: TransitionSampler, online: TransitionSampler, online_fraction: float = 0.5):
        if not 0.0 <= online_fraction <= 1.0:
            raise ValueError(f"online_fraction must be in [0, 1], got {online_fraction}")
        self.demo, self.online, self.online_fraction = demo, online, online_fraction

    def __len__(self) -> int:
        return len(self.demo) + len(self.online)

    def sample(self, batch_size: int, generator: np.random.Generator | torch.Generator) -> dict:
        """`{...TransitionSampler fields (B, ...), "from_online": (B,) float}`, online rows first."""
        n_online = round(batch_size * self.online_fraction) if len(self.online) else 0
        if len(self.demo) == 0:
            n_online = batch_size
        parts = [(s, n, flag) for s, n, flag in ((self.online, n_online, 1.0),
                                                 (self.demo, batch_size - n_online, 0.0)) if n]
        batches = [s.sample(n, generator) for s, n, _ in parts]
        for batch, (_, n, flag) in zip(batches, parts):
            batch["from_online"] = torch.full((n,), flag)
        return _concat(batches)


def _concat(batches: list[dict]) -> dict:
    if len(batches) == 1:
        return batches[0]
    first, second = batches
    if set(first) != set(second):
        raise ValueError(f"online and demo batches have different keys: {sorted(set(first) ^ set(second))}")
    return {key: _concat([value, second[key]]) if isinstance(value, dict) else torch.cat([value, second[key]])
            for key, value in first.items()}


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
