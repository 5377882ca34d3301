"""The two storages behind `ReplayBuffer`: numpy arrays in memory, or a zarr group (memory or disk).

Both hold the layout `data/<key> (N, ...)` and `meta/<key>`; `ReplayBuffer` keeps the episode logic
and asks its backend only for what differs between them: listing, creating and resizing arrays,
writing `meta`, and what opening a store checks.

The numpy backend grows an array into spare capacity or into a new allocation, never by
reallocating in place (`ndarray.resize(refcheck=False)` frees the memory that views still point
to): a view a reader holds (`rb[key]`, `get_episode(copy=False)`, a sampler's array) stays valid,
with its old length, while episodes are appended.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from policylab.data.codecs import compressors_for_format, get_compressor

EPISODE_ENDS = "episode_ends"
# zarr 3 skips chunks equal to the fill value by default; a missing file must mean lost data.
WRITE_ALL_CHUNKS = {"array.write_empty_chunks": True}
# Growth factor of the numpy backend's capacity: appends cost amortized O(1) copies per step.
GROWTH = 1.5


class ReplayBufferError(ValueError):
    """A store or an episode does not have the ReplayBuffer layout."""


def store_name(store) -> str:
    """A store as a user names it: its path for a directory or zip store, else zarr's description."""
    path = getattr(store, "root", None) or getattr(store, "path", None)
    return str(path) if path is not None else str(store)


def get_optimal_chunks(shape, dtype, target_chunk_bytes: float = 2e6) -> tuple[int, ...]:
    """Chunks along time only, about `target_chunk_bytes` each (whole rows per chunk)."""
    row_bytes = np.dtype(dtype).itemsize * math.prod(shape[1:])
    rows = int(max(1, min(max(shape[0], 1), target_chunk_bytes // max(row_bytes, 1))))
    return (rows, *shape[1:])


def write_array(group: zarr.Group, key: str, value, chunks, compressor) -> None:
    """Create (or replace) `group/key` holding `value`, every chunk written."""
    fmt = group.metadata.zarr_format
    chunks = tuple(chunks) if chunks is not None else get_optimal_chunks(value.shape, value.dtype)
    with zarr.config.set(WRITE_ALL_CHUNKS):
        arr = group.create_array(key, shape=value.shape, chunks=chunks, dtype=value.dtype, fill_value=0,
                                 compressors=compressors_for_format(compressor, fmt, key), overwrite=True)
        if value.shape[0]:
            arr[:] = value


_METADATA_FILES = (".zarray", ".zattrs", ".zgroup", "zarr.json")


def _is_metadata_key(key: str) -> bool:
    return key.rsplit("/", 1)[-1] in _METADATA_FILES


def list_prefix(store, prefix: str) -> list[str]:
    async def run():
        return [key async for key in store.list_prefix(prefix)]

    return sync(run())


def _copy_keys(src_store, dst_store, keys) -> None:
    async def run():
        prototype = default_buffer_prototype()
        for key in keys:
            await dst_store.set(key, await src_store.get(key, prototype=prototype))

    sync(run())


class NumpyBackend:
    """`{"data": {key: ndarray}, "meta": {key: ndarray}}` in memory."""

    name = "numpy"

    def __init__(self, root: Mapping):
        self.root = {"data": dict(root.get("data", {})), "meta": dict(root.get("meta", {}))}
        if EPISODE_ENDS not in self.root["meta"]:
            raise ReplayBufferError("missing meta/episode_ends in the numpy root")
        self._storage: dict[str, np.ndarray] = {}  # key -> allocation whose first rows are data[key]

    @property
    def data(self) -> dict:
        return self.root["data"]

    @property
    def meta(self) -> dict:
        return self.root["meta"]

    def keys(self) -> list[str]:
        return list(self.data)

    def arrays(self) -> list[tuple[str, np.ndarray]]:
        return list(self.data.items())

    def meta_arrays(self) -> list[tuple[str, np.ndarray]]:
        return list(self.meta.items())

    def writable(self) -> bool:
        return True

    def create_array(self, key: str, value: np.ndarray, chunks, compressor) -> None:
        self.data[key] = np.zeros((0, *value.shape[1:]), dtype=value.dtype)

    def resize(self, key: str, shape: tuple[int, ...]) -> None:
        arr, n = self.data[key], shape[0]
        storage = self._storage.get(key)
        owned = storage is not None and arr.base is storage and shape[1:] == arr.shape[1:]
        if owned and arr.shape[0] <= n <= storage.shape[0]:
            self.data[key] = storage[:n]  # rows past the old end are new: no reader sees them
            return
        # Shrinking, or growing past the capacity: a new allocation, so that views of the old one
        # keep their values (rows a reader holds are never overwritten by a later append).
        capacity = n if n <= arr.shape[0] else max(n, math.ceil(GROWTH * arr.shape[0]))
        storage = np.zeros((capacity, *shape[1:]), dtype=arr.dtype)
        keep = min(n, arr.shape[0])
        storage[:keep] = arr[:keep]
        self._storage[key] = storage
        self.data[key] = storage[:n]

    def append_episode_end(self, n_episodes: int, stop: int) -> None:
        ends = self.meta[EPISODE_ENDS]
        self.meta[EPISODE_ENDS] = np.append(np.asarray(ends[:n_episodes]), np.int64(stop))

    def set_episode_ends(self, ends: np.ndarray) -> None:
        self.meta[EPISODE_ENDS] = ends.copy()

    def set_meta(self, key: str, value: np.ndarray) -> None:
        self.meta[key] = value

    def set_episode_meta(self, key: str, index: int, value: np.ndarray, attrs=None) -> None:
        """meta/<key>[index] = value, the array cut or grown to index + 1 rows."""
        if index == 0 or key not in self.meta:  # the first episode defines the row's shape and dtype
            self.meta[key] = value[None].copy()
        else:
            self.meta[key] = np.concatenate([np.asarray(self.meta[key][:index]), value[None]])

    def trim_meta(self, key: str, n: int) -> None:
        self.meta[key] = self.meta[key][:n]

    def steps(self, value: np.ndarray, copy: bool) -> np.ndarray:
        return value.copy() if copy else value

    def save_defaults(self, arr) -> tuple[tuple[int, ...] | None, str]:
        """(chunks, compressor) a copy of `arr` gets when saved without being told."""
        return None, "default"

    def n_torn_ends(self, ends: np.ndarray) -> int:
        """Trailing fill-value entries of episode_ends to discard: none (numpy has no torn writes)."""
        return 0

    def find_missing_chunks(self, n_steps: int) -> dict[str, list[str]]:
        return {}


class ZarrBackend:
    """A zarr group holding `data/` and `meta/` (any zarr store: memory, directory, zip)."""

    name = "zarr"

    def __init__(self, root: zarr.Group):
        groups = set(root.group_keys())
        if "meta" not in groups or EPISODE_ENDS not in root["meta"]:
            raise ReplayBufferError(
                f"store {root.store} has no meta/episode_ends: a ReplayBuffer store holds "
                "data/<key> arrays and meta/episode_ends (cumulative episode end indices)")
        if "data" not in groups:
            raise ReplayBufferError(f"store {root.store} has no data group")
        self.root = root

    @property
    def data(self) -> zarr.Group:
        return self.root["data"]

    @property
    def meta(self) -> zarr.Group:
        return self.root["meta"]

    def keys(self) -> list[str]:
        return list(self.data.array_keys())

    def arrays(self) -> list[tuple[str, zarr.Array]]:
        return list(self.data.arrays())

    def meta_arrays(self) -> list[tuple[str, zarr.Array]]:
        return list(self.meta.arrays())

    def writable(self) -> bool:
        return not self.root.store.read_only

    def create_array(self, key: str, value: np.ndarray, chunks, compressor) -> None:
        write_array(self.data, key, np.zeros((0, *value.shape[1:]), dtype=value.dtype),
                    chunks or get_optimal_chunks(value.shape, value.dtype), compressor)

    def resize(self, key: str, shape: tuple[int, ...]) -> None:
        self.data[key].resize(shape)

    def append_episode_end(self, n_episodes: int, stop: int) -> None:
        ends = self.meta[EPISODE_ENDS]
        ends.resize((n_episodes + 1,))
        ends[n_episodes] = stop

    def set_episode_ends(self, ends: np.ndarray) -> None:
        arr = self.meta[EPISODE_ENDS]
        # Zero the dropped entries before shrinking: a chunk keeps values past the array's end,
        # and a later torn append must read the fill value 0 there, never a stale end.
        arr[len(ends):] = 0
        arr.resize((len(ends),))

    def set_meta(self, key: str, value: np.ndarray) -> None:
        if isinstance(self.root.store, (zarr.storage.LocalStore, zarr.storage.MemoryStore)):
            self._swap_meta_array(key, value)
        else:  # a zip store cannot overwrite a key in place; zip stores are written whole anyway
            if key in self.meta:
                del self.meta[key]
            write_array(self.meta, key, value, value.shape or (1,), "default")

    def set_episode_meta(self, key: str, index: int, value: np.ndarray, attrs=None) -> None:
        """meta/<key>[index] = value, the array cut or grown to index + 1 rows (created with `attrs`
        if missing). Rows past `index` are uncommitted leftovers of an interrupted append."""
        if key not in self.meta.array_keys() or index == 0:  # the first episode defines the row's shape and dtype
            write_array(self.meta, key, np.zeros((0, *value.shape), value.dtype), (1024, *value.shape), "default")
            self.meta[key].attrs.update(attrs or {})
        arr = self.meta[key]
        arr.resize((index + 1, *arr.shape[1:]))
        with zarr.config.set(WRITE_ALL_CHUNKS):
            arr[index] = value

    def trim_meta(self, key: str, n: int) -> None:
        self.meta[key].resize((n, *self.meta[key].shape[1:]))

    def _swap_meta_array(self, key: str, value: np.ndarray) -> None:
        """Replace meta/<key> so that a crash at any moment leaves the old or the new array, never none.

        The new array is encoded in memory, then its files are put in place (each atomically): chunks
        first, metadata (shape) last, then chunks past the new end are deleted. When dtype and
        per-row shape are unchanged, the old metadata reads the new chunks correctly, so every
        intermediate state is a valid array (old shape; for a grown list such as episode seeds, the
        old values). A changed dtype needs the old metadata deleted first (a short window; the repair
        tool handles a crash there).
        """
        store, prefix = self.root.store, f"{self.meta.path}/{key}/"
        existing = self.meta[key] if key in self.meta.array_keys() else None
        memory = zarr.storage.MemoryStore()
        same_layout = existing is not None and existing.dtype == value.dtype and existing.shape[1:] == value.shape[1:]
        if same_layout:  # keep the stored metadata (codec, chunks), change only the shape
            _copy_keys(store, memory, [k for k in list_prefix(store, prefix) if _is_metadata_key(k)])
            arr = zarr.open_array(memory, path=f"{self.meta.path}/{key}", mode="r+")
            arr.resize(value.shape)
            if value.shape[0]:
                arr[:] = value
        else:
            group = zarr.open_group(memory, path=self.meta.path, mode="a", zarr_format=self.root.metadata.zarr_format)
            write_array(group, key, value, (max(1024, value.shape[0] if value.ndim else 1), *value.shape[1:])
                        if value.ndim else (1,), "default")
        new_keys = list_prefix(memory, prefix)
        old_keys = list_prefix(store, prefix)
        if existing is not None and not same_layout:
            sync(store.delete_dir(prefix.rstrip("/")))
        _copy_keys(memory, store, [k for k in new_keys if not _is_metadata_key(k)])
        _copy_keys(memory, store, [k for k in new_keys if _is_metadata_key(k)])
        stale = [k for k in old_keys if k not in set(new_keys)] if same_layout else []
        for k in stale:
            sync(store.delete(k))

    def steps(self, value: np.ndarray, copy: bool) -> np.ndarray:
        return value  # reading a zarr slice already decodes into a new array

    def save_defaults(self, arr) -> tuple[tuple[int, ...] | None, str]:
        return arr.chunks, get_compressor(arr)

    def n_torn_ends(self, ends: np.ndarray) -> int:
        """Fill values at the end of episode_ends: it was resized but its chunk never written (a crash)."""
        return len(ends) - len(np.trim_zeros(ends, "b"))

    def find_missing_chunks(self, n_steps: int) -> dict[str, list[str]]:
        missing = {}
        for key, arr in self.data.arrays():
            grid = arr.shards or arr.chunks  # a sharded array stores one file per shard
            rows = min(n_steps, arr.shape[0])
            counts = [math.ceil(rows / grid[0]), *(math.ceil(n / c) for n, c in zip(arr.shape[1:], grid[1:]))]
            prefix = f"{arr.path}/"
            present = set(list_prefix(self.root.store, prefix))
            expected = (prefix + arr.metadata.encode_chunk_key(c) for c in itertools.product(*map(range, counts)))
            absent = [k[len(prefix):] for k in expected if k not in present]
            if absent:
                missing[key] = absent
        return missing
