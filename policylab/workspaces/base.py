"""What every workspace shares: seeding, device, distributed set-up, config schema checks."""

from __future__ import annotations

import dataclasses
import datetime
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


def init_distributed(device: str, timeout_minutes: float = 60.0) -> DistributedInfo:
    """Join the process group that `torchrun` describes in the environment (else single process).

    `timeout_minutes` bounds every collective, including the barrier where ranks > 0 wait while
    rank 0 runs rollouts: it must exceed the longest evaluation (NCCL's default is 10 minutes).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedInfo()
    info = DistributedInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return info


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj, dist_info: DistributedInfo):
    """Rank 0's `obj` on every rank (picklable objects; `obj` itself without DDP)."""
    if not dist_info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def hydra_overrides_for_worker(argv: list[str]) -> list[str]:
    """Hydra overrides that keep torchrun ranks > 0 from writing a run directory of their own.

    Rank 0 alone writes `.hydra/` and `train.log`; the workspace gives every rank rank 0's run dir.
    Without an explicit `hydra.run.dir`, a worker's `${now:}` dir would be a second, empty one.
    """
    if int(os.environ.get("RANK", "0")) == 0:
        return []
    overrides = ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    if not any(arg.startswith("hydra.run.dir=") for arg in argv):
        overrides.append("hydra.run.dir=.")
    return overrides


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
