"""`shape_meta`, the task's observation and action contract, parsed and validated once.

    shape_meta:
      obs:
        image:     {shape: [3, 96, 96], type: rgb, zarr_key: img}       # (N, H, W, C) in the store
        agent_pos: {shape: [2], type: low_dim, zarr_key: state, index: [0, 2]}
        keypoint:  {shape: [18], type: low_dim}                         # (N, 9, 2) is flattened
      action: {shape: [2]}

`type` defaults to low_dim, `zarr_key` (the store array a key reads) to the obs key, and
`index: [start, stop]` takes a slice of the stored array's last axis. Every consumer (dataset,
policies, encoders, real-robot evaluation, policy server, RL) takes a `ShapeMeta`, so the
defaults and the checks are written here only. `check_obs` is the one rule for a policy's input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

OBS_TYPES = ("rgb", "low_dim")


@dataclass(frozen=True)
class ObsSpec:
    """One observation key: its policy-side `shape`, `type`, and where it is stored."""

    shape: tuple[int, ...]
    type: str = "low_dim"
    zarr_key: str = ""
    index: tuple[int, int] | None = None

    @property
    def is_rgb(self) -> bool:
        return self.type == "rgb"

    def to_dict(self) -> dict:
        out = {"shape": list(self.shape), "type": self.type, "zarr_key": self.zarr_key}
        if self.index is not None:
            out["index"] = list(self.index)
        return out


@dataclass(frozen=True)
class ShapeMeta:
    """Parsed `shape_meta`; build it with `ShapeMeta.parse`. `obs` keeps the config's key order.
    `action_shape` is None only for an obs-only contract (reading observations needs no action)."""

    obs: Mapping[str, ObsSpec]
    action_shape: tuple[int, ...] | None
    action_zarr_key: str = "action"

    @classmethod
    def parse(cls, shape_meta: ShapeMeta | Mapping | DictConfig) -> ShapeMeta:
        """A ShapeMeta from a config or dict (a ShapeMeta is returned as is); errors name the key."""
        if isinstance(shape_meta, ShapeMeta):
            return shape_meta
        if isinstance(shape_meta, DictConfig):
            shape_meta = OmegaConf.to_container(shape_meta, resolve=True)
        if "obs" not in shape_meta:
            raise ValueError(f"shape_meta needs an 'obs' entry, got {sorted(shape_meta)}")
        obs = {key: _obs_spec(key, attr) for key, attr in shape_meta["obs"].items()}
        action = shape_meta.get("action")
        if action is None:
            return cls(obs=obs, action_shape=None)
        if "shape" not in action:
            raise ValueError("shape_meta.action has no shape")
        return cls(obs=obs, action_shape=tuple(int(s) for s in action["shape"]),
                   action_zarr_key=action.get("zarr_key", "action"))

    @property
    def rgb_keys(self) -> list[str]:
        return [key for key, spec in self.obs.items() if spec.is_rgb]

    @property
    def low_dim_keys(self) -> list[str]:
        return [key for key, spec in self.obs.items() if not spec.is_rgb]

    @property
    def action_dim(self) -> int:
        if self.action_shape is None:
            raise ValueError("shape_meta has no 'action' entry")
        dim = 1
        for size in self.action_shape:
            dim *= size
        return dim

    def select(self, keys: Iterable[str]) -> ShapeMeta:
        """The same contract restricted to the obs `keys`."""
        return ShapeMeta({key: self.obs[key] for key in keys}, self.action_shape, self.action_zarr_key)

    def to_dict(self) -> dict:
        """The plain-dict form, defaults filled in (what configs and the policy server carry)."""
        out = {"obs": {key: spec.to_dict() for key, spec in self.obs.items()}}
        if self.action_shape is not None:
            out["action"] = {"shape": list(self.action_shape), "zarr_key": self.action_zarr_key}
        return out

    def check_obs(self, obs: Mapping, n_obs_steps: int) -> int:
        """Raise unless `obs` is `{key: (B, To, *shape)}` for every key, with one B; returns B.

        KeyError for a missing key, ValueError for a wrong shape or mixed batch sizes. Extra keys
        are allowed (a policy reads only its own).
        """
        missing = [key for key in self.obs if key not in obs]
        if missing:
            raise KeyError(f"observation keys {missing} missing; the policy needs {list(self.obs)}")
        batch = None
        for key, spec in self.obs.items():
            got = tuple(obs[key].shape)
            if got[1:] != (n_obs_steps, *spec.shape):
                raise ValueError(f"obs[{key!r}] must be (B, To={n_obs_steps}, *{spec.shape}), got {got}")
            if batch is not None and got[0] != batch:
                raise ValueError(f"obs[{key!r}] has batch {got[0]}, the other keys {batch}")
            batch = got[0]
        return batch


def _obs_spec(key: str, attr: Mapping) -> ObsSpec:
    kind = attr.get("type", "low_dim")
    if kind not in OBS_TYPES:
        raise ValueError(f"shape_meta.obs.{key}.type must be one of {OBS_TYPES}, got {kind!r}")
    if "shape" not in attr:
        raise ValueError(f"shape_meta.obs.{key} has no shape")
    shape = tuple(int(s) for s in attr["shape"])
    if kind == "rgb" and len(shape) != 3:
        raise ValueError(f"shape_meta.obs.{key}: rgb shape must be [C, H, W], got {list(shape)}")
    index = attr.get("index")
    if index is not None:
        if len(index) != 2:
            raise ValueError(f"shape_meta.obs.{key}.index must be [start, stop], got {index}")
        index = (int(index[0]), int(index[1]))
    return ObsSpec(shape=shape, type=kind, zarr_key=attr.get("zarr_key", key), index=index)
