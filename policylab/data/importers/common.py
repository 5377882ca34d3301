"""What the dataset importers share: the error type, `key=value` CLIs, all-or-nothing writes."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from policylab.common.overrides import MISSING, parse_overrides
from policylab.data.replay_buffer import ReplayBuffer


class ImportFormatError(ValueError):
    """The source dataset does not have the layout the importer reads; the message says where."""


def parse_cli(argv: list[str], required: tuple[str, ...], optional: tuple[str, ...], prog: str = "",
              usage: str = "") -> dict[str, str]:
    """`key=value` arguments (policylab.common.overrides: Hydra's syntax, `--help`) -> {key: text};
    unknown or missing keys exit with their names. `null` leaves a key unset; a list
    (`keys=[a,b]`) comes back comma-joined, as `keys=a,b` does."""
    schema = {**{k: MISSING for k in required}, **{k: None for k in optional}}
    parsed = parse_overrides(schema, argv, prog=prog, usage=usage)
    return {k: _text(v) for k, v in parsed.items() if v is not None}


def _text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return str(value)


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
