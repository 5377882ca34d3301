"""One generic dataset for every task, driven by the task's `shape_meta`.

    shape_meta:
      obs:
        image:     {shape: [3, 96, 96], type: rgb, zarr_key: img}       # (N, H, W, C) in the store
        agent_pos: {shape: [2], type: low_dim, zarr_key: state, index: [0, 2]}
        keypoint:  {shape: [18], type: low_dim}                         # (N, 9, 2) is flattened
      action: {shape: [2]}

`zarr_key` (default: the obs key) names the store array and `index: [start, stop]` takes a slice of
its last axis, so Diffusion Policy's published files train unchanged without a per-task class.
`rgb` keys are stored `(N, H, W, C)`, uint8 or float 0..255 (DP's PushT), and come out
`(To, C, H, W)` float32 in [0, 1]. `low_dim` keys come out `(To, D)` float32.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from policylab.data.datasets.base import BaseDataset
from policylab.data.normalizer import (
    LinearNormalizer,
    SingleFieldLinearNormalizer,
    get_image_range_normalizer,
)
from policylab.data.replay_buffer import ReplayBuffer
from policylab.data.sampler import SequenceSampler, downsample_mask, get_val_mask

OBS_TYPES = ("rgb", "low_dim")


def parse_shape_meta(shape_meta) -> dict:
    """A plain dict with defaults filled in and the types checked; errors name the key."""
    if isinstance(shape_meta, DictConfig):
        shape_meta = OmegaConf.to_container(shape_meta, resolve=True)
    meta = copy.deepcopy(dict(shape_meta))
    if "obs" not in meta or "action" not in meta:
        raise ValueError(f"shape_meta needs 'obs' and 'action' entries, got {sorted(meta)}")
    for key, attr in meta["obs"].items():
        attr.setdefault("type", "low_dim")
        attr.setdefault("zarr_key", key)
        if attr["type"] not in OBS_TYPES:
            raise ValueError(f"shape_meta.obs.{key}.type must be one of {OBS_TYPES}, got {attr['type']!r}")
        if "shape" not in attr:
            raise ValueError(f"shape_meta.obs.{key} has no shape")
        attr["shape"] = [int(s) for s in attr["shape"]]
        if attr["type"] == "rgb" and len(attr["shape"]) != 3:
            raise ValueError(f"shape_meta.obs.{key}: rgb shape must be [C, H, W], got {attr['shape']}")
    meta["action"].setdefault("zarr_key", "action")
    meta["action"]["shape"] = [int(s) for s in meta["action"]["shape"]]
    return meta


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
        self.shape_meta = parse_shape_meta(shape_meta)
        if n_obs_steps > horizon:
            raise ValueError(f"n_obs_steps (To={n_obs_steps}) cannot exceed horizon (T={horizon})")
        self.horizon, self.n_obs_steps = horizon, n_obs_steps
        obs_zarr_keys = sorted({a["zarr_key"] for a in self.shape_meta["obs"].values()})
        self.action_zarr_key = self.shape_meta["action"]["zarr_key"]
        zarr_keys = sorted(set(obs_zarr_keys) | {self.action_zarr_key})
        if replay_buffer is None:
            if zarr_path is None:
                raise ValueError("SequenceDataset needs zarr_path or replay_buffer")
            replay_buffer = ReplayBuffer.copy_from_path(zarr_path, keys=zarr_keys)
        self.replay_buffer = replay_buffer
        self._check_shapes()

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
        for key, attr in self.shape_meta["obs"].items():
            stored = tuple(rb[attr["zarr_key"]].shape[1:])
            got = self._convert_obs(attr, np.zeros((1, *stored), rb[attr["zarr_key"]].dtype), 1).shape[1:]
            if tuple(got) != tuple(attr["shape"]):
                raise ValueError(f"shape_meta.obs.{key}: expected shape {attr['shape']} but store key "
                                 f"{attr['zarr_key']!r} {stored} gives {tuple(got)}")
        stored = tuple(rb[self.action_zarr_key].shape[1:])
        if int(np.prod(stored)) != int(np.prod(self.shape_meta["action"]["shape"])):
            raise ValueError(f"shape_meta.action: expected shape {self.shape_meta['action']['shape']} "
                             f"but store key {self.action_zarr_key!r} has {stored}")

    @staticmethod
    def _convert_obs(attr: Mapping, raw: np.ndarray, n_lead: int) -> np.ndarray:
        """(*lead, *stored) -> (*lead, *shape) float32; rgb: HWC 0..255 -> CHW 0..1."""
        if attr["type"] == "rgb":
            chw = np.moveaxis(raw, -1, -3)
            # one pass: transpose, cast and scale into a contiguous float32 array
            return np.divide(chw, np.float32(255.0), out=np.empty(chw.shape, np.float32), dtype=np.float32)
        if "index" in attr:
            start, stop = attr["index"]
            raw = raw[..., start:stop]
        return raw.reshape(*raw.shape[:n_lead], -1).astype(np.float32, copy=False)

    def _format(self, raw: dict[str, np.ndarray], batched: bool) -> dict:
        """Sampler output `{zarr_key: ([B,] T, ...)}` -> the dataset contract, as tensors."""
        t_obs = slice(0, self.n_obs_steps)
        lead = 2 if batched else 1
        obs = {}
        for key, attr in self.shape_meta["obs"].items():
            value = raw[attr["zarr_key"]]
            value = value[:, t_obs] if batched else value[t_obs]
            value = self._convert_obs(attr, value, n_lead=lead)
            obs[key] = torch.from_numpy(np.ascontiguousarray(value))
        action = raw[self.action_zarr_key].astype(np.float32, copy=False)
        action = action.reshape(*action.shape[:lead], -1)
        return {"obs": obs, "action": torch.from_numpy(np.ascontiguousarray(action))}

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, idx: int) -> dict:
        return self._format(self.sampler.sample_sequence(idx), batched=False)

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
        keys = {self.action_zarr_key} | {a["zarr_key"] for a in self.shape_meta["obs"].values() if a["type"] != "rgb"}
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
        for key, attr in self.shape_meta["obs"].items():
            if attr["type"] == "rgb":
                normalizer[key] = get_image_range_normalizer()
                continue
            value = self._convert_obs(attr, np.asarray(self.replay_buffer[attr["zarr_key"]][steps]), 1)
            normalizer[key] = SingleFieldLinearNormalizer.create_fit(value, key=key, mode=mode)
        return normalizer

    def get_all_actions(self) -> torch.Tensor:
        steps = self._episode_steps(self.train_mask)
        action = np.asarray(self.replay_buffer[self.action_zarr_key][steps], dtype=np.float32)
        return torch.from_numpy(action.reshape(len(steps), -1))
