"""What every workspace shares: the `train(cfg)` entry, the step loop, config schemas, seeding,
device, DDP helpers, the run logger and console, and checkpoints of named modules and optimizers.

The step loop (`BaseWorkspace.run`) is written once: take the run directory, build the data,
resume, then repeat one unit of training (`train_step`: one learner step, or one epoch where that
is the unit) with the cadences of logging, evaluation and checkpoints (`latest` + the top k, named
after the unit), the time budget, one console line per logged unit, and the summary line.

A workspace subclasses `BaseWorkspace`, names its config sections in `schemas`, builds its
modules in `__init__`, and supplies:

    build()                 data, loaders, schedulers: what a checkpoint restores into
    start()                 what runs beside the loop once resumed (env runners, actor pools)
    train_step() -> dict    one unit of training; its metrics (None: no unit done yet, e.g. waiting
                            for the first online episodes)
    eval_parts()            {name: (every, at_end, fn() -> metrics)}: evaluations and their cadences
    checkpoint_modules()    {"policy": deployable policy, "ema_policy": ..., "critic": ..., ...}
    optimizers              {name: torch.optim.Optimizer}
    state_dict() / load_state_dict(state)   counters, schedulers, generators (plain tensors, numbers)

`save_checkpoint` / `load_checkpoint` write and read them: the policy stays
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
import time
from contextlib import contextmanager
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
from policylab.common.precision import resolve_precision
from policylab.common.resume import commit_hydra_record, explain_config_mismatch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_schema(cfg: DictConfig, key: str, schema: type) -> DictConfig:
    """`cfg[key]` merged onto a dataclass schema: a misspelt or missing key fails, naming it.

    Schemas hold names and types only: every value is set once, in config/workspace/ (the YAML
    holds the defaults, with what each key means; tests/workspaces/test_config_defaults.py keeps it so).
    """
    if key not in cfg:
        raise KeyError(f"config has no '{key}' section (expected fields {[f.name for f in dataclasses.fields(schema)]})")
    merged = OmegaConf.merge(OmegaConf.structured(schema), cfg[key])
    missing = [f.name for f in dataclasses.fields(schema) if OmegaConf.is_missing(merged, f.name)]
    if missing:
        raise KeyError(f"config section '{key}' sets no value for {missing}")
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
    mode: str
    project: str
    name: str | None
    log_every: int


@dataclasses.dataclass
class TrainingConfig:
    """What every workspace's `training` section holds; each workspace extends it."""

    seed: int
    device: str
    resume: Any
    max_train_minutes: float | None
    dist_timeout_minutes: float


@dataclasses.dataclass
class StepTrainingConfig(TrainingConfig):
    """`training` of a workspace whose unit is one step on a batch (the RL stages, the classifier)."""

    num_steps: int
    batch_size: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    torch_threads: int | None


@dataclasses.dataclass
class CheckpointConfig:
    save_latest: bool
    monitor_key: str
    mode: str
    topk: int


CONSOLE_SECONDS = 30.0


class BaseWorkspace:
    """The step loop and the plumbing every workspace needs; a subclass supplies the steps.

    Every schema needs a `training` section extending `TrainingConfig`, a `logging` section
    (`LoggingConfig`) and a `checkpoint` section (`CheckpointConfig`).

    The time budget (`training.max_train_minutes`) belongs to the run, not to one process: it
    bounds the learner's wall time summed over every start of the run (the time spent is saved in
    the training state, so a run killed and resumed with the same command spends only what is
    left), and it includes the closing evaluation: training stops early enough to leave the last
    measured time of every evaluation part and of the checkpoint that the end will run. Evaluations
    and checkpoints taken during training pause the learner's clock: their time is reported apart
    (`eval_seconds`) and never spent from the budget.
    """

    schemas: ClassVar[dict[str, type]] = {}
    unit: ClassVar[str] = "step"  # what `train_step` does once and cadences count: "step" or "epoch"
    _paused_at: float | None = None  # while an evaluation part runs: when it began
    _cpu_paused_at: float | None = None  # ... and the process's CPU time then
    _said_at = 0.0  # when the last console line was written

    def __init__(self, cfg: DictConfig, output_dir: str | Path):
        self.cfg = cfg
        self.c = {key: check_schema(cfg, key, schema) for key, schema in self.schemas.items()}
        train = self.c["training"]
        self.dist = init_distributed(pick_device(train.device), train.dist_timeout_minutes)
        self.device = resolve_device(train.device, self.dist)
        if train.get("torch_threads"):
            torch.set_num_threads(train.torch_threads)
        # Under torchrun each rank composed its own config, so a `${now:}` run dir may differ: use rank 0's.
        self.output_dir = Path(broadcast_object(str(output_dir), self.dist))
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.global_step = 0
        self._logged_step = -1  # the global_step of the last logs.jsonl record of the training metrics
        self.resumed_from_step: int | None = None
        self._run_lock: RunDirLock | None = None
        self.say = RunConsole(self.output_dir, enabled=self.dist.is_main)
        self._t_start, self._time_up = time.monotonic(), False
        self._cpu_start = time.process_time()  # the learner's CPU clock, paused with the wall clock
        self._part_seconds: dict[str, float] = {}  # last measured time of each evaluation part
        self.eval_seconds = 0.0  # evaluation and checkpoint time of the run, outside the budget
        self._stop_rng: dict | None = None  # RNG states where training stopped (before an evaluation drew)
        # The one place mixed precision is set up: autocast of the training forward, and fp16's
        # GradScaler around backward and the optimizer step (common/precision.py).
        self.precision = resolve_precision(train.get("mixed_precision", "no"), self.device)
        seed_everything(train.seed)

    @property
    def count(self) -> int:
        """Units done: optimizer steps, or epochs where the unit is the epoch."""
        return self.global_step

    def build(self) -> None:
        """Data, loaders, schedulers: everything a checkpoint restores into (before resuming)."""

    def start(self) -> None:
        """What runs beside the loop (env runners, actors), once resumed."""

    def train_step(self) -> dict | None:
        raise NotImplementedError

    def eval_parts(self) -> dict[str, tuple[int | None, bool, Any]]:
        """{name: (every, at_end, fn)}: `fn()` -> metrics, run on rank 0 after units every, 2*every,
        ... and, with `at_end`, after the last unit."""
        return {}

    def finished(self) -> bool:
        """True when the run's own limits (steps, epochs, env steps) are reached; the budget is apart."""
        return self.global_step >= self.c["training"].num_steps

    def close(self) -> None:
        """Stop what `start` started."""

    def describe(self) -> str:
        """The run's first console line after its directory: what trains on what."""
        return f"{type(self).__name__} on {self.device}"

    def line_items(self, metrics: dict) -> list[str]:
        """The console line's middle: `loss 0.0812`, `score 0.412`, ... ."""
        keys = {"test/success_rate": "success", "test/mean_score": "score"}
        return [f"{name} {metrics[key]:.3f}" for key, name in keys.items() if key in metrics]

    def total_units(self) -> int | None:
        """The unit count a run ends at when no other limit ends it first (for the console line)."""
        return self.c["training"].get("num_steps")

    def checkpoint_every(self) -> tuple[int | None, bool]:
        """(every, at_end) of checkpoints."""
        return self.c["training"].checkpoint_every, True

    def run(self) -> dict[str, Any]:
        resume_from = self.start_run()
        self.build()
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        self.topk = ckpt.TopKCheckpointManager(
            self.checkpoint_dir, self.c["checkpoint"].monitor_key, self.c["checkpoint"].mode,
            self.c["checkpoint"].topk, format_str=self.topk_name)
        self.logger = self.make_logger()
        metrics: dict[str, Any] = {}
        try:
            self.start()
            self.say(f"run dir: {self.output_dir.resolve()}")
            spent = self.learner_seconds()
            self.say(self.describe() + (f"; resumed at {self.unit} {self.count}, step {self.global_step}, "
                                        f"{format_minutes(spent)} of the time budget spent" if resume_from else ""))
            self._first = (self.count, spent, self.global_step)
            self._time_up = resume_from is not None and self._over_time_budget()  # nothing left to spend
            while not (self.finished() or self._time_up):
                step_metrics = self.train_step()
                self._time_up = self._time_up or self._over_time_budget()
                if step_metrics is not None:
                    metrics = self._after_unit(step_metrics)
                elif self._time_up or self.finished():  # ended while waiting (e.g. for episodes): close out
                    metrics = self._after_unit(metrics)
            self.say(self._final_line(metrics))
        finally:
            self.close()
            self.logger.close()
            self.say.close()
        self.barrier()
        return metrics

    @property
    def topk_name(self) -> str:
        return f"{self.unit}={{{self.unit}:0{4 if self.unit == 'epoch' else 7}d}}-{{monitor_key}}={{value:.3f}}"

    def _due(self, every: int | None, at_end: bool = True) -> bool:
        """True after units every, 2*every, ... and (with `at_end`) after the last one."""
        last = self._time_up or self.finished()
        return due(self.count, every) or (at_end and last)

    def _after_unit(self, metrics: dict) -> dict:
        """The cadences after one unit: evaluations (rank 0), checkpoint, log, console line."""
        ran, fresh = False, {}
        if self.dist.is_main:
            for name, (every, at_end, fn) in self.eval_parts().items():
                if self._due(every, at_end):
                    with self._timed(name):
                        fresh.update(fn())
                    ran = True
        metrics = {**metrics, **fresh}
        every, at_end = self.checkpoint_every()
        if self._due(every, at_end):
            with self._timed("checkpoint"):
                self.checkpoint(metrics)
            ran = True
        self.barrier()  # other ranks wait here while rank 0 evaluates and writes
        last = self._time_up or self.finished()
        logged = due(self.global_step, self.log_every())
        clocks = {"learner_seconds": self.learner_seconds(), "learner_cpu_seconds": self.learner_cpu_seconds(),
                  "eval_seconds": self.eval_seconds}
        record = {**metrics, **clocks}
        if self.global_step == self._logged_step:  # closing out after a wait: this update is logged already
            record = {**fresh, **clocks}
        if self.unit == "epoch" or ran or last or logged:
            self.logger.log(record, step=self.global_step)
            self._logged_step = self.global_step
        # A line per epoch, evaluation and checkpoint; between them at most one per CONSOLE_SECONDS.
        if self.unit == "epoch" or ran or last or (logged and time.monotonic() - self._said_at >= CONSOLE_SECONDS):
            self.say(self._unit_line(metrics))
            self._said_at = time.monotonic()
        return metrics

    def log_every(self) -> int:
        """Units between `logs.jsonl` lines of the training metrics (a step workspace's `training.log_every`)."""
        return self.c["training"].get("log_every") or self.c["logging"].log_every

    def checkpoint(self, metrics: dict) -> None:
        """`latest` and, when it makes the top k, a named copy. Called on every rank (each
        contributes its RNG state); rank 0 writes."""
        if self.c["checkpoint"].save_latest:
            self.save_checkpoint(self.checkpoint_dir / "latest", self._stop_rng)
        path = self.topk.get_ckpt_path({**metrics, self.unit: self.count}) if self.dist.is_main else None
        path = broadcast_object(path, self.dist)  # saving is collective: every rank gives its RNG state
        if path is not None:
            self.save_checkpoint(path, self._stop_rng)

    def _unit_line(self, metrics: dict) -> str:
        """`epoch 3/300 step 195 | loss 0.0812 | val 0.0790 | score 0.412 | 2.1s/epoch | left 4m10s`."""
        train, total = self.c["training"], self.total_units()
        first_count, first_spent, _ = self._first
        per_unit = (self.learner_seconds() - first_spent) / max(self.count - first_count, 1)
        left = per_unit * (total - self.count) if total is not None else float("inf")
        if train.max_train_minutes is not None:
            left = min(left, 60 * train.max_train_minutes - self.learner_seconds())
        left = min(left, self.seconds_left_by_steps(per_unit))
        if self._time_up or self.finished():
            left = 0.0
        head = f"{self.unit} {self.count}" + (f"/{total}" if total is not None else "")
        if self.unit != "step":
            head += f" step {self.global_step}"
        rate = f"{per_unit:.1f}s/{self.unit}" if self.unit == "epoch" else f"{1 / max(per_unit, 1e-9):.1f} {self.unit}s/s"
        tail = [rate] + ([f"left {format_minutes(left)}"] if left != float("inf") else [])
        return " | ".join([head, *self.line_items(metrics), *tail])

    def seconds_left_by_steps(self, per_unit: float) -> float:
        """Another limit's estimate of the time left (e.g. `max_train_steps`); inf: none."""
        return float("inf")

    def stop_reason(self) -> str:
        return "time budget" if self._time_up else "its limit"

    def _final_line(self, metrics: dict) -> str:
        topk = self.topk
        what = f"{self.count} {self.unit}s" + (f", {self.global_step} steps" if self.unit != "step" else "")
        line = (f"done after {what}, {format_minutes(self.learner_seconds())} training + "
                f"{format_minutes(self.eval_seconds)} evaluation ({self.stop_reason()}).")
        if topk.entries:
            pick = max if topk.mode == "max" else min
            name = pick(topk.entries, key=topk.entries.get)
            line += f" best checkpoint: {self.checkpoint_dir / name} ({topk.monitor_key} {topk.entries[name]:.3f})"
        elif (self.checkpoint_dir / "latest").exists():
            line += f" checkpoint: {self.checkpoint_dir / 'latest'}"
        else:
            line += " no checkpoint written (training.checkpoint_every is 0 or null)"
        if topk.monitor_key in metrics:
            line += f"; last {topk.monitor_key} {metrics[topk.monitor_key]:.3f}"
        return line

    def learner_seconds(self) -> float:
        """Wall seconds the learner has spent over every start of the run (evaluations excluded)."""
        return (self._paused_at or time.monotonic()) - self._t_start

    def learner_cpu_seconds(self) -> float:
        """CPU seconds (user + system, every thread of this process) the learner has spent over every
        start of the run, evaluations excluded: a training cost that the machine's load does not inflate."""
        return (self._cpu_paused_at or time.process_time()) - self._cpu_start

    @contextmanager
    def _timed(self, part: str):
        """Runs an evaluation part with the learner's clock paused; records its time for the budget's
        reserve and the run's `eval_seconds`."""
        start = self._paused_at = time.monotonic()
        cpu_start = self._cpu_paused_at = time.process_time()
        try:
            yield
        finally:
            seconds = time.monotonic() - start
            self._part_seconds[part] = seconds
            self.eval_seconds += seconds
            self._t_start += seconds
            self._cpu_start += time.process_time() - cpu_start
            self._paused_at = self._cpu_paused_at = None

    def _over_time_budget(self) -> bool:
        """True once the learner's time plus the closing evaluation's passes the budget.

        The closing evaluation's time is the sum of the last measured time of each part the end will
        run (every evaluation part with `at_end`, the checkpoint); a part not yet measured counts 0,
        so a run whose first evaluation is its last may go over by that one evaluation. Under DDP all
        ranks agree (any rank over budget stops all): a rank that trained a step more than the
        others would wait forever in its all-reduce.
        """
        budget = self.c["training"].max_train_minutes
        if budget is None:
            return False
        over = self.learner_seconds() + self._closing_reserve() > 60 * budget
        if self.dist.enabled:
            flag = torch.tensor([float(over)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            over = bool(flag.item())
        return over

    def _closing_reserve(self) -> float:
        """Seconds the closing evaluation will take: the last measured time of each part the end runs."""
        at_end = [name for name, (_, end, _) in self.eval_parts().items() if end]
        at_end += ["checkpoint"] if self.checkpoint_every()[1] else []
        return sum(self._part_seconds.get(name, 0.0) for name in at_end)

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        """{"policy": the deployable policy, "ema_policy": its EMA copy (optional), name: module, ...}."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Counters, schedulers, generators: plain tensors and numbers."""
        state = {"global_step": self.global_step, "learner_seconds": self.learner_seconds(),
                 "learner_cpu_seconds": self.learner_cpu_seconds(),
                 "eval_seconds": self.eval_seconds, "part_seconds": dict(self._part_seconds)}
        if getattr(self, "precision", None) is not None and self.precision.scaler is not None:
            state["grad_scaler"] = self.precision.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])
        # Checkpoints from before the run-wide budget have no clock: their budget starts anew.
        self._t_start = time.monotonic() - float(state.get("learner_seconds", 0.0))
        self._cpu_start = time.process_time() - float(state.get("learner_cpu_seconds", 0.0))
        self.eval_seconds = float(state.get("eval_seconds", 0.0))
        self._part_seconds = {str(k): float(v) for k, v in state.get("part_seconds", {}).items()}
        if getattr(self, "precision", None) is not None and self.precision.scaler is not None and "grad_scaler" in state:
            self.precision.scaler.load_state_dict(state["grad_scaler"])

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
