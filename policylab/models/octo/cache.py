"""Cache of a frozen encoder's embeddings keyed by dataset index.

A frozen Octo encoder maps the same sample to the same embedding (no augmentation, eval mode), so
each dataset index is encoded once and later epochs read the cached row. ConRFT does the same
for its demos (`embedding` / `next_embedding` stored with the transitions).
"""

from __future__ import annotations

from pathlib import Path

import torch

# Rows are allocated in chunks so growing the cache one batch at a time stays amortised O(1).
GROWTH_FACTOR = 2


class EmbeddingCache:
    """``index (B,) -> embedding (B, D)`` for indices seen before.

    Lives on CPU; callers move results to their device. Not a module: it is derived data and is
    not saved with the policy weights (use `save` / `load` to persist it next to a dataset).
    """

    def __init__(self, dim: int):
        self.dim = dim
        self.values = torch.zeros(0, dim)
        self.filled = torch.zeros(0, dtype=torch.bool)

    def __len__(self) -> int:
        return int(self.filled.sum())

    def _grow(self, max_index: int) -> None:
        if max_index < len(self.filled):
            return
        size = max(max_index + 1, GROWTH_FACTOR * len(self.filled))
        values, filled = torch.zeros(size, self.dim), torch.zeros(size, dtype=torch.bool)
        values[: len(self.values)] = self.values
        filled[: len(self.filled)] = self.filled
        self.values, self.filled = values, filled

    def lookup(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """index ``(B,)`` int -> ``(embeddings (B, D), hit (B,) bool)``; rows of misses are zeros."""
        index = index.detach().long().cpu()
        if index.numel() and int(index.min()) < 0:
            raise ValueError("dataset indices must be >= 0")
        hit = torch.zeros(len(index), dtype=torch.bool)
        inside = index < len(self.filled)
        hit[inside] = self.filled[index[inside]]
        out = torch.zeros(len(index), self.dim)
        out[hit] = self.values[index[hit]]
        return out, hit

    def store(self, index: torch.Tensor, embeddings: torch.Tensor) -> None:
        """index ``(B,)``, embeddings ``(B, D)``."""
        index = index.detach().long().cpu()
        if index.numel() == 0:
            return
        self._grow(int(index.max()))
        self.values[index] = embeddings.detach().float().cpu()
        self.filled[index] = True

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        save_file({"values": self.values.contiguous(), "filled": self.filled}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingCache:
        from safetensors.torch import load_file

        data = load_file(str(path))
        cache = cls(data["values"].shape[1])
        cache.values, cache.filled = data["values"], data["filled"]
        return cache
