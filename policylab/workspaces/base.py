"""What every workspace shares: seeding, device, distributed set-up, config schema checks."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_schema(cfg: DictConfig, key: str, schema: type) -> DictConfig:
    """`cfg[key]` merged onto a dataclass schema: a misspelt or missing key fails, naming it."""
    if key not in cfg:
        raise KeyError(f"config has no '{key}' section (expected fields {[f.name for f in dataclasses.fields(schema)]})")
    merged = OmegaConf.merge(OmegaConf.structured(schema), cfg[key])
    return merged


@dataclasses.dataclass
class DistributedInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistributedInfo:
    """Join the process group that `torchrun` describes in the environment (else single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedInfo()
    info = DistributedInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return info


def resolve_device(device: str, dist_info: DistributedInfo) -> torch.device:
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} but CUDA is not available; use device=cpu")
        if dist_info.enabled:
            return torch.device("cuda", dist_info.local_rank)
    return torch.device(device)


def output_dir_from_hydra(default: str | Path = "outputs/run") -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not inside a Hydra app (tests, notebooks)
        return Path(default)
