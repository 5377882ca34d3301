"""TransitionSampler: (obs, action chunk, reward, next obs) transitions on Diffusion Policy's windows.

The windows are `create_indices`' (pad_before To-1, pad_after Ta-1, edge replication), so a
transition's "obs" and "action" equal what SequenceDataset gives for the same window. A window
whose current step is t (its position To-1) executes the chunk t..t+Ta-1 and yields::

    reward    sum_{i<k} gamma^i * (reward_scale * r_{t+i} + reward_bias)   k = steps of the chunk
    discount  gamma^k                                                      inside the episode
    done      1.0 if the episode terminated inside the chunk
    next_obs  the obs window ending at step t+Ta; when done, the one ending at the last step

A window whose chunk runs past the last step of an episode that did not terminate (a time limit)
has no next observation and is left out. The store holds episodes in the layout of
`policylab.rl.episodes`; without `terminal`, every episode is terminal at its last step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from policylab.common.obs import check_stored_shapes, stored_to_policy
from policylab.common.shape_meta import ShapeMeta
from policylab.data.replay_buffer import ReplayBuffer
from policylab.data.sampler import SequenceSampler, create_indices
from policylab.models.critic import stem_key, trunk_key
from policylab.rl.episodes import INTERVENTION, REWARD, TERMINAL, validate_steps
from policylab.rl.returns import check_gamma, episode_mc_returns


@dataclass(frozen=True)
class TransitionSpec:
    """What a transition is: its windows, discount and reward shaping (checked when built).

    horizon, n_obs_steps, n_action_steps: T, To, Ta with 1 <= To <= T, Ta >= 1, T >= To + Ta - 1.
    gamma: per-step discount in [0, 1).
    reward_scale, reward_bias: r' = reward_scale * r + reward_bias, used for "reward" and
        "mc_return"; reward_neg is in raw reward units.
    reward_neg, is_sparse_reward: ConRFT's sparse special case of the MC return.
    embedding_key: store key of (N, D) embeddings; adds "embedding" and "next_embedding".
    trunk_keys: rgb obs keys whose frozen-trunk features are stored (`trunk_<key>` (N, C, h, w));
        adds "trunk" and "next_trunk" `{key: (B, C, h, w)}` (the frame of step t / t').
    trunk_identity: the trunk those features must come from (`OnlineReplayStore` checks it).
    stem_keys: rgb obs keys whose actor image-head maps are stored (`stem_<key>`, the frozen
        encoder's stems when the critic caches another trunk); adds "stem" and "next_stem".
    skip_rgb: batches carry no rgb obs (who reads them, the actor's frozen encoder and the
        critic's trunk, reads stored features instead); saves gathering the images.
    """

    horizon: int
    n_obs_steps: int
    n_action_steps: int
    gamma: float
    reward_scale: float = 1.0
    reward_bias: float = 0.0
    reward_neg: float | None = None
    is_sparse_reward: bool = False
    embedding_key: str | None = None
    trunk_keys: tuple[str, ...] = ()
    trunk_identity: str = ""
    stem_keys: tuple[str, ...] = ()
    skip_rgb: bool = False

    def __post_init__(self):
        T, To, Ta = self.horizon, self.n_obs_steps, self.n_action_steps
        if not 1 <= To <= T or Ta < 1 or T < To + Ta - 1:
            raise ValueError(f"need 1 <= To <= T, Ta >= 1 and T >= To + Ta - 1; got T={T}, To={To}, Ta={Ta}")
        check_gamma(self.gamma)


def check_types(shape_meta, spec) -> None:
    """TypeError unless a parsed ShapeMeta and a TransitionSpec (a dict would be parsed in many places)."""
    if not isinstance(shape_meta, ShapeMeta) or not isinstance(spec, TransitionSpec):
        raise TypeError(f"expected a ShapeMeta (ShapeMeta.parse(shape_meta)) and a TransitionSpec, got "
                        f"{type(shape_meta).__name__} and {type(spec).__name__}")


class _GrowingTable:
    """Named arrays sharing a first axis, appended with amortized doubling (online buffers grow)."""

    def __init__(self):
        self._arrays: dict[str, np.ndarray] = {}
        self.n = 0

    def append(self, rows: dict[str, np.ndarray]) -> None:
        n_new = len(next(iter(rows.values())))
        for name, value in rows.items():
            arr = self._arrays.get(name)
            if arr is None:
                arr = np.empty((max(n_new, 16), *value.shape[1:]), dtype=value.dtype)
            elif self.n + n_new > len(arr):
                grown = np.empty((max(2 * len(arr), self.n + n_new), *arr.shape[1:]), dtype=arr.dtype)
                grown[: self.n] = arr[: self.n]
                arr = grown
            arr[self.n: self.n + n_new] = value
            self._arrays[name] = arr
        self.n += n_new

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name][: self.n]


class TransitionSampler:
    """Transitions of every window of a ReplayBuffer; `extend()` picks up appended episodes.

    Args:
        replay_buffer: episodes in the layout above (numpy or zarr backend; may start empty).
        shape_meta: the task's (obs keys with `zarr_key`/`index`, action).
        spec: the windows, discount and reward shaping.
        episode_mask: (E,) bool over the episodes present now; episodes appended later are used.
    """

    def __init__(self, replay_buffer: ReplayBuffer, shape_meta: ShapeMeta, spec: TransitionSpec,
                 episode_mask: np.ndarray | None = None):
        check_types(shape_meta, spec)
        self.replay_buffer, self.meta, self.spec = replay_buffer, shape_meta, spec
        self.horizon, self.n_obs_steps, self.n_action_steps = spec.horizon, spec.n_obs_steps, spec.n_action_steps
        self.gamma = float(spec.gamma)
        self.reward_scale, self.reward_bias = float(spec.reward_scale), float(spec.reward_bias)
        self.reward_neg = None if spec.reward_neg is None else float(self._scaled(spec.reward_neg))
        self.is_sparse_reward = spec.is_sparse_reward
        self.embedding_key = spec.embedding_key
        self.action_key = self.meta.action_zarr_key
        self._episode_mask = None if episode_mask is None else np.asarray(episode_mask, dtype=bool)
        if self._episode_mask is not None and len(self._episode_mask) != replay_buffer.n_episodes:
            raise ValueError(f"episode_mask has {len(self._episode_mask)} entries but the buffer has "
                             f"{replay_buffer.n_episodes} episodes")
        self._windows = _GrowingTable()
        self._mc = _GrowingTable()
        self._n_episodes = 0
        self._n_rows = 0  # windows of create_indices seen so far, kept or not
        self.extend()

    def _scaled(self, rewards: np.ndarray) -> np.ndarray:
        return self.reward_scale * np.asarray(rewards, dtype=np.float64) + self.reward_bias

    def _required_keys(self) -> list[str]:
        keys = {spec.zarr_key for spec in self.meta.obs.values()} | {self.action_key, REWARD}
        keys |= {trunk_key(k) for k in self.spec.trunk_keys} | {stem_key(k) for k in self.spec.stem_keys}
        return sorted(keys | ({self.embedding_key} if self.embedding_key else set()))

    def _check_store(self, first: int) -> None:
        rb = self.replay_buffer
        missing = [k for k in self._required_keys() if k not in rb]
        if missing:
            raise KeyError(f"keys {missing} not in the replay buffer; it has {sorted(rb.keys())}")
        check_stored_shapes(self.meta, rb)
        if TERMINAL in rb:
            ends = rb.episode_ends[first:]
            start = int(rb.episode_ends[first - 1]) if first else 0
            validate_steps({TERMINAL: np.asarray(rb[TERMINAL][start:rb.n_steps])}, ends - start,
                           lambda e: f"replay buffer episode {first + e}")

    def extend(self) -> int:
        """Add the windows of episodes appended to the buffer since the last call; returns how many."""
        rb = self.replay_buffer
        first, n_episodes = self._n_episodes, rb.n_episodes
        if n_episodes == first:
            return 0
        self._check_store(first)
        ends = rb.episode_ends
        starts = np.concatenate([[0], ends[:-1]])
        new = np.zeros(n_episodes, dtype=bool)
        new[first:] = True
        if self._episode_mask is not None:
            new[: len(self._episode_mask)] &= self._episode_mask
        step_lo, step_hi = int(starts[first]), int(ends[-1])
        rewards = self._scaled(rb[REWARD][step_lo:step_hi])
        terminal = np.asarray(rb[TERMINAL][step_lo:step_hi]) if TERMINAL in rb else None
        mc = episode_mc_returns(rewards, ends[first:] - step_lo, terminal, self.gamma,
                                self.reward_neg, self.is_sparse_reward)
        self._mc.append({"mc": mc.astype(np.float32)})

        To, Ta, T = self.n_obs_steps, self.n_action_steps, self.horizon
        rows = create_indices(ends, T, new, pad_before=To - 1, pad_after=Ta - 1)
        table = SequenceSampler._gather_table(rows, T)
        episode = np.searchsorted(ends, rows[:, 0], side="right")
        ep_start, ep_last = starts[episode], ends[episode] - 1
        is_terminal = np.ones(n_episodes, bool) if terminal is None else np.zeros(n_episodes, bool)
        if terminal is not None:
            is_terminal[first:] = terminal[ends[first:] - 1 - step_lo] != 0
        t = table[:, To - 1]
        has_next = t + Ta <= ep_last
        keep = has_next | is_terminal[episode]
        window_index = self._n_rows + np.flatnonzero(keep)
        self._n_rows += len(rows)
        table, t, ep_start, ep_last, has_next = table[keep], t[keep], ep_start[keep], ep_last[keep], has_next[keep]

        offsets = np.arange(Ta)
        k = np.minimum(Ta, ep_last + 1 - t)
        chunk = np.minimum(t[:, None] + offsets, ep_last[:, None]) - step_lo
        weights = np.where(offsets < k[:, None], self.gamma ** offsets, 0.0)
        next_t = np.where(has_next, t + Ta, ep_last)
        next_steps = np.maximum(next_t[:, None] - (To - 1) + np.arange(To), ep_start[:, None])
        self._windows.append({
            "window_index": window_index, "t": t, "next_t": next_t,
            "obs_steps": table[:, :To], "next_steps": next_steps, "action_steps": table,
            "reward": (rewards[chunk] * weights).sum(axis=1).astype(np.float32),
            "discount": (self.gamma ** k).astype(np.float32),
            "done": (~has_next).astype(np.float32),
        })
        self._n_episodes = n_episodes
        return int(keep.sum())

    def __len__(self) -> int:
        return self._windows.n

    @property
    def window_index(self) -> np.ndarray:
        """(S,) row of each transition in `create_indices` over the used episodes (SequenceDataset's index)."""
        return self._windows["window_index"] if len(self) else np.zeros(0, np.int64)

    def sample(self, batch_size: int, generator: np.random.Generator | torch.Generator) -> dict:
        """`get_batch` of `batch_size` uniform draws with replacement from `generator`."""
        if len(self) == 0:
            raise ValueError("TransitionSampler.sample: no transitions (empty buffer or all windows excluded)")
        if isinstance(generator, torch.Generator):
            idxs = torch.randint(len(self), (batch_size,), generator=generator).numpy()
        else:
            idxs = generator.integers(0, len(self), size=batch_size)
        return self.get_batch(idxs)

    def get_batch(self, idxs) -> dict:
        """Transitions `idxs` (B,) as float32 tensors, one fancy index per store key (copies).

        Returns `{"obs": {key: (B, To, ...)}, "next_obs": {key: (B, To, ...)}, "action": (B, T, Da),
        "reward" / "discount" / "done" / "mc_return" / "intervention": (B,)}`, plus "embedding" and
        "next_embedding" (B, D) with embedding_key, "trunk" and "next_trunk" {key: (B, C, h, w)}
        with trunk_keys, "stem" and "next_stem" with stem_keys. rgb obs are (B, To, C, H, W) in [0, 1] (none with skip_rgb).
        "intervention" is step t's flag (the chunk's first action). "next_obs" and
        "next_embedding" describe one state: step t+Ta, or the episode's last step when done
        (masked by done, so any valid value would do; one rule keeps the two consistent).
        """
        idxs = np.asarray(idxs, dtype=np.int64)
        w, rb, To = self._windows, self.replay_buffer, self.n_obs_steps
        both = np.concatenate([w["obs_steps"][idxs], w["next_steps"][idxs]], axis=1)
        raw = {}
        obs, next_obs = {}, {}
        for key, spec in self.meta.obs.items():
            if spec.is_rgb and self.spec.skip_rgb:
                continue
            zkey = spec.zarr_key
            if zkey not in raw:
                raw[zkey] = SequenceSampler._take(rb[zkey], both)
            value = stored_to_policy(spec, raw[zkey], n_lead=2)
            obs[key] = _tensor(value[:, :To])
            next_obs[key] = _tensor(value[:, To:])
        action = SequenceSampler._take(rb[self.action_key], w["action_steps"][idxs]).astype(np.float32, copy=False)
        t = w["t"][idxs]
        batch = {
            "obs": obs, "next_obs": next_obs, "action": _tensor(action.reshape(*action.shape[:2], -1)),
            "reward": _tensor(w["reward"][idxs]), "discount": _tensor(w["discount"][idxs]),
            "done": _tensor(w["done"][idxs]), "mc_return": _tensor(self._mc["mc"][t]),
        }
        if INTERVENTION in rb:
            batch["intervention"] = _tensor(SequenceSampler._take(rb[INTERVENTION], t).astype(np.float32))
        else:
            batch["intervention"] = torch.zeros(len(idxs))
        if self.embedding_key:
            emb = SequenceSampler._take(rb[self.embedding_key], np.stack([t, w["next_t"][idxs]], axis=1))
            emb = emb.astype(np.float32, copy=False)
            batch["embedding"], batch["next_embedding"] = _tensor(emb[:, 0]), _tensor(emb[:, 1])
        steps = np.stack([t, w["next_t"][idxs]], axis=1)
        for name, keys, store_key in (("trunk", self.spec.trunk_keys, trunk_key), ("stem", self.spec.stem_keys, stem_key)):
            if keys:
                feats = {key: SequenceSampler._take(rb[store_key(key)], steps) for key in keys}
                batch[name] = {key: _tensor(f[:, 0]) for key, f in feats.items()}
                batch[f"next_{name}"] = {key: _tensor(f[:, 1]) for key, f in feats.items()}
        return batch


def _tensor(value: np.ndarray) -> torch.Tensor:
    # Owning copies: numpy ReplayBuffers grow by realloc, which would leave views dangling.
    value = np.asarray(value, dtype=np.float32)
    value = np.ascontiguousarray(value) if value.flags.owndata else value.copy(order="C")
    return torch.from_numpy(value)
