"""Observations -> the policy's input `{key: ([B,] To, ...)}` float32: the one conversion.

Two layouts reach a policy:

- stored: what demo stores and `RealEnv` hold, keyed by `zarr_key`: rgb `(..., H, W, C)` uint8 or
  float 0..255, low-dim raw (`index` slices the last axis, the rest is flattened). The dataset,
  the RL samplers, the real-robot evaluation and the embedding pass read this layout.
- env: what the sim envs, `MultiStepWrapper`, the RL actors' history and the policy server's
  clients give, keyed by obs key and already in the policy's layout (rgb `(..., C, H, W)` in
  [0, 1]); converting it is a float32 cast onto the device.

Either way the same frame gives the same tensor (tests/common/test_obs_paths.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from policylab.common.shape_meta import ObsSpec, ShapeMeta


def stored_to_policy(spec: ObsSpec, raw: np.ndarray, n_lead: int) -> np.ndarray:
    """(*lead, *stored) -> (*lead, *spec.shape) float32, `n_lead` leading axes (batch, time).

    rgb: HWC 0..255 -> CHW in [0, 1] (no resize; `to_policy_obs(resize=True)` resizes);
    low-dim: the `index` slice of the last axis, flattened.
    """
    if spec.is_rgb:
        chw = np.moveaxis(raw, -1, -3)
        # one pass: transpose, cast and scale into a contiguous float32 array
        return np.divide(chw, np.float32(255.0), out=np.empty(chw.shape, np.float32), dtype=np.float32)
    if spec.index is not None:
        raw = raw[..., spec.index[0]:spec.index[1]]
    return raw.reshape(*raw.shape[:n_lead], -1).astype(np.float32, copy=False)


def to_policy_obs(obs: Mapping, shape_meta: ShapeMeta | Mapping | None = None, *, stored: bool = False,
                  n_obs_steps: int | None = None, batched: bool = True, resize: bool = False,
                  key_map: Mapping[str, str] | None = None, device: str | torch.device = "cpu",
                  ) -> dict[str, torch.Tensor]:
    """`obs {key: ([B,] L, ...)}` -> `{key: ([B,] To, ...)}` float32 tensors on `device`.

    Args:
        obs: arrays (or tensors) with a time axis, after the batch axis when `batched`.
        shape_meta: needed for `stored`; which keys, how they are stored.
        stored: the stored layout (module docstring); otherwise the env layout, where every key
            of `obs` is cast (stand-in policies need no shape_meta).
        n_obs_steps: keep the last To steps of the time axis; None keeps them all.
        resize: stored rgb frames of another size are resized to the shape_meta's (INTER_AREA).
        key_map: stored layout only: renames a `zarr_key` to the key `obs` holds it under.
    """
    window = slice(None) if n_obs_steps is None else slice(-n_obs_steps, None)
    window = (slice(None), window) if batched else (window,)
    if not stored:
        return {key: _as_float32(value[window], device) for key, value in obs.items()}
    if shape_meta is None:
        raise ValueError("the stored layout needs shape_meta to know the keys and their storage")
    meta = ShapeMeta.parse(shape_meta)
    key_map = dict(key_map or {})
    out = {}
    for key, spec in meta.obs.items():
        source = key_map.get(spec.zarr_key, spec.zarr_key)
        if source not in obs:
            raise KeyError(f"policy input {key!r} reads {source!r}, which the observation does not provide "
                           f"({sorted(obs)}); map it with obs_key_map")
        raw = np.asarray(obs[source])[window]
        if resize and spec.is_rgb and raw.shape[-3:-1] != spec.shape[1:]:
            raw = _resize(raw, spec.shape[1:])
        value = stored_to_policy(spec, raw, n_lead=len(window))
        out[key] = torch.from_numpy(np.ascontiguousarray(value)).to(device)
    return out


def _as_float32(value, device) -> torch.Tensor:
    if isinstance(value, np.ndarray) and not value.flags.writeable:
        value = np.array(value, dtype=np.float32)  # read-only (a decoded message): torch wants its own
    return torch.as_tensor(value, dtype=torch.float32, device=device)


def _resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(..., H, W, C) -> (..., h, w, C), area interpolation (what cameras' downscaling wants)."""
    import cv2

    h, w = size
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA) for im in flat])
    return out.reshape(*frames.shape[:-3], *out.shape[1:])


def check_stored_shapes(shape_meta: ShapeMeta | Mapping, store: Mapping) -> None:
    """Raise ValueError naming the key unless every obs key's stored array converts to its shape.

    `store`: `{zarr_key: array}` (a ReplayBuffer), arrays `(N, *stored)`.
    """
    for key, spec in ShapeMeta.parse(shape_meta).obs.items():
        arr = store[spec.zarr_key]
        stored = tuple(arr.shape[1:])
        got = tuple(stored_to_policy(spec, np.zeros((1, *stored), arr.dtype), 1).shape[1:])
        if got != spec.shape:
            raise ValueError(f"shape_meta.obs.{key}: expected shape {list(spec.shape)} but store key "
                             f"{spec.zarr_key!r} {stored} gives {got}")
