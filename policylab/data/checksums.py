"""Per-episode checksums of a ReplayBuffer store: a flipped bit on disk is an error, not data.

Layout (one more per-episode meta array, invisible to Diffusion Policy's code, which ignores
meta arrays it does not know)::

    meta/episode_checksums   (E, K) uint32   CRC-32C per episode e and checked key (column)
      .attrs["keys"]         the K data keys, in column order
      .attrs["algorithm"]    "crc32c"
      .attrs["encoded_keys"] {key: layout} the columns over ENCODED bytes (absent: none)

What a column checks:
- lossless keys (blosc, zstd, ...): the DECODED bytes (C order, the array's dtype) of the key's
  rows of episode e. A chunk along time spans episode boundaries and is rewritten by the next
  append, so a per-chunk checksum would have to change together with the chunk file (two files,
  no atomic pair); an episode's rows never change once `episode_ends` commits them, and the
  checksum row is written before that commit (`add_episode`), so the checksums are exactly as
  atomic as the episode. Decoded bytes also catch what decodes silently (blosc-lz4 with flipped
  literal bytes).
- lossy keys (Jpeg2k images) whose chunks hold one row along time (no shards), as the
  generators write them: the ENCODED bytes, the chunk files of the episode's rows concatenated
  in row order (all chunks of a row, in chunk-grid order), read through the zarr store API
  (either format's chunk key encoding; directory, zip or memory stores). Their decoded bytes
  depend on the decoder's build (a decoded checksum could fail on a healthy store elsewhere);
  their encoded bytes do not, and a one-row chunk is written once, by the episode's
  `add_episode`, so this is as atomic as above. `layout` (chunks, codec, chunk key encoding) is
  recorded with the key: an array re-encoded later (`set_chunks`, `set_compressors`) is
  reported unchecked, not damaged.
- lossy keys with chunks of several rows stay unchecked (a chunk's encoded bytes change when a
  later episode fills it; its decoded bytes depend on the decoder build); `status` says why.

Verified wherever whole episodes are read (see `replay_buffer.py`). Stores without the array
(Diffusion Policy's, older policylab's, or appended to from such) open unchecked, and tables
without `encoded_keys` (policylab before encoded checksums) check their decoded columns exactly
as before; `status` says so. CRC-32C (google-crc32c, a zarr dependency) runs at ~2 GB/s; the
encoded check reads each chunk file once without decoding it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math

import google_crc32c
import numcodecs
import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from policylab.data.replay_backends import ReplayBufferError

CHECKSUMS_KEY = "episode_checksums"
ALGORITHM = "crc32c"
ENCODED_ATTR = "encoded_keys"
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


def row_chunked(arr) -> bool:
    """True when each chunk file of `arr` (a zarr array) holds one row along time: written once."""
    return arr.shards is None and arr.chunks[0] == 1


def layout(arr) -> str:
    """What the encoded bytes of `arr` depend on besides the data (chunks, codecs, chunk key
    encoding, dtype), as a JSON string: a mismatch means the array was re-encoded."""
    fields = {k: v for k, v in arr.metadata.to_dict().items() if k not in ("shape", "attributes")}
    return json.dumps(fields, sort_keys=True, default=str)


def new_table_attrs(data, keys) -> dict:
    """attrs of a new checksum table for the data keys `keys` of `data` (a zarr group): the
    lossless keys (decoded bytes) and the lossy one-row-chunked keys (encoded bytes)."""
    checked = sorted(k for k in keys if is_lossless(data[k]) or row_chunked(data[k]))
    return {"keys": checked, "algorithm": ALGORITHM,
            ENCODED_ATTR: {k: layout(data[k]) for k in checked if not is_lossless(data[k])}}


def _chunk_keys(arr, lo: int, hi: int) -> list[str]:
    """Store keys of the chunk files of rows lo..hi-1 of a one-row-chunked array, in row order."""
    inner = [range(math.ceil(n / c)) for n, c in zip(arr.shape[1:], arr.chunks[1:])]
    return [f"{arr.path}/{arr.metadata.encode_chunk_key((row, *idx))}"
            for row in range(lo, hi) for idx in itertools.product(*inner)]


def encoded_digests(arr, spans) -> list[int]:
    """CRC-32C of the encoded chunk bytes of each row span (lo, hi) of `arr` (one-row chunks),
    read through its store; a missing chunk file counts as empty (a mismatch)."""
    keys = [_chunk_keys(arr, lo, hi) for lo, hi in spans]

    async def run():
        prototype = default_buffer_prototype()
        return await asyncio.gather(*(arr.store.get(k, prototype=prototype) for k in itertools.chain(*keys)))

    blobs, out = iter(sync(run())), []
    for span_keys in keys:
        crc = 0
        for blob in itertools.islice(blobs, len(span_keys)):
            crc = google_crc32c.extend(crc, blob.to_bytes() if blob is not None else b"")
        out.append(int(crc))
    return out


def episode_row(episode: dict[str, np.ndarray], data, attrs: dict, start: int) -> np.ndarray:
    """(K,) uint32: the checksums of one episode `{key: (L, ...)}` just written to `data` (a zarr
    group) at rows start..: decoded keys cast to the stored dtypes (as zarr casts on write),
    encoded keys read back from the store."""
    encoded, out = attrs.get(ENCODED_ATTR, {}), []
    for k in attrs.get("keys", []):
        value = np.asarray(episode[k], dtype=data[k].dtype)
        out.append(encoded_digests(data[k], [(start, start + len(value))])[0] if k in encoded else digest(value))
    return np.array(out, dtype=np.uint32)


def stored_keys(meta) -> list[str]:
    """The data keys `meta/episode_checksums` (a zarr array) covers, in column order ([] when absent)."""
    if CHECKSUMS_KEY not in meta or not hasattr(meta[CHECKSUMS_KEY], "attrs"):
        return []
    return list(meta[CHECKSUMS_KEY].attrs.get("keys", []))


def table_attrs(meta) -> dict:
    """The attrs of `meta/episode_checksums` ({} when absent)."""
    return dict(meta[CHECKSUMS_KEY].attrs) if CHECKSUMS_KEY in meta and hasattr(meta[CHECKSUMS_KEY], "attrs") else {}


def _compare(name: str, key: str, actual: list[int], ends: np.ndarray, expected: np.ndarray,
             first_episode: int, what: str) -> list[tuple[int, str]]:
    out = []
    for e, (stored, got) in enumerate(zip(expected, actual), start=first_episode):
        lo, hi = (int(ends[e - 1]) if e else 0), int(ends[e])
        if got != int(stored):
            out.append((e, (f"store {name}: data/{key} episode {e} (rows {lo}..{hi - 1}) does not match its "
                            f"{ALGORITHM} checksum of {what} (stored {int(stored):#010x}, read {got:#010x}): the file changed "
                            f"after it was written (a flipped bit on disk, an edited or swapped chunk)")))
    return out


def _spans(ends: np.ndarray, first_episode: int, n: int) -> list[tuple[int, int]]:
    return [((int(ends[e - 1]) if e else 0), int(ends[e])) for e in range(first_episode, first_episode + n)]


def mismatches(name: str, key: str, values: np.ndarray, ends: np.ndarray, expected: np.ndarray,
               first_episode: int = 0) -> list[tuple[int, str]]:
    """(episode, message naming store, key, episode, rows) per episode whose rows fail their checksum.

    values: the decoded rows of episodes first_episode, first_episode + 1, ... (starting at the
    first one's start row); ends: (E,) cumulative episode ends of the store; expected: (n,) uint32.
    """
    start_row = int(ends[first_episode - 1]) if first_episode else 0
    actual = [digest(values[lo - start_row: hi - start_row]) for lo, hi in _spans(ends, first_episode, len(expected))]
    return _compare(name, key, actual, ends, expected, first_episode, "decoded bytes")


def encoded_mismatches(name: str, key: str, arr, ends: np.ndarray, expected: np.ndarray,
                       first_episode: int = 0) -> list[tuple[int, str]]:
    """`mismatches` for a key checksummed over its encoded chunk bytes: reads the chunk files of
    episodes first_episode.. (len(expected) of them) of `arr` (a zarr array)."""
    actual = encoded_digests(arr, _spans(ends, first_episode, len(expected)))
    return _compare(name, key, actual, ends, expected, first_episode, "encoded chunk bytes")


def key_mismatches(name: str, key: str, arr, ends: np.ndarray, expected: np.ndarray, first_episode: int,
                   encoded: bool, values: np.ndarray | None = None) -> list[tuple[int, str]]:
    """`encoded_mismatches` of `arr` (a zarr array) for an encoded key, else `mismatches` of
    `values` (the decoded rows of those episodes; read from `arr` when None)."""
    if encoded:
        return encoded_mismatches(name, key, arr, ends, expected, first_episode)
    if values is None:
        lo = int(ends[first_episode - 1]) if first_episode else 0
        values = arr[lo: int(ends[first_episode + len(expected) - 1])]
    return mismatches(name, key, values, ends, expected, first_episode)


def raise_first(name: str, key: str, problems: list[tuple[int, str]]) -> None:
    """Raise `problems` (from `mismatches` / `encoded_mismatches`) as ChecksumError (the first one, and how many more)."""
    if problems:
        more = f" ({len(problems) - 1} more episodes of data/{key} fail)" if len(problems) > 1 else ""
        raise ChecksumError(f"{problems[0][1]}{more}. `python -m policylab.data.repair {name}` lists every damaged "
                            f"episode")


def status(meta, data, n_episodes: int) -> dict:
    """What the checksums cover: {"algorithm", "checked": [keys], "encoded": [checked keys whose
    encoded bytes are checked], "unchecked": {key: why}, "episodes"}.

    meta / data: the zarr groups of a store.
    """
    has_table, keys, encoded = CHECKSUMS_KEY in meta, stored_keys(meta), table_attrs(meta).get(ENCODED_ATTR, {})
    covered = min(int(meta[CHECKSUMS_KEY].shape[0]), n_episodes) if has_table else 0
    unchecked = {}
    for key in sorted(data.array_keys()):
        why = _unchecked_reason(data[key], has_table, key in keys, encoded.get(key))
        if why:
            unchecked[key] = why
    if has_table and covered < n_episodes:
        unchecked["*"] = f"episodes {covered}..{n_episodes - 1} have no checksums (appended by an older writer)"
    checked = [k for k in keys if k in data.array_keys() and k not in unchecked]
    return {"algorithm": ALGORITHM if has_table else None, "episodes": covered, "checked": checked,
            "encoded": [k for k in checked if k in encoded], "unchecked": unchecked}


def _unchecked_reason(arr, has_table: bool, in_table: bool, encoded_layout: str | None) -> str | None:
    """Why data key `arr` is not checked (None: it is)."""
    if not has_table:
        return "the store has no checksums (written by Diffusion Policy or an older policylab)"
    if encoded_layout is not None:
        return None if layout(arr) == encoded_layout else (
            "re-encoded (chunks or codec changed) after the checksums of its encoded chunks were written")
    if in_table:
        return None if is_lossless(arr) else "recompressed with a lossy codec after its checksums were written"
    if is_lossless(arr):
        return "not covered by meta/episode_checksums"
    if not row_chunked(arr):
        return (f"lossy codec with chunks of {(arr.shards or arr.chunks)[0]} rows: decoded bytes differ between "
                f"decoder builds, and a chunk's encoded bytes change when a later episode fills it")
    return ("lossy codec: decoded bytes differ between decoder builds (the checksum table predates checksums "
            "of encoded chunks)")


def find_damaged(name: str, data, meta, ends: np.ndarray, block_bytes: float = 64e6) -> list[tuple[str, int, str]]:
    """(key, episode, message) for every episode whose checked rows fail their checksum (reads all
    checked data once, whole episodes of about `block_bytes` (decoded) at a time)."""
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
                         key_mismatches(name, key, arr, ends, table[e: last + 1, col], e, key in info["encoded"])]
            e = last + 1
    return problems


def status_line(info: dict) -> str:
    """One line for a printout (inspect) from `status(...)`."""
    if not info["algorithm"]:
        return "checksums: none (a store from Diffusion Policy or an older policylab): its bytes are not verified"
    unchecked = "; ".join(f"{k}: {why}" for k, why in info["unchecked"].items())
    checked = ", ".join(f"{k} (encoded)" if k in info.get("encoded", ()) else k for k in info["checked"])
    return (f"checksums: {info['algorithm']} of {info['episodes']} episodes x {checked or 'no key'}, verified "
            f"on load" + (f"; unchecked {unchecked}" if unchecked else ""))
