"""SequenceSampler: fixed-length windows over the episodes of a ReplayBuffer.

Diffusion Policy's semantics exactly. A window of T = `sequence_length` steps may start up to
`pad_before` steps before an episode and end up to `pad_after` steps after it; the missing steps
repeat the episode's first or last frame (edge replication, never zeros). With To=2, Ta=8, T=16
(pad_before = To-1, pad_after = Ta-1) an episode of length L gives L-7 windows::

    episode     |0|1|2|3|4|5|6|...
    window 0  |0|0|1|2|3|4|5|...        (frame 0 repeated once: the first observation has no past)

Two ways to read: `sample_sequence(i)` slices one window (the per-item path), and
`sample_batch(idxs)` gathers a whole batch with one fancy index per key from a precomputed table
of buffer indices (the vectorized path the datasets use).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from policylab.data.replay_buffer import ReplayBuffer


def create_indices(episode_ends: np.ndarray, sequence_length: int, episode_mask: np.ndarray,
                   pad_before: int = 0, pad_after: int = 0) -> np.ndarray:
    """(S, 4) int64 rows `(buffer_start, buffer_end, sample_start, sample_end)`, one per window."""
    episode_ends = np.asarray(episode_ends, dtype=np.int64)
    episode_mask = np.asarray(episode_mask, dtype=bool)
    if episode_mask.shape != episode_ends.shape:
        raise ValueError(f"episode_mask has shape {episode_mask.shape} but there are {len(episode_ends)} episodes")
    pad_before = min(max(pad_before, 0), sequence_length - 1)
    pad_after = min(max(pad_after, 0), sequence_length - 1)
    rows = []
    starts = np.concatenate([[0], episode_ends[:-1]])
    for ep_start, ep_end in zip(starts[episode_mask], episode_ends[episode_mask]):
        length = ep_end - ep_start
        idx = np.arange(-pad_before, length - sequence_length + pad_after + 1)
        buffer_start = np.maximum(idx, 0) + ep_start
        buffer_end = np.minimum(idx + sequence_length, length) + ep_start
        sample_start = buffer_start - (idx + ep_start)
        sample_end = sequence_length - ((idx + sequence_length + ep_start) - buffer_end)
        rows.append(np.stack([buffer_start, buffer_end, sample_start, sample_end], axis=1))
    if not rows:
        return np.zeros((0, 4), dtype=np.int64)
    return np.concatenate(rows).astype(np.int64)


def get_val_mask(n_episodes: int, val_ratio: float, seed: int = 0) -> np.ndarray:
    """(E,) bool: `round(E * val_ratio)` episodes (at least 1, at most E-1) held out for validation."""
    val_mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio <= 0:
        return val_mask
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    rng = np.random.default_rng(seed=seed)
    val_mask[rng.choice(n_episodes, size=n_val, replace=False)] = True
    return val_mask


def downsample_mask(mask: np.ndarray, max_n: int | None, seed: int = 0) -> np.ndarray:
    """Keep a random `max_n` of the True entries of `mask` (all of them when there are fewer)."""
    mask = np.asarray(mask, dtype=bool)
    if max_n is None or mask.sum() <= max_n:
        return mask
    current = np.flatnonzero(mask)
    rng = np.random.default_rng(seed=seed)
    keep = current[rng.choice(len(current), size=int(max_n), replace=False)]
    out = np.zeros_like(mask)
    out[keep] = True
    return out


def _missing_value(dtype: np.dtype):
    # NaN flags frames that key_first_k did not load (Diffusion Policy's bug catcher); integer
    # images cannot hold NaN (DP's silently became 0 with a warning), so they get 0 on purpose.
    return np.nan if np.issubdtype(dtype, np.floating) else 0


class SequenceSampler:
    """Windows of T steps over the episodes selected by `episode_mask`."""

    def __init__(self, replay_buffer: ReplayBuffer, sequence_length: int, pad_before: int = 0,
                 pad_after: int = 0, keys: Sequence[str] | None = None,
                 key_first_k: Mapping[str, int] | None = None, episode_mask: np.ndarray | None = None):
        if sequence_length < 1:
            raise ValueError(f"sequence_length must be >= 1, got {sequence_length}")
        keys = list(replay_buffer.keys()) if keys is None else list(keys)
        missing = sorted(set(keys) - set(replay_buffer.keys()))
        if missing:
            raise KeyError(f"keys {missing} not in the replay buffer; it has {sorted(replay_buffer.keys())}")
        episode_ends = replay_buffer.episode_ends
        if episode_mask is None:
            episode_mask = np.ones(len(episode_ends), dtype=bool)
        self.indices = create_indices(episode_ends, sequence_length, episode_mask, pad_before, pad_after)
        self.replay_buffer = replay_buffer
        self.keys = keys
        self.sequence_length = sequence_length
        self.key_first_k = dict(key_first_k or {})
        self.table = self._gather_table(self.indices, sequence_length)
        # a window inside its episode is one contiguous slice of the buffer: its first step, else -1
        unpadded = (self.indices[:, 2] == 0) & (self.indices[:, 3] == sequence_length)
        self.slice_start = np.where(unpadded, self.indices[:, 0], -1)

    @staticmethod
    def _gather_table(indices: np.ndarray, sequence_length: int) -> np.ndarray:
        """(S, T) buffer index of every step of every window, edge padding already applied."""
        buffer_start, buffer_end, sample_start, _ = indices.T
        t = np.arange(sequence_length)[None, :]
        offset = np.clip(t - sample_start[:, None], 0, (buffer_end - buffer_start - 1)[:, None])
        return buffer_start[:, None] + offset

    def __len__(self) -> int:
        return len(self.indices)

    def sample_sequence(self, idx: int) -> dict[str, np.ndarray]:
        """One window `{key: (T, ...)}`, sliced from the buffer (Diffusion Policy's per-item path)."""
        buffer_start, buffer_end, sample_start, sample_end = (int(v) for v in self.indices[idx])
        result = {}
        for key in self.keys:
            arr = self.replay_buffer[key]
            n_data = buffer_end - buffer_start
            if key in self.key_first_k:
                k_data = min(self.key_first_k[key], n_data)
                sample = np.full((n_data, *arr.shape[1:]), _missing_value(arr.dtype), dtype=arr.dtype)
                sample[:k_data] = arr[buffer_start:buffer_start + k_data]
            else:
                sample = np.asarray(arr[buffer_start:buffer_end])
            data = sample
            if sample_start > 0 or sample_end < self.sequence_length:
                data = np.empty((self.sequence_length, *arr.shape[1:]), dtype=arr.dtype)
                data[:sample_start] = sample[0]
                data[sample_end:] = sample[-1]
                data[sample_start:sample_end] = sample
            result[key] = data
        return result

    def sample_batch(self, idxs: np.ndarray, first_steps: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
        """A batch of windows `{key: (B, T, ...)}` with one fancy index per key.

        Equal, array for array, to stacking `sample_sequence(i)` over `idxs`. `first_steps={key: k}`
        returns only the first k steps `(B, k, ...)` of that key, and reads nothing else; for
        k <= key_first_k those steps are always loaded frames, never the NaN fill.
        """
        idxs = np.asarray(idxs, dtype=np.int64)
        table = self.table[idxs]
        first_steps = first_steps or {}
        result = {}
        for key in self.keys:
            arr = self.replay_buffer[key]
            if key in first_steps:
                k = first_steps[key]
                if k > self.key_first_k.get(key, self.sequence_length):
                    raise ValueError(f"first_steps[{key!r}] = {k} exceeds key_first_k {self.key_first_k[key]}")
                result[key] = self._take(arr, table[:, :k])
                continue
            if key not in self.key_first_k:
                result[key] = self._take(arr, table)
                continue
            # Only steps whose offset into the window's loaded frames is < k are read.
            loaded = (table - self.indices[idxs, 0:1]) < self.key_first_k[key]
            out = np.full((*table.shape, *arr.shape[1:]), _missing_value(arr.dtype), dtype=arr.dtype)
            out[loaded] = self._take(arr, table[loaded])
            result[key] = out
        return result

    @staticmethod
    def _take(arr, index: np.ndarray) -> np.ndarray:
        if isinstance(arr, np.ndarray):
            return arr[index]
        # zarr: read each distinct step once, then expand (windows of a batch overlap).
        unique, inverse = np.unique(index, return_inverse=True)
        return np.asarray(arr.get_orthogonal_selection((unique,)))[inverse.reshape(index.shape)]
