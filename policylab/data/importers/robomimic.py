"""Import a robomimic hdf5 dataset into a zarr ReplayBuffer.

    python -m policylab.data.importers.robomimic in=lift/ph/low_dim_v141.hdf5 out=data/robomimic/lift_ph.zarr
        [keys=robot0_eef_pos,object,...] [filter_key=train] [overwrite=false]
        [image_compressor=image|disk]

robomimic's layout (its published datasets and `dataset_states_to_obs.py` outputs):

    data/                      attrs: total, env_args (JSON)
      demo_<i>/                attrs: num_samples
        actions  (L, Da)       rewards (L,)   dones (L,)   states (L, Ds)   [optional: next_obs/]
        obs/<key> (L, ...)     low-dim (L, D) floats, images (L, H, W, 3) uint8 (upright)
    mask/<filter_key>          demo names of a split, e.g. "train", "valid", "20_percent"

Into the ReplayBuffer, one episode per demo in numeric order (demo_2 before demo_10):
    data/<obs key>  (obs keys keep robomimic's names: robot0_eef_pos, object, agentview_image, ...)
    data/action (N, Da) float32, data/reward (N,) float32, data/done (N,) uint8
    meta/episode_ends, meta/demo_index (E,) int64 (i of demo_i), meta/env_args (JSON bytes)
Images get one frame per chunk and `image_compressor` ("image": Jpeg2k, lossy, Diffusion Policy's
choice; "disk": lossless); everything else `disk`.

Every demo is checked before anything is written: missing `data`, `actions` or `obs`, an obs key
missing from a demo, or arrays whose lengths disagree raise `ImportFormatError` naming the demo
and the key. The store is written episode by episode (atomic appends); an existing `out` is
refused unless overwrite=true.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import tqdm

from policylab.common.extras import require
from policylab.data.importers.common import ImportFormatError, parse_cli, write_episodes

LOW_DIM_STEP_KEYS = {"actions": "action", "rewards": "reward", "dones": "done"}


def _demo_sort_key(name: str):
    match = re.fullmatch(r"demo_(\d+)", name)
    return (0, int(match.group(1))) if match else (1, name)


def list_demos(f, filter_key: str | None = None) -> list[str]:
    """Demo names in numeric order, optionally only those of `mask/<filter_key>`."""
    if "data" not in f:
        raise ImportFormatError(f"{f.filename}: no 'data' group (not a robomimic hdf5 file)")
    demos = sorted(f["data"].keys(), key=_demo_sort_key)
    if filter_key is not None:
        if "mask" not in f or filter_key not in f["mask"]:
            available = sorted(f["mask"].keys()) if "mask" in f else []
            raise ImportFormatError(f"{f.filename}: no mask/{filter_key}; available: {available}")
        names = {n.decode() if isinstance(n, bytes) else str(n) for n in f["mask"][filter_key][:]}
        missing = sorted(names - set(demos), key=_demo_sort_key)
        if missing:
            raise ImportFormatError(f"mask/{filter_key} names demos not in data/: {missing[:5]}")
        demos = [d for d in demos if d in names]
    if not demos:
        raise ImportFormatError(f"{f.filename}: no demos to import")
    return demos


def check_demo(f, demo: str, keys: list[str] | None) -> tuple[int, list[str]]:
    """(length, obs keys) of one demo; raises ImportFormatError on a malformed demo."""
    group = f["data"][demo]
    where = f"data/{demo}"
    if "actions" not in group:
        raise ImportFormatError(f"{where}: missing 'actions'")
    if "obs" not in group:
        raise ImportFormatError(f"{where}: missing 'obs' group")
    length = int(group["actions"].shape[0])
    obs_keys = sorted(group["obs"].keys()) if keys is None else list(keys)
    for key in obs_keys:
        if key not in group["obs"]:
            raise ImportFormatError(f"{where}/obs: missing key {key!r} (has {sorted(group['obs'].keys())})")
    for name, arr in [(f"obs/{k}", group["obs"][k]) for k in obs_keys] + [
            (k, group[k]) for k in LOW_DIM_STEP_KEYS if k in group]:
        if arr.shape[0] != length:
            raise ImportFormatError(f"{where}/{name}: {arr.shape[0]} steps but actions has {length}")
    if "num_samples" in group.attrs and int(group.attrs["num_samples"]) != length:
        raise ImportFormatError(f"{where}: attrs num_samples={int(group.attrs['num_samples'])} "
                                f"but actions has {length} steps")
    return length, obs_keys


def read_demo(f, demo: str, obs_keys: list[str]) -> dict[str, np.ndarray]:
    group = f["data"][demo]
    episode = {}
    for key in obs_keys:
        value = group["obs"][key][:]
        episode[key] = value if value.dtype == np.uint8 else value.astype(np.float32)
    for src, dst in LOW_DIM_STEP_KEYS.items():
        if src in group:
            value = group[src][:]
            episode[dst] = value.astype(np.uint8 if src == "dones" else np.float32)
    return episode


def import_robomimic(src: str | Path, out: str | Path, keys: list[str] | None = None,
                     filter_key: str | None = None, overwrite: bool = False,
                     image_compressor: str = "image", progress: bool = True) -> dict:
    """Convert `src` (robomimic hdf5) into a ReplayBuffer at `out`; returns counts."""
    h5py = require("h5py", extra="tasks")

    src, out = Path(src), Path(out)
    if not src.exists():
        raise FileNotFoundError(f"no robomimic file at {src}")
    with h5py.File(src, "r") as f:
        demos = list_demos(f, filter_key)
        checked = [check_demo(f, d, keys) for d in demos]
        obs_keys = checked[0][1]
        for demo, (_, k) in zip(demos, checked):
            if k != obs_keys:
                raise ImportFormatError(f"data/{demo}/obs has keys {k} but data/{demos[0]}/obs has {obs_keys}")
        env_args = f["data"].attrs.get("env_args", "{}")
        env_args = env_args.decode() if isinstance(env_args, bytes) else str(env_args)
        episodes = (read_demo(f, d, obs_keys) for d in demos)
        if progress:
            episodes = tqdm.tqdm(episodes, total=len(demos), desc=f"import {src.name}")
        meta = {"demo_index": np.array([_demo_sort_key(d)[1] if _demo_sort_key(d)[0] == 0 else -1
                                        for d in demos], dtype=np.int64),
                "env_args": np.frombuffer(env_args.encode(), dtype=np.uint8)}
        buffer = write_episodes(episodes, out, meta=meta, overwrite=overwrite,
                                image_compressor=image_compressor)
    return {"out": str(out), "n_episodes": buffer.n_episodes, "n_steps": buffer.n_steps,
            "keys": sorted(buffer.keys()), "env_args": json.loads(env_args or "{}")}


def main(argv: list[str] | None = None) -> dict:
    args = parse_cli(sys.argv[1:] if argv is None else argv, required=("in", "out"),
                     optional=("keys", "filter_key", "overwrite", "image_compressor"))
    keys = args["keys"].split(",") if args.get("keys") else None
    stats = import_robomimic(args["in"], args["out"], keys=keys, filter_key=args.get("filter_key"),
                             overwrite=args.get("overwrite", "false").lower() in ("1", "true"),
                             image_compressor=args.get("image_compressor", "image"))
    print(f"imported {stats['n_episodes']} demos ({stats['n_steps']} steps) into {stats['out']}: "
          f"keys {stats['keys']}")
    return stats


if __name__ == "__main__":
    main()

