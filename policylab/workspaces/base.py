"""What every workspace shares: the `train(cfg)` entry, config schemas, seeding, device, DDP
helpers, the run logger, step cadences, and checkpoints of named modules and optimizers.

A workspace subclasses `BaseWorkspace`, names its config sections in `schemas`, builds its
modules in `__init__`, and says what a checkpoint holds:

    checkpoint_modules()    {"policy": deployable policy, "ema_policy": ..., "critic": ..., ...}
    optimizers              {name: torch.optim.Optimizer}
    state_dict() / load_state_dict(state)   counters, schedulers, generators (plain tensors, numbers)

`save_checkpoint` / `load_checkpoint` then write and read them: the policy stays
`model.safetensors` + `config.yaml`, so `eval.py` and `from_checkpoint` load any workspace's
checkpoints; further modules become `<name>.safetensors`; optimizers, counters and every rank's
RNG state go into `training_state.pt` (loadable with `weights_only=True`).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any, ClassVar

import hydra
import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn

from policylab.common import checkpoint as ckpt
from policylab.common.locking import RunDirLock
from policylab.common.logging import RunLogger
from policylab.common.resume import commit_hydra_record, explain_config_mismatch


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


def pick_device(device: str) -> str:
    """`auto`: CUDA when there is a GPU, else the CPU; any other value as it is."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_device(device: str, dist_info: DistributedInfo) -> torch.device:
    device = pick_device(device)
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


def due(count: int, every: int | None) -> bool:
    """A cadence: True at counts every, 2*every, ...; `every` 0, negative or None means never."""
    return every is not None and every > 0 and count > 0 and count % every == 0


def format_minutes(seconds: float) -> str:
    """`seconds` as `1h02m`, `3m05s` or `42s`."""
    seconds = max(round(seconds), 0)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class RunConsole:
    """What a run says to the person running it: stdout and `<run dir>/train.log`, rank 0 only.

    Under `train.py` Hydra's job logging already prints INFO to the console and writes `train.log`;
    elsewhere (the ray sweep, tests, notebooks) this adds a console and a `train.log` handler of its own.
    """

    def __init__(self, output_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.logger = logging.getLogger("policylab.run")
        self.logger.setLevel(logging.INFO)
        self._handlers: list[logging.Handler] = []
        if not enabled:
            return
        log_path = (Path(output_dir) / "train.log").resolve()
        handlers = [h for lg in (self.logger, logging.getLogger()) for h in lg.handlers]
        stdout_is_log = Path(getattr(sys.stdout, "name", "") or "").resolve() == log_path  # the ray sweep's redirect
        if not stdout_is_log and not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve() == log_path
                                         for h in handlers):
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._add(logging.FileHandler(log_path))
        if not any(type(h) is logging.StreamHandler for h in handlers):
            self._add(logging.StreamHandler(sys.stdout))

    def _add(self, handler: logging.Handler) -> None:
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
        self.logger.addHandler(handler)
        self._handlers.append(handler)

    def __call__(self, message: str) -> None:
        if self.enabled:
            self.logger.info(message)

    def close(self) -> None:
        for handler in self._handlers:
            self.logger.removeHandler(handler)
            handler.close()
        self._handlers = []


@dataclasses.dataclass
class LoggingConfig:
    mode: str = "offline"
    project: str = "policylab"
    name: str | None = None
    log_every: int = 1


class BaseWorkspace:
    """The plumbing every training loop needs; subclasses implement `run()`.

    Every schema needs a `training` section with at least `seed`, `device`, `resume` (true, false or
    "auto"), `dist_timeout_minutes`; `logging` follows `LoggingConfig`. `run()` starts with
    `start_run()`; `train()` calls `end_run()` however the run ends.
    """

    schemas: ClassVar[dict[str, type]] = {}

    def __init__(self, cfg: DictConfig, output_dir: str | Path):
        self.cfg = cfg
        self.c = {key: check_schema(cfg, key, schema) for key, schema in self.schemas.items()}
        train = self.c["training"]
        self.dist = init_distributed(pick_device(train.device), train.dist_timeout_minutes)
        self.device = resolve_device(train.device, self.dist)
        # Under torchrun each rank composed its own config, so a `${now:}` run dir may differ: use rank 0's.
        self.output_dir = Path(broadcast_object(str(output_dir), self.dist))
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.global_step = 0
        self.resumed_from_step: int | None = None
        self._run_lock: RunDirLock | None = None
        seed_everything(train.seed)

    def run(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        """{"policy": the deployable policy, "ema_policy": its EMA copy (optional), name: module, ...}."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Counters, schedulers, generators: plain tensors and numbers."""
        return {"global_step": self.global_step}

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])

    def start_run(self) -> Path | None:
        """Take the run directory (rank 0 holds its writer lock: one run per directory), remove what
        killed checkpoint writes left behind, and return the checkpoint that `training.resume`
        asks for: None for a fresh run; true and none there is an error; "auto" resumes if it can."""
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._run_lock = RunDirLock(self.output_dir).acquire()
            ckpt.clean_orphans(self.checkpoint_dir)
        return ckpt.find_resume_checkpoint(self.checkpoint_dir, self.c["training"].resume)

    def end_run(self) -> None:
        if self._run_lock is not None:
            self._run_lock.release()
            self._run_lock = None

    def make_logger(self) -> RunLogger:
        """`logs.jsonl` + wandb on rank 0. A resumed run appends, after dropping the lines logged
        past its checkpoint (it logs those steps again). Called once the start is accepted (the run
        directory held, the checkpoint loaded): Hydra's record of this start becomes `.hydra/` here."""
        if self.dist.is_main:
            commit_hydra_record(self.output_dir)
        log_cfg = {k: v for k, v in OmegaConf.to_container(self.c["logging"]).items() if k != "log_every"}
        return RunLogger(self.output_dir, resume=self.resumed_from_step is not None, enabled=self.dist.is_main,
                         resume_from_step=self.resumed_from_step,
                         config=OmegaConf.to_container(self.cfg, resolve=True), **log_cfg)

    def save_checkpoint(self, path: Path, rng_state: dict | None = None) -> None:
        """Called on every rank (each contributes its RNG state, or `rng_state`: the one taken
        where training stopped, before an evaluation drew from it); rank 0 writes."""
        rng_per_rank = _gather_objects(ckpt.get_rng_state() if rng_state is None else rng_state, self.dist)
        if not self.dist.is_main:
            return
        state = {**self.state_dict(), "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                 "rng": rng_per_rank[0], "rng_per_rank": rng_per_rank}
        modules = self.checkpoint_modules()
        policy, ema_policy = modules.pop("policy"), modules.pop("ema_policy", None)
        ckpt.save_checkpoint(path, self.cfg, policy, ema_policy, state, modules=modules)

    def load_checkpoint(self, path: Path, load_rng: bool = True) -> dict:
        """Weights, optimizers, counters and (with `load_rng`) RNG states from `path`; returns the
        training state for what a subclass restores itself."""
        with explain_config_mismatch(path, self.cfg):  # a config that differs: its diff, not size mismatches
            state = ckpt.load_training_state(path)
            modules = self.checkpoint_modules()
            ckpt.load_weights(modules.pop("policy"), Path(path) / ckpt.MODEL)
            modules.pop("ema_policy", None)  # restored from the training state by its owner (EMAModel)
            if modules:
                ckpt.load_modules(path, modules)
            for name, optimizer in self.optimizers.items():
                optimizer.load_state_dict(state["optimizers"][name])
            self.load_state_dict(state)
        self.resumed_from_step = self.global_step
        if load_rng:
            # Exact under DDP when resumed with the same number of ranks; otherwise every rank takes rank 0's.
            per_rank = state.get("rng_per_rank", [])
            ckpt.set_rng_state(per_rank[self.dist.rank] if len(per_rank) == self.dist.world_size else state["rng"])
        return state

    def barrier(self) -> None:
        if self.dist.enabled:
            dist.barrier()

    def mean_over_ranks(self, value: float) -> float:
        if not self.dist.enabled:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.item() / self.dist.world_size


def _gather_objects(obj, dist_info: DistributedInfo) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] without DDP)."""
    if not dist_info.enabled:
        return [obj]
    out = [None] * dist_info.world_size
    dist.all_gather_object(out, obj)
    return out


def to_device(batch, device: torch.device):
    """Tensors of a (nested) dict moved to `device`; other values as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def train(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Entry used by train.py and the ray sweep: build the workspace named in the config and run it."""
    workspace_cls = hydra.utils.get_class(cfg.workspace._target_)
    if not (isinstance(workspace_cls, type) and issubclass(workspace_cls, BaseWorkspace)):
        raise TypeError(f"workspace._target_ {cfg.workspace._target_!r} is not a policylab workspace")
    workspace = None
    try:
        workspace = workspace_cls(copy.deepcopy(cfg), output_dir)
        return workspace.run()
    finally:
        if workspace is not None:
            workspace.end_run()
        shutdown_distributed()
