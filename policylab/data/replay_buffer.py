"""ReplayBuffer: episodes concatenated along time, in memory (numpy) or in a zarr store.

Layout, the same as Diffusion Policy's so its published datasets open unchanged::

    data/<key>          (N, ...)   every step of every episode, time-major
    meta/episode_ends   (E,) int64 cumulative: episode i is data[ends[i-1]:ends[i]]

The public names are Diffusion Policy's (`create_from_path`, `copy_from_path`, `add_episode`, ...)
so ported code keeps working; the implementation is zarr 3. Stores are written in the zarr v2 format
by default, so files also go back to Diffusion Policy's code (zarr 2); pass `zarr_format=3` for v3.

`add_episode` is crash-safe: data arrays are grown and written first, `meta/episode_ends` last, and
zarr 3 writes every chunk file atomically. A process killed mid-episode therefore leaves either
no trace in `episode_ends` or a torn last entry that still holds the fill value 0; both are
detected on open, and the partial episode is discarded with a warning. Per-episode meta rows
(`add_episode(episode_meta={"episode_seeds": seed})`) and the episode's checksums are written
before `episode_ends` too: an episode, its seed and its checksums commit together.

Checksums (`checksums.py`): a store this code creates keeps a CRC-32C per episode and key of the
decoded bytes (of the encoded chunk files for lossy keys with one-row chunks, the generators' Jpeg2k
images) in `meta/episode_checksums`; they are verified whenever whole episodes are decoded
(`copy_from_path`, which the datasets use, `get_episode`, `save_to_path`, repair and inspect), so
bytes that changed on disk and still decode are an error naming the key and episode. Windows read
straight from a store on disk (`create_from_path` + a sampler) are not verified. Stores without
checksums (Diffusion Policy's, older policylab's) open unchecked; `checksum_status()` says so.

Corruption is loud: zarr reads a missing chunk file as the fill value (zeros), so stores made by
policylab write every chunk (even all-zero ones) and say so in a root attribute
(`policylab_all_chunks`); a chunk file missing inside their written range is an error on open naming
the store, array and chunk. Stores from elsewhere (no attribute) get a warning instead, since
writers may legitimately skip all-zero chunks. A chunk that fails to decode is re-raised naming
the store, array and chunk. `update_meta` never leaves a meta array missing, and
`python -m policylab.data.repair` fixes stores an older version left so.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Self

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from policylab.common.locking import WriterLock, store_lock
from policylab.data.checksums import (
    CHECKSUMS_KEY,
    digest,
    encoded_digests,
    episode_row,
    find_damaged,
    is_lossless,
    key_mismatches,
    new_table_attrs,
    raise_first,
    row_chunked,
    stored_keys,
    table_attrs,
)
from policylab.data.checksums import status as checksum_status
from policylab.data.codecs import (
    compressors_for_format,
    get_compressor,
    resolve_compressor,
)
from policylab.data.replay_backends import (
    EPISODE_ENDS,
    WRITE_ALL_CHUNKS,
    NumpyBackend,
    ReplayBufferError,
    ZarrBackend,
    get_optimal_chunks,
    store_name,
    write_array,
)

__all__ = ["EPISODE_ENDS", "ReplayBuffer", "ReplayBufferError", "get_optimal_chunks", "open_store"]

log = logging.getLogger(__name__)

ALL_CHUNKS_ATTR = "policylab_all_chunks"  # root attribute: every chunk in the written range has a file


def open_store(path: str | os.PathLike, mode: str = "r"):
    """A zarr store for a `.zarr` directory or a `.zip` file; `mode` is 'r', 'a' or 'w'."""
    path = Path(path)
    is_zip = path.suffix == ".zip" or path.is_file()
    if mode == "r" and not path.exists():
        raise FileNotFoundError(f"no ReplayBuffer store at {path}")
    if is_zip:
        return zarr.storage.ZipStore(path, mode=mode if mode != "a" else "a")
    return zarr.storage.LocalStore(path, read_only=(mode == "r"))


def _open_root(store, mode: str = "r") -> zarr.Group:
    try:
        return zarr.open_group(store, mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError) as err:
        raise ReplayBufferError(f"{store} is not a zarr store with a root group: {err}") from err


def _copy_raw(src_store, dst_store, prefix: str) -> None:
    """Copy every key under `prefix` byte for byte: no decode, no re-encode (Jpeg2k stays as is)."""

    async def run():
        prototype = default_buffer_prototype()
        async for key in src_store.list_prefix(prefix):
            await dst_store.set(key, await src_store.get(key, prototype=prototype))

    sync(run())


class ReplayBuffer:
    """Episodes of `{key: (L, ...)}` arrays, on a numpy dict or a zarr group (`replay_backends.py`)."""

    def __init__(self, root: zarr.Group | dict, check_chunks: bool = True):
        """`check_chunks=False` skips the missing-chunk check (for the repair tool, which reports them)."""
        if isinstance(root, zarr.Group):
            self._backend = ZarrBackend(root)
        elif isinstance(root, Mapping):
            self._backend = NumpyBackend(root)
        else:
            raise TypeError(f"root must be a zarr.Group or a dict, got {type(root).__name__}")
        self._writer_lock: WriterLock | None = None
        self._check_chunks_on_open = check_chunks
        self._validate()

    @classmethod
    def create_empty_numpy(cls) -> ReplayBuffer:
        return cls({"data": {}, "meta": {EPISODE_ENDS: np.zeros((0,), dtype=np.int64)}})

    @classmethod
    def create_empty_zarr(cls, storage=None, root: zarr.Group | None = None, zarr_format: int = 2):
        if root is None:
            storage = zarr.storage.MemoryStore() if storage is None else storage
            root = zarr.open_group(storage, mode="w", zarr_format=zarr_format)
        cls._init_layout(root)
        return cls(root)

    @classmethod
    def create_from_group(cls, group: zarr.Group) -> ReplayBuffer:
        if not list(group.group_keys()) and not list(group.array_keys()):
            cls._init_layout(group)
        return cls(group)

    @classmethod
    def create_from_path(cls, path, mode: str = "r", zarr_format: int = 2, check_chunks: bool = True) -> ReplayBuffer:
        """Open a store on disk, in place (data stays on disk; for data larger than RAM).

        mode 'r' reads; 'a' appends, creating the store if needed; 'w' starts an empty store. Writers
        hold the store's writer lock until `close()` (or exit): a second writing process gets LockError.
        """
        path = Path(path)
        if mode == "r":
            return cls(_open_root(open_store(path, mode), mode="r"), check_chunks=check_chunks)
        if mode not in ("a", "w"):
            raise ValueError(f"mode must be 'r', 'a' or 'w', got {mode!r}")
        # One writer per store: a second process appending would interleave its steps into our
        # episodes. Taken before anything is opened (mode 'w' wipes, opening may truncate a torn append).
        lock = store_lock(path).acquire()
        try:
            if mode == "a" and path.exists():
                buffer = cls(_open_root(open_store(path, mode), mode="r+"), check_chunks=check_chunks)
            else:
                root = zarr.open_group(open_store(path, "w"), mode="w", zarr_format=zarr_format)
                cls._init_layout(root)
                buffer = cls(root)
        except BaseException:
            lock.release()
            raise
        buffer._writer_lock = lock
        return buffer

    def close(self) -> None:
        """Release the store's writer lock (also released when the buffer is garbage-collected or
        the process exits); the buffer must not be written afterwards."""
        if self._writer_lock is not None:
            self._writer_lock.release()
            self._writer_lock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def copy_from_store(cls, src_store, store=None, keys=None, chunks=None, compressors=None,
                        if_exists: str = "replace") -> ReplayBuffer:
        """Copy a store (or a subset of its data keys) into memory or into `store`.

        store=None loads every array decoded into numpy (fastest access, raw-bytes memory).
        With a store (e.g. `zarr.storage.MemoryStore()`), arrays whose chunks and compressor are
        unchanged are copied byte for byte, so Jpeg2k images stay compressed in RAM.
        """
        src_root = _open_root(src_store, mode="r")
        src_buffer = cls(src_root)
        keys = list(src_root["data"].array_keys()) if keys is None else list(keys)
        missing = sorted(set(keys) - set(src_root["data"].array_keys()))
        if missing:
            raise KeyError(f"keys {missing} not in the store; it has {sorted(src_root['data'].array_keys())}")
        chunks, compressors = dict(chunks or {}), dict(compressors or {})
        n_steps = src_buffer.n_steps
        if store is None:
            data = {key: cls._read_prefix(src_root["data"][key], n_steps) for key in keys}
            src_buffer.verify_rows(data)
            # verified: memory needs no checksums (and appends to it would not keep them)
            meta = {key: np.asarray(arr[:]) for key, arr in src_root["meta"].arrays() if key != CHECKSUMS_KEY}
            meta[EPISODE_ENDS] = src_buffer.episode_ends
            return cls({"data": data, "meta": meta})

        fmt = src_root.metadata.zarr_format
        root = zarr.open_group(store, mode="w" if if_exists == "replace" else "w-", zarr_format=fmt)
        root.require_group("data")
        _copy_raw(src_store, store, "meta/")
        root.require_group("meta")
        for key in keys:
            src = src_root["data"][key]
            same_chunks = chunks.get(key, src.chunks) == src.chunks
            same_codec = key not in compressors or resolve_compressor(compressors[key]) == get_compressor(src)
            if same_chunks and same_codec:
                _copy_raw(src_store, store, f"data/{key}/")
            else:
                write_array(root["data"], key, src[:n_steps], chunks.get(key, src.chunks),
                            compressors.get(key, get_compressor(src)))
        return cls(zarr.open_group(store, mode="r+"))

    @classmethod
    def copy_from_path(cls, zarr_path, store=None, keys=None, chunks=None, compressors=None,
                       if_exists: str = "replace") -> ReplayBuffer:
        """`copy_from_store` on a `.zarr` directory or `.zarr.zip` file."""
        src = open_store(zarr_path, "r")
        try:
            return cls.copy_from_store(src, store=store, keys=keys, chunks=chunks,
                                       compressors=compressors, if_exists=if_exists)
        finally:
            if isinstance(src, zarr.storage.ZipStore):
                src.close()

    def save_to_store(self, store, chunks=None, compressors=None, zarr_format: int = 2):
        """Write every array into an empty store (recompressing as asked)."""
        chunks, compressors = dict(chunks or {}), dict(compressors or {})
        root = zarr.open_group(store, mode="w", zarr_format=zarr_format)
        root.attrs[ALL_CHUNKS_ATTR] = True
        root.require_group("data")
        root.require_group("meta")
        meta = {key: np.asarray(value[:]) for key, value in self._backend.meta_arrays() if key != CHECKSUMS_KEY}
        meta[EPISODE_ENDS] = self.episode_ends
        for key, value in meta.items():
            write_array(root["meta"], key, value, (max(1024, value.shape[0] if value.ndim else 1),)
                        if key == EPISODE_ENDS else (value.shape or (1,)), "default")
        sums, bounds = {}, np.concatenate([[0], self.episode_ends])
        for key, value in self.items():
            default_chunks, default_codec = self._backend.save_defaults(value)
            rows = np.asarray(value[: self.n_steps])
            self.verify_rows({key: rows})  # never re-derive checksums from damaged rows
            write_array(root["data"], key, rows, chunks.get(key, default_chunks), compressors.get(key, default_codec))
            saved, spans = root["data"][key], list(itertools.pairwise(bounds.tolist()))
            if is_lossless(saved):
                sums[key] = [digest(rows[lo:hi]) for lo, hi in spans]
            elif row_chunked(saved):  # lossy: the encoded chunks just written (`checksums.py`)
                sums[key] = encoded_digests(saved, spans)
        table = np.array([sums[k] for k in sorted(sums)], dtype=np.uint32).T.reshape(self.n_episodes, len(sums))
        write_array(root["meta"], CHECKSUMS_KEY, table, (max(1024, self.n_episodes), len(sums) or 1), "default")
        root["meta"][CHECKSUMS_KEY].attrs.update(new_table_attrs(root["data"], sums))
        return store

    def save_to_path(self, zarr_path, chunks=None, compressors=None, zarr_format: int = 2):
        """Write to a `.zarr` directory or a `.zip` file atomically (temp file, then rename)."""
        path = Path(zarr_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
        store = open_store(tmp, "w") if path.suffix != ".zip" else zarr.storage.ZipStore(tmp, mode="w")
        self.save_to_store(store, chunks=chunks, compressors=compressors, zarr_format=zarr_format)
        if isinstance(store, zarr.storage.ZipStore):
            store.close()
        if path.exists():
            # Move the old copy aside first: os.replace cannot overwrite a non-empty directory.
            os.replace(path, tmp.parent / "previous")
        os.replace(tmp, path)
        shutil.rmtree(tmp.parent, ignore_errors=True)
        return path

    @property
    def backend(self) -> str:
        """"numpy" or "zarr"."""
        return self._backend.name

    @property
    def root(self) -> zarr.Group | dict:
        return self._backend.root

    @property
    def data(self):
        return self._backend.data

    @property
    def meta(self):
        return self._backend.meta

    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) int64, cumulative."""
        return np.asarray(self.meta[EPISODE_ENDS][: self._n_episodes], dtype=np.int64)

    @property
    def n_episodes(self) -> int:
        return self._n_episodes

    @property
    def n_steps(self) -> int:
        return self._n_steps

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self.episode_ends, prepend=0)

    def keys(self) -> list[str]:
        return self._backend.keys()

    def values(self):
        return [self[key] for key in self.keys()]

    def items(self):
        return [(key, self[key]) for key in self.keys()]

    def __getitem__(self, key: str):
        return self.data[key]

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __len__(self) -> int:
        return self.n_steps

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in self.items())
        return f"ReplayBuffer({self.backend}, {self.n_episodes} episodes, {self.n_steps} steps; {fields})"

    def add_episode(self, data: Mapping[str, np.ndarray], chunks=None, compressors=None,
                    episode_meta: Mapping[str, np.ndarray] | None = None) -> None:
        """Append one episode `{key: (L, ...)}`; atomic on zarr (data first, episode_ends last).

        chunks / compressors: per-key dicts (or one value for every key) used when a key's array
        is created; compressors are names ('default', 'disk', 'image', 'none') or codecs.
        episode_meta: `{"episode_<name>": value}` one row per episode (e.g. the seed), committed
        with the episode: written before episode_ends, so a kill leaves both or neither.
        On zarr, a new store also gets the episode's checksums (`checksums.py`).
        """
        episode = {key: np.asarray(value) for key, value in data.items()}
        length = self._check_episode(episode)
        rows = self._check_episode_meta(episode_meta or {})
        start, stop = self.n_steps, self.n_steps + length
        with zarr.config.set(WRITE_ALL_CHUNKS):
            for key, value in episode.items():
                if key not in self:
                    self._backend.create_array(key, value, self._per_key(chunks, key),
                                               self._per_key(compressors, key, "default"))
                arr = self.data[key]
                self._backend.resize(key, (stop, *arr.shape[1:]))
                self.data[key][start:stop] = value
        attrs = {}
        if self.backend == "zarr" and (self._n_episodes == 0 or CHECKSUMS_KEY in self.meta):
            attrs = table_attrs(self.meta) if self._n_episodes else new_table_attrs(self.data, episode)
            rows[CHECKSUMS_KEY] = episode_row(episode, self.data, attrs, start)
        for key, value in rows.items():
            self._backend.set_episode_meta(key, self._n_episodes, value, attrs if key == CHECKSUMS_KEY else None)
        self._append_episode_end(stop)

    def episode_meta(self, key: str) -> np.ndarray:
        """(E, ...) the per-episode meta array `meta/<key>` for the committed episodes (rows past
        them are leftovers of an interrupted append). ReplayBufferError when it has fewer rows."""
        if key not in self.meta:
            raise KeyError(f"no meta/{key} in this ReplayBuffer")
        values = np.asarray(self.meta[key][: self.n_episodes])
        if len(values) < self.n_episodes:
            raise ReplayBufferError(f"meta/{key} has {len(values)} entries for {self.n_episodes} episodes; "
                                    f"`python -m policylab.data.repair` fixes it")
        return values

    def extend(self, data: Mapping[str, np.ndarray]) -> None:
        self.add_episode(data)

    def drop_episode(self) -> None:
        """Remove the last episode."""
        if self.n_episodes == 0:
            raise IndexError("drop_episode on an empty ReplayBuffer")
        ends = self.episode_ends[:-1]
        new_n = int(ends[-1]) if len(ends) else 0
        # episode_ends first: a crash in between leaves surplus data, which opening truncates.
        self._set_episode_ends(ends)
        for key in self.keys():
            self._backend.resize(key, (new_n, *self.data[key].shape[1:]))
        for key in self.per_episode_meta_keys():
            if self.meta[key].shape[0] > self.n_episodes:
                self._backend.trim_meta(key, self.n_episodes)

    def per_episode_meta_keys(self) -> list[str]:
        """The meta arrays with one row per episode: `meta/episode_*` but episode_ends."""
        return sorted(k for k, _ in self._backend.meta_arrays() if k.startswith("episode_") and k != EPISODE_ENDS)

    def pop_episode(self) -> dict[str, np.ndarray]:
        episode = self.get_episode(self.n_episodes - 1, copy=True)
        self.drop_episode()
        return episode

    def get_episode_slice(self, idx: int) -> slice:
        idx = range(self.n_episodes)[idx]
        ends = self.episode_ends
        return slice(int(ends[idx - 1]) if idx > 0 else 0, int(ends[idx]))

    def get_episode(self, idx: int, copy: bool = False) -> dict[str, np.ndarray]:
        """{key: (L, ...)}; on a store with checksums, the episode is verified (ChecksumError naming key
        and episode)."""
        idx = range(self.n_episodes)[idx]
        sl = self.get_episode_slice(idx)
        episode = self.get_steps_slice(sl.start, sl.stop, copy=copy)
        if self.backend == "zarr":
            self.verify_rows(episode, first_episode=idx, n=1)
        return episode

    def checksum_status(self) -> dict:
        """What this store's checksums cover (`checksums.status`): algorithm (None: unchecked),
        checked keys, unchecked keys with the reason, episodes covered."""
        if self.backend != "zarr":
            return {"algorithm": None, "episodes": 0, "checked": [], "encoded": [],
                    "unchecked": dict.fromkeys(self.keys(), "in memory (verified when loaded)")}
        return checksum_status(self.meta, self.data, self.n_episodes)

    def find_damaged_episodes(self) -> list[tuple[str, int, str]]:
        """Read every checked key once: (key, episode, message) per episode whose bytes fail their checksum."""
        if self.backend != "zarr":
            return []
        return find_damaged(store_name(self.root.store), self.data, self.meta, self.episode_ends)

    def verify_rows(self, data: Mapping[str, np.ndarray], first_episode: int = 0, n: int | None = None) -> None:
        """Check decoded rows `{key: (rows of episodes first_episode.., ...)}` (all of them, or `n`
        episodes) against the stored checksums; ChecksumError naming store, key and episode."""
        if self.backend != "zarr" or CHECKSUMS_KEY not in self.meta:
            return
        info = self.checksum_status()
        n = info["episodes"] - first_episode if n is None else min(n, info["episodes"] - first_episode)
        if n <= 0:
            return
        table = np.asarray(self.meta[CHECKSUMS_KEY][first_episode: first_episode + n])
        columns, name = stored_keys(self.meta), store_name(self.root.store)
        for key in sorted(set(info["checked"]) & set(data)):  # encoded keys: their chunk files, not `data`
            raise_first(name, key, key_mismatches(name, key, self.data[key], self.episode_ends,
                                                  table[:, columns.index(key)], first_episode,
                                                  key in info["encoded"], data[key]))

    def get_steps_slice(self, start: int, stop: int, step=None, copy: bool = False) -> dict[str, np.ndarray]:
        sl = slice(start, stop, step)
        out = {}
        for key, arr in self.items():
            out[key] = self._backend.steps(arr[sl], copy)
        return out

    def update_meta(self, values: Mapping[str, np.ndarray]) -> None:
        for key, value in values.items():
            if key == EPISODE_ENDS:
                raise ValueError("episode_ends is managed by add_episode / drop_episode")
            self._backend.set_meta(key, np.asarray(value))

    def get_chunks(self) -> dict[str, tuple[int, ...]]:
        self._require_zarr("get_chunks")
        return {key: arr.chunks for key, arr in self.items()}

    def set_chunks(self, chunks: Mapping[str, tuple[int, ...]]) -> None:
        self._require_zarr("set_chunks")
        for key, value in chunks.items():
            if tuple(value) != self.data[key].chunks:
                self._rewrite(key, tuple(value), get_compressor(self.data[key]))

    def get_compressors(self) -> dict:
        self._require_zarr("get_compressors")
        return {key: get_compressor(arr) for key, arr in self.items()}

    def set_compressors(self, compressors: Mapping) -> None:
        self._require_zarr("set_compressors")
        for key, value in compressors.items():
            if resolve_compressor(value) != get_compressor(self.data[key]):
                self._rewrite(key, self.data[key].chunks, value)

    @staticmethod
    def _init_layout(root: zarr.Group) -> None:
        if not list(root.group_keys()):  # a new store: every chunk it gets is written by this code
            root.attrs[ALL_CHUNKS_ATTR] = True
        root.require_group("data")
        meta = root.require_group("meta")
        if EPISODE_ENDS not in meta:
            meta.create_array(EPISODE_ENDS, shape=(0,), chunks=(1024,), dtype=np.int64, fill_value=0,
                              compressors=compressors_for_format("default", root.metadata.zarr_format))

    def _validate(self) -> None:
        ends = np.asarray(self.meta[EPISODE_ENDS][:], dtype=np.int64)
        n_torn = self._backend.n_torn_ends(ends)
        if n_torn:
            log.warning("discarding %d torn entries at the end of meta/episode_ends (interrupted write)", n_torn)
            ends = ends[: len(ends) - n_torn]
        steps = np.diff(ends, prepend=0)
        bad = np.flatnonzero(steps <= 0)
        if len(bad):
            i = int(bad[0])
            prev = int(ends[i - 1]) if i > 0 else 0
            raise ReplayBufferError(
                f"meta/episode_ends must be strictly increasing: episode_ends[{i}] = {int(ends[i])} "
                f"after {prev}")
        n_steps = int(ends[-1]) if len(ends) else 0
        lengths = {key: arr.shape[0] for key, arr in self._backend.arrays()}
        for key, length in lengths.items():
            if length < n_steps:
                raise ReplayBufferError(
                    f"data/{key} has {length} steps but meta/episode_ends ends at {n_steps}")
        self._n_episodes, self._n_steps = len(ends), n_steps
        if self._check_chunks_on_open:
            self._check_chunks()
        if len(ends) != self.meta[EPISODE_ENDS].shape[0] or any(n > n_steps for n in lengths.values()):
            log.warning("store has data past the last complete episode (interrupted add_episode); "
                        "it is ignored%s", " and truncated" if self._backend.writable() else "")
            if self._backend.writable():
                for key in lengths:
                    self._backend.resize(key, (n_steps, *self.data[key].shape[1:]))
                self._set_episode_ends(ends)

    def find_missing_chunks(self) -> dict[str, list[str]]:
        """{data key: chunk keys (e.g. "1.0", "c/1/0") missing inside rows [0, n_steps)} (zarr backend)."""
        return self._backend.find_missing_chunks(self._n_steps)

    def _check_chunks(self) -> None:
        missing = self.find_missing_chunks()
        if not missing:
            return
        key, chunks = next(iter(missing.items()))
        more = f" and {len(chunks) - 1} more" if len(chunks) > 1 else ""
        where = (f"store {self.root.store}: data/{key} has no chunk file {chunks[0]!r}{more} inside its written "
                 f"range; those steps would read as zeros")
        others = sorted(set(missing) - {key})
        where += f" (also missing chunks in {others})" if others else ""
        if self.root.attrs.get(ALL_CHUNKS_ATTR):
            raise ReplayBufferError(f"{where}. The store is damaged (a deleted or lost file); "
                                    f"`python -m policylab.data.repair` reports it")
        log.warning("%s. If a writer skipped all-zero chunks this is harmless; if files were lost, the data is "
                    "wrong", where)

    def _check_episode_meta(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = {}
        for key, value in values.items():
            if not key.startswith("episode_") or key in (EPISODE_ENDS, CHECKSUMS_KEY):
                raise ReplayBufferError(f"episode_meta key {key!r}: per-episode meta keys are named "
                                        f"episode_<name> (not episode_ends or {CHECKSUMS_KEY})")
            have = self.meta[key].shape[0] if key in self.meta else 0
            if have < self.n_episodes:
                raise ReplayBufferError(f"meta/{key} has {have} entries for {self.n_episodes} episodes; cannot "
                                        f"add one for the next episode (`python -m policylab.data.repair` fixes it)")
            rows[key] = np.asarray(value)
        return rows

    def _check_episode(self, episode: dict[str, np.ndarray]) -> int:
        if not episode:
            raise ReplayBufferError("add_episode got no arrays")
        lengths = {key: (v.shape[0] if v.ndim else None) for key, v in episode.items()}
        if len(set(lengths.values())) != 1 or None in lengths.values():
            raise ReplayBufferError(f"episode arrays must share their first (time) dimension; got lengths {lengths}")
        length = next(iter(lengths.values()))
        if length == 0:
            raise ReplayBufferError(f"episode is empty (0 steps) for keys {sorted(episode)}")
        if self.n_episodes > 0:
            stored, given = set(self.keys()), set(episode)
            if stored != given:
                raise ReplayBufferError(
                    f"episode keys {sorted(given)} differ from the buffer's {sorted(stored)}: "
                    f"missing {sorted(stored - given)}, unexpected {sorted(given - stored)}")
        for key, value in episode.items():
            if key in self and tuple(self.data[key].shape[1:]) != value.shape[1:]:
                raise ReplayBufferError(
                    f"key {key!r}: episode has per-step shape {value.shape[1:]} but the buffer holds "
                    f"{tuple(self.data[key].shape[1:])}")
        return length

    @staticmethod
    def _per_key(option, key: str, default=None):
        if isinstance(option, Mapping):
            return option.get(key, default)
        return default if option is None else option

    def _append_episode_end(self, stop: int) -> None:
        self._backend.append_episode_end(self._n_episodes, stop)
        self._n_episodes, self._n_steps = self._n_episodes + 1, stop

    def _set_episode_ends(self, ends: np.ndarray) -> None:
        ends = np.asarray(ends, dtype=np.int64)
        self._backend.set_episode_ends(ends)
        self._n_episodes, self._n_steps = len(ends), int(ends[-1]) if len(ends) else 0

    def _rewrite(self, key: str, chunks, compressor) -> None:
        value = self.data[key][:]
        write_array(self.data, key, value, chunks, compressor)

    def _require_zarr(self, name: str) -> None:
        if self.backend != "zarr":
            raise TypeError(f"{name} needs the zarr backend; this ReplayBuffer is numpy")

    @staticmethod
    def _read_prefix(arr, n_steps: int) -> np.ndarray:
        """Decode `arr[:n_steps]` into one preallocated array (peak memory = the array itself)."""
        out = np.empty((n_steps, *arr.shape[1:]), dtype=arr.dtype)
        step = max(arr.chunks[0], 1) * max(1, 64 // max(arr.chunks[0], 1))
        for start in range(0, n_steps, step):
            try:
                out[start:start + step] = arr[start:min(start + step, n_steps)]
            except Exception as err:  # codecs raise their own types (e.g. blosc's RuntimeError)
                raise ReplayBufferError(ReplayBuffer._undecodable(arr, start, min(start + step, n_steps), err)) from err
        return out

    @staticmethod
    def _undecodable(arr, start: int, stop: int, err: Exception) -> str:
        """Which chunk of rows [start, stop) of `arr` fails to decode, as a message naming store, array, chunk."""
        rows = arr.chunks[0]
        for first in range(start - start % rows, stop, rows):
            try:
                arr[first:min(first + rows, arr.shape[0])]
            except Exception as chunk_err:  # noqa: BLE001 - any codec error: the same one, now pinned to a chunk
                index = (first // rows, *(0 for _ in arr.shape[1:]))
                return (f"store {arr.store}: {arr.path} chunk {arr.metadata.encode_chunk_key(index)!r} (rows "
                        f"{first}..{min(first + rows, arr.shape[0]) - 1}) cannot be decoded, the file is corrupt: "
                        f"{type(chunk_err).__name__}: {chunk_err}")
        return f"store {arr.store}: {arr.path} rows {start}..{stop - 1} cannot be read: {type(err).__name__}: {err}"
