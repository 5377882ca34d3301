"""LinearNormalizer: per-key affine maps `y = x * scale + offset`, kept as module buffers.

It lives inside the policy, so it is saved with the weights and moves with `.to(device)`.

Modes of `fit`:
- `limits` maps each feature's [min, max] to [output_min, output_max] (default [-1, 1]): diffusion
  samplers clip to [-1, 1], so actions scaled this way stay reachable (Diffusion Policy, App. A.1).
- `gaussian` maps to zero mean and unit variance.

A feature whose range (or std) is below `range_eps` is constant: it gets scale 1 and is shifted to
the middle of the output range instead of being divided by ~0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

STAT_NAMES = ("min", "max", "mean", "std")


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.asarray(x))


class SingleFieldLinearNormalizer(nn.Module):
    """One key: buffers `scale`, `offset` (D,) and the input stats they came from."""

    def __init__(self, scale: torch.Tensor, offset: torch.Tensor, input_stats: Mapping[str, torch.Tensor]):
        super().__init__()
        self.register_buffer("scale", _as_tensor(scale).float().flatten().clone())
        self.register_buffer("offset", _as_tensor(offset).float().flatten().clone())
        for name in STAT_NAMES:
            self.register_buffer(f"input_{name}", _as_tensor(input_stats[name]).float().flatten().clone())

    @classmethod
    def create_fit(cls, data, key: str = "data", last_n_dims: int = 1, mode: str = "limits",
                   output_min: float = -1.0, output_max: float = 1.0, range_eps: float = 1e-4,
                   fit_offset: bool = True) -> SingleFieldLinearNormalizer:
        """Fit on `data (..., *feature_shape)`, stats per feature over the last `last_n_dims` dims."""
        x = _as_tensor(data).detach().double()
        if not torch.isfinite(x).all():
            n_bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"normalizer key {key!r}: {n_bad} NaN or inf values in the data")
        dim = math.prod(x.shape[x.ndim - last_n_dims:]) if last_n_dims > 0 else 1
        x = x.reshape(-1, dim)
        if x.shape[0] == 0:
            raise ValueError(f"normalizer key {key!r}: no data to fit on")
        stats = {"min": x.min(0).values, "max": x.max(0).values, "mean": x.mean(0),
                 "std": x.std(0, unbiased=False)}
        if mode == "limits":
            scale, offset = _limits(stats, output_min, output_max, range_eps, fit_offset)
        elif mode == "gaussian":
            std = torch.where(stats["std"] < range_eps, torch.ones_like(stats["std"]), stats["std"])
            scale, offset = 1.0 / std, -stats["mean"] / std
        else:
            raise ValueError(f"normalizer key {key!r}: mode must be 'limits' or 'gaussian', got {mode!r}")
        return cls(scale, offset, stats)

    @classmethod
    def create_manual(cls, scale, offset, input_stats) -> SingleFieldLinearNormalizer:
        return cls(scale, offset, input_stats)

    @classmethod
    def create_identity(cls, dim: int = 1) -> SingleFieldLinearNormalizer:
        stats = {"min": -torch.ones(dim), "max": torch.ones(dim), "mean": torch.zeros(dim), "std": torch.ones(dim)}
        return cls(torch.ones(dim), torch.zeros(dim), stats)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return self._affine(x, forward=True)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return self._affine(x, forward=False)

    def _affine(self, x, forward: bool) -> torch.Tensor:
        x = _as_tensor(x)
        dim = self.scale.numel()
        if dim > 1 and x.shape[-1] != dim and math.prod(x.shape[1:]) % dim:
            raise ValueError(f"normalizer expects features of size {dim}, got a tensor of shape {tuple(x.shape)}")
        shape = x.shape
        x = x.reshape(-1, dim)
        scale, offset = self.scale.to(x.dtype), self.offset.to(x.dtype)
        y = x * scale + offset if forward else (x - offset) / scale
        return y.reshape(shape)

    def get_input_stats(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"input_{name}") for name in STAT_NAMES}

    def get_output_stats(self) -> dict[str, torch.Tensor]:
        return {name: self.normalize(value) if name != "std" else value * self.scale.abs()
                for name, value in self.get_input_stats().items()}

    def to_dict(self) -> dict:
        return {"scale": self.scale.tolist(), "offset": self.offset.tolist(),
                "input_stats": {name: getattr(self, f"input_{name}").tolist() for name in STAT_NAMES}}

    @classmethod
    def from_dict(cls, d: Mapping) -> SingleFieldLinearNormalizer:
        return cls(torch.tensor(d["scale"]), torch.tensor(d["offset"]),
                   {name: torch.tensor(d["input_stats"][name]) for name in STAT_NAMES})


def _limits(stats, output_min, output_max, range_eps, fit_offset):
    if fit_offset:
        input_range = stats["max"] - stats["min"]
        constant = input_range < range_eps
        input_range = torch.where(constant, torch.full_like(input_range, output_max - output_min), input_range)
        scale = (output_max - output_min) / input_range
        offset = output_min - scale * stats["min"]
        offset = torch.where(constant, (output_max + output_min) / 2 - stats["min"], offset)
        return scale, offset
    if not (output_max > 0 > output_min):
        raise ValueError("fit_offset=False needs output_min < 0 < output_max")
    output_abs = min(abs(output_min), abs(output_max))
    input_abs = torch.maximum(stats["min"].abs(), stats["max"].abs())
    input_abs = torch.where(input_abs < range_eps, torch.full_like(input_abs, output_abs), input_abs)
    return output_abs / input_abs, torch.zeros_like(input_abs)


def get_image_range_normalizer() -> SingleFieldLinearNormalizer:
    """Images in [0, 1] to [-1, 1], one scalar for every pixel and channel."""
    stats = {"min": torch.zeros(1), "max": torch.ones(1), "mean": torch.full((1,), 0.5),
             "std": torch.full((1,), math.sqrt(1 / 12))}
    return SingleFieldLinearNormalizer(torch.full((1,), 2.0), torch.full((1,), -1.0), stats)


class LinearNormalizer(nn.Module):
    """A `SingleFieldLinearNormalizer` per key; `normalize` takes a tensor dict (or one tensor
    under the key `_default` when fitted on a bare tensor)."""

    DEFAULT_KEY = "_default"

    def __init__(self):
        super().__init__()
        self.fields = nn.ModuleDict()

    def fit(self, data, last_n_dims: int = 1, mode: str = "limits", output_min: float = -1.0,
            output_max: float = 1.0, range_eps: float = 1e-4, fit_offset: bool = True) -> LinearNormalizer:
        items = data.items() if isinstance(data, Mapping) else [(self.DEFAULT_KEY, data)]
        for key, value in items:
            self[key] = SingleFieldLinearNormalizer.create_fit(
                value, key=key, last_n_dims=last_n_dims, mode=mode, output_min=output_min,
                output_max=output_max, range_eps=range_eps, fit_offset=fit_offset)
        return self

    def __getitem__(self, key: str) -> SingleFieldLinearNormalizer:
        if key not in self.fields:
            raise KeyError(f"normalizer has no key {key!r}; it has {sorted(self.fields)}")
        return self.fields[key]

    def __setitem__(self, key: str, value: SingleFieldLinearNormalizer) -> None:
        if "." in key:
            raise ValueError(f"normalizer key {key!r} may not contain '.' (it becomes a state_dict path)")
        self.fields[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def keys(self):
        return list(self.fields.keys())

    def update(self, other: LinearNormalizer) -> None:
        for key in other.keys():  # noqa: SIM118 - a Module, not a dict: no __iter__
            self[key] = other[key]

    def normalize(self, x):
        return self._map(x, "normalize")

    def unnormalize(self, x):
        return self._map(x, "unnormalize")

    def __call__(self, x):
        return self.normalize(x)

    def _map(self, x, how: str):
        if isinstance(x, Mapping):
            return {key: getattr(self[key], how)(value) for key, value in x.items()}
        return getattr(self[self.DEFAULT_KEY], how)(x)

    def get_input_stats(self) -> dict:
        return {key: self[key].get_input_stats() for key in self.keys()}

    def to_json(self) -> str:
        return json.dumps({key: self[key].to_dict() for key in self.keys()}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> LinearNormalizer:
        normalizer = cls()
        for key, value in json.loads(text).items():
            normalizer[key] = SingleFieldLinearNormalizer.from_dict(value)
        return normalizer

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # An empty normalizer (a freshly built policy) grows the fields the checkpoint holds.
        field_prefix = prefix + "fields."
        keys = {k[len(field_prefix):].split(".")[0] for k in state_dict if k.startswith(field_prefix)}
        for key in sorted(keys - set(self.fields)):
            size = state_dict[f"{field_prefix}{key}.scale"].numel()
            self.fields[key] = SingleFieldLinearNormalizer.create_identity(size)
        for key in keys:
            field = self.fields[key]
            for name, buf in list(field.named_buffers()):
                stored = state_dict.get(f"{field_prefix}{key}.{name}")
                if stored is not None and stored.shape != buf.shape:
                    setattr(field, name, torch.empty_like(stored))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
