"""RL buffers: zarr stores in the run directory and RLPD-style mixed batches.

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

from policylab.common.shape_meta import ShapeMeta
from policylab.data.replay_buffer import EPISODE_ENDS, ReplayBuffer, get_optimal_chunks
from policylab.rl.episodes import TERMINAL, prepare_episode, store_keys, validate_steps
from policylab.rl.transitions import TransitionSampler, TransitionSpec, check_types

TRUNK_ATTR = "policylab_trunk_identity"  # root attribute: which frozen trunk made the trunk_* features
# Rows per zarr chunk are sized for a long buffer, not the first episode: appends then
# rewrite one partial chunk instead of creating a file per episode.
CHUNK_ROWS = 4096


class OnlineReplayStore:
    """Episodes on disk at `path` (zarr, lossless) mirrored in memory, with a TransitionSampler.

    Store keys (`policylab.rl.episodes.store_keys`): the shape_meta obs `zarr_key`s, action,
    reward, terminal, intervention (zeros when an episode has none) and `spec.embedding_key` if
    given. Other keys of an added episode are not stored.

    Args:
        path: a `.zarr` directory; created if missing, reopened (resume) if present. A reopened
            store is checked whole (`policylab.rl.episodes.validate_steps`): a NaN/inf or a bad
            flag already on disk is refused with a ValueError naming the key and the episode.
        shape_meta: the task's.
        spec: the TransitionSampler's windows, discount and reward shaping.
    """

    def __init__(self, path, shape_meta: ShapeMeta, spec: TransitionSpec):
        check_types(shape_meta, spec)
        self.path = Path(path)
        self.meta, self.spec = shape_meta, spec
        self.embedding_key = spec.embedding_key
        self.disk = ReplayBuffer.create_from_path(self.path, mode="a")
        if self.disk.n_episodes:
            self._check_keys(set(self.disk.keys()), f"store {self.path}")
        _check_trunk_identity(self.disk, spec, self.path)
        n = self.disk.n_steps
        self.replay_buffer = ReplayBuffer({
            "data": {key: np.asarray(arr[:n]) for key, arr in self.disk.items()},
            "meta": {EPISODE_ENDS: self.disk.episode_ends.copy()},
        })
        validate_steps(dict(self.replay_buffer.items()), self.replay_buffer.episode_ends,
                       lambda e: f"store {self.path}: episode {e}")
        self.sampler = TransitionSampler(self.replay_buffer, shape_meta, spec)

    @classmethod
    def from_demos(cls, path, demos: ReplayBuffer, shape_meta: ShapeMeta, spec: TransitionSpec,
                   transform: Callable[[dict], dict] | None = None) -> OnlineReplayStore:
        """The demo-side store at `path`: a copy of `demos` the first time, reopened afterwards.

        Demo episodes without `terminal` get 1 at their last step (demo stores hold successful
        episodes, which end by termination). `transform(episode) -> episode` runs on each first,
        e.g. to add frozen-encoder embeddings. The copy is written next to `path` and renamed
        into place, so a crash never leaves a half-copied store that would be reopened as whole.
        """
        check_types(shape_meta, spec)
        path = Path(path)
        if not path.exists():
            keys = store_keys(shape_meta, spec.embedding_key, spec.trunk_keys, spec.stem_keys)
            memory = ReplayBuffer.create_empty_numpy()
            # Only the store's keys are read (demo stores may hold images the task does not use);
            # a transform may need any of them.
            read = list(demos.keys()) if transform else [k for k in keys if k in demos]
            for i in range(demos.n_episodes):
                steps = demos.get_episode_slice(i)
                episode = {k: np.asarray(demos[k][steps]) for k in read}
                if TERMINAL not in episode:
                    episode[TERMINAL] = np.zeros(len(episode[shape_meta.action_zarr_key]), np.uint8)
                    episode[TERMINAL][-1] = 1
                episode = transform(episode) if transform else episode
                memory.add_episode(prepare_episode(episode, keys, shape_meta, memory, f"demo episode {i}"))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
            memory.save_to_path(tmp / path.name, compressors=dict.fromkeys(memory.keys(), "disk"),
                                chunks=_chunks(dict(memory.items())))
            if spec.trunk_keys:
                with ReplayBuffer.create_from_path(tmp / path.name, mode="a") as written:
                    written.root.attrs[TRUNK_ATTR] = spec.trunk_identity
            os.replace(tmp / path.name, path)
            shutil.rmtree(tmp, ignore_errors=True)
        return cls(path, shape_meta, spec)

    @property
    def keys(self) -> list[str]:
        return store_keys(self.meta, self.embedding_key, self.spec.trunk_keys, self.spec.stem_keys)

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
        episode = prepare_episode(episode, self.keys, self.meta, self.replay_buffer, label)
        self.disk.add_episode(episode, chunks=_chunks(episode), compressors="disk")
        self.replay_buffer.add_episode(episode)
        self.sampler.extend()


def _check_trunk_identity(disk: ReplayBuffer, spec: TransitionSpec, path: Path) -> None:
    """Stored trunk features must come from the trunk the critic has now; a new store records it."""
    if not spec.trunk_keys:
        return
    stored = disk.root.attrs.get(TRUNK_ATTR)
    if stored is None and not disk.n_episodes:
        disk.root.attrs[TRUNK_ATTR] = spec.trunk_identity
    elif stored != spec.trunk_identity:
        raise ValueError(f"store {path} holds trunk features of the frozen trunk {stored or '<unrecorded>'}, but the "
                         f"critic's trunk is {spec.trunk_identity}: a changed trunk or weights file; start a new run "
                         "(a new hydra.run.dir) or use the trunk the store was made with")


def _chunks(arrays) -> dict:
    return {k: get_optimal_chunks((CHUNK_ROWS, *v.shape[1:]), v.dtype) for k, v in arrays.items()}


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
