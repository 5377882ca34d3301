"""What the dataset importers share: the error type, `key=value` CLIs, all-or-nothing writes."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from policylab.data.replay_buffer import ReplayBuffer


class ImportFormatError(ValueError):
    """The source dataset does not have the layout the importer reads; the message says where."""


def parse_cli(argv: list[str], required: tuple[str, ...], optional: tuple[str, ...]) -> dict:
    """`key=value` arguments -> dict; unknown or missing keys exit with their names."""
    known = required + optional
    args = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"unknown argument {arg!r}; expected key=value with key in {list(known)}")
        args[key] = value
    missing = [k for k in required if k not in args]
    if missing:
        raise SystemExit(f"missing required argument(s): {', '.join(k + '=...' for k in missing)}")
    return args


def write_episodes(episodes: Iterable[Mapping[str, np.ndarray]], out: str | Path,
                   meta: Mapping[str, np.ndarray] | None = None,
                   overwrite: bool = False, image_compressor: str = "image") -> ReplayBuffer:
    """Write episodes to a new ReplayBuffer directory store at `out`, all or nothing.

    Episodes go to a hidden sibling directory that is renamed to `out` once every episode and
    the meta arrays are written, so an interrupted import leaves no half-filled store behind.
    (H, W, 3) uint8 keys are stored one frame per chunk with `image_compressor` ("image":
    Jpeg2k, lossy and small, Diffusion Policy's choice; "disk": lossless Blosc).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=true to replace it")
    tmp = out.with_name(f".partial-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    buffer = ReplayBuffer.create_from_path(tmp, mode="w")
    for episode in episodes:
        images = [k for k, v in episode.items() if v.ndim == 4 and v.dtype == np.uint8 and v.shape[-1] == 3]
        buffer.add_episode(episode, chunks={k: (1, *episode[k].shape[1:]) for k in images},
                           compressors={k: image_compressor if k in images else "disk" for k in episode})
    if meta:
        buffer.update_meta(meta)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return ReplayBuffer.create_from_path(out, mode="r")
