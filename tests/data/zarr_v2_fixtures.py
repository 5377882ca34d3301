"""Zarr v2 stores written byte by byte, the way zarr 2 (Diffusion Policy's pin) lays them out.

Written with json + numcodecs only, not with zarr 3, so reading them tests compatibility with
files produced by another implementation rather than a round trip through our own writer.
"""

from __future__ import annotations

import itertools
import json
import math
import zipfile
from pathlib import Path

import numcodecs
import numpy as np
from imagecodecs.numcodecs import Jpeg2k

BLOSC_LZ4 = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
BLOSC_ZSTD = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
JPEG2K = Jpeg2k(level=50)


def _array_files(name: str, value: np.ndarray, chunks: tuple[int, ...], codec) -> dict[str, bytes]:
    meta = {
        "chunks": list(chunks), "compressor": codec.get_config() if codec else None,
        "dtype": value.dtype.str, "fill_value": 0, "filters": None, "order": "C",
        "shape": list(value.shape), "zarr_format": 2,
    }
    files = {f"{name}/.zarray": json.dumps(meta, indent=4).encode()}
    grid = [range(math.ceil(s / c)) for s, c in zip(value.shape, chunks)]
    for idx in itertools.product(*grid):
        block = np.zeros(chunks, dtype=value.dtype)  # zarr 2 stores edge chunks full size
        sl = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, value.shape))
        part = value[sl]
        block[tuple(slice(0, n) for n in part.shape)] = part
        raw = np.ascontiguousarray(block).tobytes()
        files[f"{name}/{'.'.join(map(str, idx))}"] = codec.encode(raw if not isinstance(codec, Jpeg2k) else block) if codec else raw
    return files


def write_v2_store(path, data: dict[str, np.ndarray], episode_ends, chunks=None, codecs=None,
                   as_zip: bool = False) -> Path:
    """A ReplayBuffer store `data/<key>`, `meta/episode_ends` in zarr v2 layout (dir or zip)."""
    chunks, codecs = chunks or {}, codecs or {}
    group = json.dumps({"zarr_format": 2}).encode()
    files = {".zgroup": group, "data/.zgroup": group, "meta/.zgroup": group}
    ends = np.asarray(episode_ends, dtype=np.int64)
    files.update(_array_files("meta/episode_ends", ends, (max(len(ends), 1),), BLOSC_LZ4))
    for key, value in data.items():
        files.update(_array_files(f"data/{key}", value, chunks.get(key, value.shape), codecs.get(key, BLOSC_LZ4)))
    path = Path(path)
    if as_zip:
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, blob in files.items():
                zf.writestr(name, blob)
    else:
        for name, blob in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(blob)
    return path


def pusht_like_arrays(episode_lengths, seed: int = 0, image_size: int = 96) -> dict[str, np.ndarray]:
    """Diffusion Policy's PushT keys and dtypes: img float32 0..255, state, keypoint, action, n_contacts."""
    rng = np.random.default_rng(seed)
    n = int(sum(episode_lengths))
    return {
        "img": rng.integers(0, 256, (n, image_size, image_size, 3)).astype(np.float32),
        "state": rng.uniform(0, 512, (n, 5)).astype(np.float32),
        "keypoint": rng.uniform(0, 512, (n, 9, 2)).astype(np.float32),
        "action": rng.uniform(0, 512, (n, 2)).astype(np.float32),
        "n_contacts": rng.integers(0, 3, (n, 1)).astype(np.float32),
    }
