"""The dataset contract every task honours, and the batched DataLoader path.

`__getitem__(i)` returns `{"obs": {key: (To, ...)}, "action": (T, Da)}` as float32 tensors, images
`(To, C, H, W)` in [0, 1]. Datasets that can gather a whole batch at once also implement
`get_batch(idxs)` returning the batch dict `{"obs": {key: (B, To, ...)}, "action": (B, T, Da)}`;
`make_dataloader` then hands each DataLoader step one list of indices, so a step costs one gather
per key instead of B Python calls and a collate. (A plain `DataLoader(dataset, batch_size=...)`
still works, item by item.)
"""

from __future__ import annotations

import abc

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from policylab.data.normalizer import LinearNormalizer


class BaseDataset(Dataset, abc.ABC):
    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, idx: int) -> dict: ...

    @abc.abstractmethod
    def get_normalizer(self) -> LinearNormalizer:
        """A normalizer fitted on the training episodes only."""

    @abc.abstractmethod
    def get_validation_dataset(self) -> BaseDataset:
        """The same dataset over the held-out episodes."""

    def get_all_actions(self) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not expose its actions")


def _batch_as_is(batch):
    return batch


class _Batched(Dataset):
    """Exposes `dataset.get_batch` as `__getitems__`, which DataLoader calls with a step's indices."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int):
        return self.dataset[idx]

    def __getitems__(self, idxs):
        return self.dataset.get_batch(idxs)


class ResumableBatchSampler(BatchSampler):
    """A BatchSampler whose next pass can start `skip` batches in: it draws the skipped batches'
    indices (so the order is the uninterrupted pass's) but nothing loads them. Resuming a run that
    stopped mid-epoch sets `skip` once; the pass after that starts from the beginning again."""

    skip = 0

    def __iter__(self):
        batches = super().__iter__()
        skip, self.skip = self.skip, 0
        for _ in range(skip):
            next(batches, None)
        yield from batches


def make_dataloader(dataset: Dataset, batch_size: int, shuffle: bool = True, num_workers: int = 0,
                    drop_last: bool = False, generator: torch.Generator | None = None,
                    pin_memory: bool = False, persistent_workers: bool = False,
                    index_sampler: Sampler | None = None) -> DataLoader:
    """A DataLoader; batched (one `get_batch` per step) when the dataset supports it.

    `index_sampler` replaces the default random/sequential order (e.g. a DistributedSampler).
    `generator` draws the order and each pass's worker base seed (None: torch's global generator),
    so restoring it replays a pass exactly.
    """
    batched = hasattr(dataset, "get_batch")
    if index_sampler is None:
        index_sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    return DataLoader(
        _Batched(dataset) if batched else dataset,
        batch_sampler=ResumableBatchSampler(index_sampler, batch_size, drop_last=drop_last),
        collate_fn=_batch_as_is if batched else None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        generator=generator,  # also the workers' base seed, drawn when an epoch's iterator starts
    )
