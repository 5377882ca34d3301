"""Per-episode checksums of a ReplayBuffer store: a flipped bit on disk is an error, not data.

Layout (one more per-episode meta array, invisible to Diffusion Policy's code, which ignores
meta arrays it does not know)::

    meta/episode_checksums   (E, K) uint32   CRC-32C of the decoded bytes (C order, the array's
                                             dtype) of each checked key's rows of episode e
      .attrs["keys"]         the K data keys, in column order
      .attrs["algorithm"]    "crc32c"

Why decoded bytes per episode, not encoded bytes per chunk: a chunk along time spans episode
boundaries and is rewritten by the next append, so a per-chunk checksum would have to change
together with the chunk file (two files, no atomic pair); an episode's rows never change once
`episode_ends` commits them, and the row is written before that commit (`add_episode`), so the
checksums are exactly as atomic as the episode. Decoded bytes also catch what decodes silently
(blosc-lz4 with flipped literal bytes).

Keys with a lossy codec (Jpeg2k images) are not checked: their decoded bytes depend on the
decoder's build, so a checksum could fail on a healthy store on another machine. Stores without
the array (Diffusion Policy's, older policylab's, or appended to from such) open unchecked;
`checksum_status` says so. CRC-32C (google-crc32c, a zarr dependency) runs at ~2 GB/s.
"""

from __future__ import annotations

import google_crc32c
import numcodecs
import numpy as np
import zarr

from policylab.data.replay_backends import ReplayBufferError

CHECKSUMS_KEY = "episode_checksums"
ALGORITHM = "crc32c"
# Codecs whose decode returns exactly the bytes that were encoded.
_LOSSLESS_V2 = (numcodecs.Blosc, numcodecs.Zstd, numcodecs.LZ4, numcodecs.Zlib, numcodecs.GZip,
                numcodecs.BZ2, numcodecs.LZMA)
_LOSSLESS_V3 = (zarr.codecs.BloscCodec, zarr.codecs.ZstdCodec, zarr.codecs.GzipCodec)


class ChecksumError(ReplayBufferError):
    """Stored bytes no longer match the checksum written with them."""


def digest(rows: np.ndarray) -> int:
    """CRC-32C of `rows` as C-ordered bytes."""
    return int(google_crc32c.value(np.ascontiguousarray(rows).view(np.uint8).reshape(-1)))


def is_lossless(arr) -> bool:
    """True when reading `arr` (a zarr array) returns exactly the bytes written to it."""
    filters = getattr(arr, "filters", ())
    compressors = getattr(arr, "compressors", ())
    return not filters and all(isinstance(c, _LOSSLESS_V2 + _LOSSLESS_V3) for c in compressors)


def episode_row(episode: dict[str, np.ndarray], keys: list[str], dtypes: dict) -> np.ndarray:
    """(K,) uint32: the checksums of one episode `{key: (L, ...)}` as it will read back (cast to
    the stored dtypes, as zarr casts on write)."""
    return np.array([digest(np.asarray(episode[k], dtype=dtypes[k])) for k in keys], dtype=np.uint32)


def stored_keys(meta) -> list[str]:
    """The data keys `meta/episode_checksums` (a zarr array) covers, in column order ([] when absent)."""
    if CHECKSUMS_KEY not in meta or not hasattr(meta[CHECKSUMS_KEY], "attrs"):
        return []
    return list(meta[CHECKSUMS_KEY].attrs.get("keys", []))


def mismatches(name: str, key: str, values: np.ndarray, ends: np.ndarray, expected: np.ndarray,
               first_episode: int = 0) -> list[tuple[int, str]]:
    """(episode, message naming store, key, episode, rows) per episode whose rows fail their checksum.

    values: the decoded rows of episodes first_episode, first_episode + 1, ... (starting at the
    first one's start row); ends: (E,) cumulative episode ends of the store; expected: (n,) uint32.
    """
    start_row = int(ends[first_episode - 1]) if first_episode else 0
    out = []
    for e, stored in enumerate(expected, start=first_episode):
        lo, hi = (int(ends[e - 1]) if e else 0), int(ends[e])
        actual = digest(values[lo - start_row: hi - start_row])
        if actual != int(stored):
            out.append((e, (f"store {name}: data/{key} episode {e} (rows {lo}..{hi - 1}) does not match its "
                       f"{ALGORITHM} checksum (stored {int(stored):#010x}, read {actual:#010x}): the file changed "
                       f"after it was written (a flipped bit on disk, an edited or swapped chunk)")))
    return out


def verify(name: str, key: str, values: np.ndarray, ends: np.ndarray, expected: np.ndarray,
           first_episode: int = 0) -> None:
    """`mismatches`, raised as ChecksumError (the first one, and how many more)."""
    bad = [message for _, message in mismatches(name, key, values, ends, expected, first_episode)]
    if bad:
        more = f" ({len(bad) - 1} more episodes of data/{key} fail)" if len(bad) > 1 else ""
        raise ChecksumError(f"{bad[0]}{more}. `python -m policylab.data.repair {name}` lists every damaged episode")


def status(meta, data, n_episodes: int) -> dict:
    """What the checksums cover: {"algorithm", "checked": [keys], "unchecked": {key: why}, "episodes"}.

    meta / data: the zarr groups of a store.
    """
    has_table, keys = CHECKSUMS_KEY in meta, stored_keys(meta)
    covered = min(int(meta[CHECKSUMS_KEY].shape[0]), n_episodes) if has_table else 0
    unchecked = {}
    for key in sorted(data.array_keys()):
        if not has_table:
            unchecked[key] = "the store has no checksums (written by Diffusion Policy or an older policylab)"
        elif key not in keys:
            unchecked[key] = "lossy codec: decoded bytes differ between decoder builds" if not is_lossless(
                data[key]) else "not covered by meta/episode_checksums"
        elif not is_lossless(data[key]):
            unchecked[key] = "recompressed with a lossy codec after its checksums were written"
    if has_table and covered < n_episodes:
        unchecked["*"] = f"episodes {covered}..{n_episodes - 1} have no checksums (appended by an older writer)"
    return {"algorithm": ALGORITHM if has_table else None, "episodes": covered,
            "checked": [k for k in keys if k in data.array_keys() and k not in unchecked], "unchecked": unchecked}


def find_damaged(name: str, data, meta, ends: np.ndarray, block_bytes: float = 64e6) -> list[tuple[str, int, str]]:
    """(key, episode, message) for every episode whose checked rows fail their checksum (reads all
    checked data once, whole episodes of about `block_bytes` at a time)."""
    info = status(meta, data, len(ends))
    table = np.asarray(meta[CHECKSUMS_KEY][: info["episodes"]]) if info["checked"] else None
    problems = []
    for key in info["checked"]:
        arr, col = data[key], stored_keys(meta).index(key)
        rows_per_block = max(int(block_bytes // max(arr.dtype.itemsize * int(np.prod(arr.shape[1:])), 1)), 1)
        e = 0
        while e < info["episodes"]:
            lo = int(ends[e - 1]) if e else 0
            last = int(np.clip(np.searchsorted(ends, lo + rows_per_block, side="right") - 1, e, info["episodes"] - 1))
            problems += [(key, episode, message) for episode, message in
                         mismatches(name, key, arr[lo: int(ends[last])], ends, table[e: last + 1, col], e)]
            e = last + 1
    return problems


def status_line(info: dict) -> str:
    """One line for a printout (inspect) from `status(...)`."""
    if not info["algorithm"]:
        return "checksums: none (a store from Diffusion Policy or an older policylab): its bytes are not verified"
    unchecked = "; ".join(f"{k}: {why}" for k, why in info["unchecked"].items())
    return (f"checksums: {info['algorithm']} of {info['episodes']} episodes x {', '.join(info['checked']) or 'no key'}, verified "
            f"on load" + (f"; unchecked {unchecked}" if unchecked else ""))
