"""One generic dataset for every task, driven by the task's `shape_meta` (`policylab.common.shape_meta`).

`zarr_key` names the store array of an obs key and `index` a slice of its last axis, so Diffusion
Policy's published files train unchanged without a per-task class. `rgb` keys are stored
`(N, H, W, C)`, uint8 or float 0..255 (DP's PushT), and come out `(To, C, H, W)` float32 in [0, 1];
`low_dim` keys come out `(To, D)` float32 (`policylab.common.obs`, the conversion every path uses).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from policylab.common.obs import check_stored_shapes, stored_to_policy, to_policy_obs
from policylab.common.shape_meta import ShapeMeta
from policylab.data.datasets.base import BaseDataset
from policylab.data.normalizer import (
    LinearNormalizer,
    SingleFieldLinearNormalizer,
    get_image_range_normalizer,
)
from policylab.data.replay_buffer import ReplayBuffer
from policylab.data.sampler import SequenceSampler, downsample_mask, get_val_mask


def _flat_columns(spec, replay_buffer: ReplayBuffer) -> slice | np.ndarray:
    """The columns of `(N, D)`-flattened stored rows that are this low-dim key's `index` slice."""
    if spec.index is None:
        return slice(None)
    stored = tuple(replay_buffer[spec.zarr_key].shape[1:])
    if len(stored) <= 1:
        return slice(*spec.index)
    return np.arange(int(np.prod(stored))).reshape(stored)[..., spec.index[0]:spec.index[1]].reshape(-1)


class SequenceDataset(BaseDataset):
    """Windows of T steps from a ReplayBuffer, as `{"obs": {key: (To, ...)}, "action": (T, Da)}`.

    Args:
        zarr_path: a `.zarr` directory or `.zarr.zip` file (or pass `replay_buffer`).
        horizon: T, the action window; n_obs_steps: To, the observation window (its first To steps).
        n_action_steps: Ta, the executed actions (default T-To+1, every action after the first obs).
        pad_before / pad_after: default To-1 and Ta-1 (Diffusion Policy's choice).
        val_ratio, seed: episodes held out by `get_val_mask`; max_train_episodes: downsample.
    """

    def __init__(self, shape_meta, horizon: int, n_obs_steps: int, zarr_path: str | None = None,
                 replay_buffer: ReplayBuffer | None = None, n_action_steps: int | None = None,
                 pad_before: int | None = None,
                 pad_after: int | None = None, val_ratio: float = 0.0, max_train_episodes: int | None = None,
                 seed: int = 42):
        self.meta = ShapeMeta.parse(shape_meta)
        self.shape_meta = self.meta.to_dict()
        if n_obs_steps > horizon:
            raise ValueError(f"n_obs_steps (To={n_obs_steps}) cannot exceed horizon (T={horizon})")
        self.horizon, self.n_obs_steps = horizon, n_obs_steps
        obs_zarr_keys = sorted({spec.zarr_key for spec in self.meta.obs.values()})
        self.action_zarr_key = self.meta.action_zarr_key
        self._obs_zarr_keys = obs_zarr_keys
        zarr_keys = sorted(set(obs_zarr_keys) | {self.action_zarr_key})
        if replay_buffer is None:
            if zarr_path is None:
                raise ValueError("SequenceDataset needs zarr_path or replay_buffer")
            replay_buffer = ReplayBuffer.copy_from_path(zarr_path, keys=zarr_keys)
        self.replay_buffer = replay_buffer
        self._check_shapes()
        # (key, zarr_key, columns of the flattened stored array, spec if rgb else None): the per-item plan
        self._item_plan = [(key, spec.zarr_key, None if spec.is_rgb else _flat_columns(spec, replay_buffer),
                            spec if spec.is_rgb else None) for key, spec in self.meta.obs.items()]
        self._flat: dict[str, np.ndarray] | None = None

        val_mask = get_val_mask(replay_buffer.n_episodes, val_ratio, seed=seed)
        self.train_mask = downsample_mask(~val_mask, max_train_episodes, seed=seed)
        self.val_mask = val_mask
        # Observation keys only need their first To frames: the rest are never decoded.
        first_k = {k: n_obs_steps for k in obs_zarr_keys if k != self.action_zarr_key}
        self._first_k = first_k
        self.pad_before = n_obs_steps - 1 if pad_before is None else pad_before
        n_action_steps = horizon - n_obs_steps + 1 if n_action_steps is None else n_action_steps
        self.pad_after = n_action_steps - 1 if pad_after is None else pad_after
        self._sampler_args = {"sequence_length": horizon, "pad_before": self.pad_before,
                              "pad_after": self.pad_after, "keys": zarr_keys, "key_first_k": first_k}
        self.sampler = SequenceSampler(replay_buffer, episode_mask=self.train_mask, **self._sampler_args)

    def _check_shapes(self) -> None:
        rb = self.replay_buffer
        check_stored_shapes(self.meta, rb)
        stored = tuple(rb[self.action_zarr_key].shape[1:])
        if int(np.prod(stored)) != self.meta.action_dim:
            raise ValueError(f"shape_meta.action: expected shape {list(self.meta.action_shape)} "
                             f"but store key {self.action_zarr_key!r} has {stored}")

    def _format(self, raw: dict[str, np.ndarray], batched: bool) -> dict:
        """Sampler output `{zarr_key: ([B,] T, ...)}` -> the dataset contract, as tensors."""
        t_obs = (slice(None), slice(0, self.n_obs_steps)) if batched else slice(0, self.n_obs_steps)
        obs = to_policy_obs({key: raw[key][t_obs] for key in self._obs_zarr_keys}, self.meta, stored=True,
                            batched=batched)
        lead = 2 if batched else 1
        action = raw[self.action_zarr_key].astype(np.float32, copy=False)
        action = action.reshape(*action.shape[:lead], -1)
        return {"obs": obs, "action": torch.from_numpy(np.ascontiguousarray(action))}

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, idx: int) -> dict:
        """One window `{"obs": {key: (To, ...)}, "action": (T, Da)}`: what a plain DataLoader calls.

        An in-memory buffer is read with one slice per key (a window inside its episode) or the
        sampler's precomputed index table (a padded one), converting only the To observation frames;
        a zarr-backed one through `sample_sequence`. All equal `get_batch([idx])` without its batch axis.
        """
        rb = self.replay_buffer
        if rb.backend != "numpy":
            return self._format(self.sampler.sample_sequence(idx), batched=False)
        sampler = self.sampler
        start = sampler.slice_start.item(idx)
        if start >= 0:  # a window inside its episode: slices, which read faster than fancy indices
            obs_steps, steps = slice(start, start + self.n_obs_steps), slice(start, start + self.horizon)
        else:
            steps = sampler.table[idx]
            obs_steps = steps[:self.n_obs_steps]
        flat = self._flat_arrays()
        obs = {}
        for key, zarr_key, columns, spec in self._item_plan:
            if spec is not None:  # rgb
                obs[key] = torch.from_numpy(stored_to_policy(spec, rb.data[zarr_key][obs_steps], 1))
            else:  # astype copies: an item never shares memory with the buffer
                arr = flat[zarr_key]
                value = arr[obs_steps, columns] if type(columns) is slice else arr[obs_steps][:, columns]
                obs[key] = torch.from_numpy(value.astype(np.float32))
        return {"obs": obs, "action": torch.from_numpy(flat[self.action_zarr_key][steps].astype(np.float32))}

    def _flat_arrays(self) -> dict[str, np.ndarray]:
        """`{zarr_key: (N, D) view}` of the low-dim and action arrays, made once (the windows only
        index steps that existed when the dataset was made, so appends never invalidate them)."""
        if self._flat is None:
            data = self.replay_buffer.data
            keys = [k for _, k, _, spec in self._item_plan if spec is None] + [self.action_zarr_key]
            self._flat = {k: data[k].reshape(len(data[k]), -1) for k in keys}
        return self._flat

    def __getstate__(self) -> dict:
        # worker processes get the buffer once, not again as the per-item path's views
        return {**self.__dict__, "_flat": None}

    def get_batch(self, idxs) -> dict:
        """`{"obs": {key: (B, To, ...)}, "action": (B, T, Da)}` with one gather per key."""
        raw = self.sampler.sample_batch(np.asarray(idxs), first_steps=self._first_k)
        return self._format(raw, batched=True)

    def get_validation_dataset(self) -> SequenceDataset:
        """The held-out episodes; raises ValueError naming the episode and key if one holds NaN or inf
        (training episodes get the same check when the normalizer is fitted)."""
        self._check_finite(self.val_mask, "validation")
        val = copy.copy(self)
        # Only the held-out episodes, not the ones max_train_episodes dropped (DP mixes them in).
        val.sampler = SequenceSampler(self.replay_buffer, episode_mask=self.val_mask, **self._sampler_args)
        val.train_mask = self.val_mask
        return val

    def _check_finite(self, mask: np.ndarray, which: str) -> None:
        """Non-finite action or low-dim obs values in the episodes of `mask` are an error naming them."""
        keys = {self.action_zarr_key} | {spec.zarr_key for spec in self.meta.obs.values() if not spec.is_rgb}
        ends = self.replay_buffer.episode_ends
        for episode in np.flatnonzero(mask):
            start = int(ends[episode - 1]) if episode > 0 else 0
            for key in sorted(keys):
                value = np.asarray(self.replay_buffer[key][start:int(ends[episode])])
                if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                    bad = np.flatnonzero(~np.isfinite(value.reshape(len(value), -1)).all(axis=1))
                    raise ValueError(f"{which} episode {episode}: key {key!r} has NaN or inf values at "
                                     f"{len(bad)} steps (first: step {int(bad[0])} of the episode)")

    def _episode_steps(self, mask: np.ndarray) -> np.ndarray:
        ends = self.replay_buffer.episode_ends
        starts = np.concatenate([[0], ends[:-1]])
        return np.concatenate([np.arange(s, e) for s, e in zip(starts[mask], ends[mask])] or [np.zeros(0, int)])

    def get_normalizer(self, mode: str = "limits") -> LinearNormalizer:
        """Fitted on the steps of the training episodes only; rgb keys map [0, 1] to [-1, 1]."""
        steps = self._episode_steps(self.train_mask)
        normalizer = LinearNormalizer()
        action = np.asarray(self.replay_buffer[self.action_zarr_key][steps], dtype=np.float32)
        normalizer["action"] = SingleFieldLinearNormalizer.create_fit(
            action.reshape(len(steps), -1), key="action", mode=mode)
        for key, spec in self.meta.obs.items():
            if spec.is_rgb:
                normalizer[key] = get_image_range_normalizer()
                continue
            value = stored_to_policy(spec, np.asarray(self.replay_buffer[spec.zarr_key][steps]), 1)
            normalizer[key] = SingleFieldLinearNormalizer.create_fit(value, key=key, mode=mode)
        return normalizer

    def get_all_actions(self) -> torch.Tensor:
        steps = self._episode_steps(self.train_mask)
        action = np.asarray(self.replay_buffer[self.action_zarr_key][steps], dtype=np.float32)
        return torch.from_numpy(action.reshape(len(steps), -1))
