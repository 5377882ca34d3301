"""The supervised workspace: behaviour cloning for any policy with `compute_loss` (diffusion,
consistency, ...) on any task with a dataset and an env runner.

One step-based loop. Per optimizer step: `grad_accum` micro-batches, clip, AdamW, LR schedule,
EMA. Per epoch, at the cadences of `training.*_every`: rollouts through the task's EnvRunner,
validation loss (EMA policy, eval mode), action MSE on a training batch, checkpoints (`latest`
plus the top k by `checkpoint.monitor_key`). Checkpoints are taken at epoch ends, with every RNG
state, so `training.resume=true` continues the exact same run.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import hydra
import torch
import torch.distributed as dist
from diffusers.optimization import get_scheduler
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from policylab.common.checkpoint import get_rng_state
from policylab.data.datasets.base import make_dataloader
from policylab.models.ema import EMAModel
from policylab.workspaces import base
from policylab.workspaces.base import (
    BaseWorkspace,
    CheckpointConfig,
    LoggingConfig,
    seed_everything,
    to_device,
)


@dataclasses.dataclass
class TrainingConfig(base.TrainingConfig):
    num_epochs: int
    max_train_steps: int | None
    gradient_accumulate_every: int
    max_grad_norm: float | None
    use_ema: bool
    rollout_every: int | None
    val_every: int | None
    sample_every: int | None
    checkpoint_every: int | None
    max_val_steps: int | None
    mixed_precision: str
    compile: bool
    channels_last: bool


@dataclasses.dataclass
class DataloaderConfig:
    batch_size: int
    num_workers: int
    shuffle: bool
    pin_memory: bool
    persistent_workers: bool


@dataclasses.dataclass
class OptimizerConfig:
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    encoder_weight_decay: float | None
    fused: bool | None


def make_adamw(policy, opt: OptimizerConfig) -> torch.optim.AdamW:
    """AdamW over the policy's parameter groups (its own weight-decay split), as `optimizer:` says."""
    groups = policy.get_optim_groups(opt.weight_decay, encoder_weight_decay=opt.encoder_weight_decay)
    fused = {} if opt.fused is None else {"fused": opt.fused}
    return torch.optim.AdamW(groups, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, **fused)


@dataclasses.dataclass
class LRSchedulerConfig:
    name: str
    warmup_steps: int
    fit_to_budget: bool


@dataclasses.dataclass
class EMAConfig:
    update_after_step: int
    inv_gamma: float
    power: float
    min_value: float
    max_value: float


SCHEMAS = {"training": TrainingConfig, "dataloader": DataloaderConfig, "val_dataloader": DataloaderConfig,
           "optimizer": OptimizerConfig, "lr_scheduler": LRSchedulerConfig, "ema": EMAConfig,
           "logging": LoggingConfig, "checkpoint": CheckpointConfig}


class SupervisedWorkspace(BaseWorkspace):
    schemas = SCHEMAS
    unit = "epoch"

    def __init__(self, cfg: DictConfig, output_dir: str | Path):
        super().__init__(cfg, output_dir)
        train = self.c["training"]
        self.policy = hydra.utils.instantiate(cfg.policy).to(self.device)
        self.ema = EMAModel(self.policy, **OmegaConf.to_container(self.c["ema"])) if train.use_ema else None
        if self.dist.enabled:  # same initial weights everywhere; then each rank its own noise and crops
            seed_everything(train.seed + self.dist.rank)
        self.optimizer = make_adamw(self.policy, self.c["optimizer"])
        self._speed_ups(train)
        self.optimizers = {"policy": self.optimizer}
        self.data_generator = torch.Generator().manual_seed(train.seed)
        self.lr_scheduler = None
        self.epoch = 0
        # A stop mid-epoch (time budget, max_train_steps) counts that epoch; a resume finishes it, in
        # the same order, from the batch where it stopped.
        self.batches_into_epoch = 0
        self._epoch_start_data_state = self.data_generator.get_state()
        self._epoch_losses: list[float] = []  # the stopped epoch's losses so far
        self.env_runner = None

    def _speed_ups(self, train: TrainingConfig) -> None:
        """Channels-last and torch.compile of the training policy (the EMA copy, which evaluates,
        stays eager fp32); mixed precision is the base's `precision`."""
        parts = [m for m in (getattr(self.policy, "model", None), getattr(self.policy, "obs_encoder", None))
                 if isinstance(m, torch.nn.Module)]
        if train.channels_last:
            for part in parts:
                for module in part.modules():
                    if isinstance(module, torch.nn.Conv2d):
                        module.to(memory_format=torch.channels_last)
        if train.compile:
            for part in parts:
                part.compile()

    @property
    def eval_policy(self):
        return self.ema.averaged_model if self.ema is not None else self.policy

    @property
    def count(self) -> int:
        return self.epoch

    def build(self) -> None:
        """Dataset, normalizer (fitted on the training episodes), loaders, LR schedule."""
        cfg, train = self.cfg, self.c["training"]
        self.dataset = dataset = hydra.utils.instantiate(cfg.task.dataset)
        normalizer = dataset.get_normalizer()
        self.policy.set_normalizer(normalizer)
        if self.ema is not None:
            self.ema.averaged_model.set_normalizer(normalizer)
        self.policy.on_train_start()
        if self.ema is not None:  # the EMA copy validates: it needs what the policy prepared
            self.ema.averaged_model.on_train_start(source=self.policy)
        self.train_loader = self._loader(dataset, self.c["dataloader"], shard=True)
        val_dataset = dataset.get_validation_dataset()
        # Validation runs on rank 0 alone, over the whole validation set.
        self.val_loader = self._loader(val_dataset, self.c["val_dataloader"], shard=False) if len(val_dataset) else None
        self.steps_per_epoch = steps_per_epoch = math.ceil(len(self.train_loader) / train.gradient_accumulate_every)
        total_steps = steps_per_epoch * train.num_epochs
        if train.max_train_steps is not None:
            total_steps = min(total_steps, train.max_train_steps)
        for policy in (self.policy, self.ema.averaged_model if self.ema is not None else None):
            if policy is not None:
                policy.set_total_steps(total_steps)
        self.planned_steps = self.schedule_steps = steps_per_epoch * train.num_epochs  # the LR schedule's length
        # (`schedule_steps` shrinks when it is fitted to the time budget)
        self.lr_scheduler = self._make_scheduler(self.schedule_steps)

    def _make_scheduler(self, total_steps: int):
        sched = self.c["lr_scheduler"]
        return get_scheduler(sched.name, optimizer=self.optimizer, num_warmup_steps=sched.warmup_steps,
                             num_training_steps=total_steps)

    def _fit_schedule_to_budget(self) -> None:
        """With `lr_scheduler.fit_to_budget`, fit the LR schedule's length to the steps the time budget buys.

        A schedule cut by the budget stops with its learning rate still high; fitted, it anneals by
        the time the budget ends. Every 50 steps of this process the steps still affordable are
        estimated from its own learner time per step (the budget left, less the closing evaluation's
        reserve) and the schedule is refitted when that differs by more than 2 % (never past the
        `num_epochs` it was planned with); the run stops when it ends. The length is kept in the
        training state, so a resume continues the same curve.
        """
        sched, budget = self.c["lr_scheduler"], self.c["training"].max_train_minutes
        _, first_spent, first_step = self._first
        done_here = self.global_step - first_step
        if not sched.fit_to_budget or budget is None or done_here < 50 or done_here % 50:
            return
        per_step = (self.learner_seconds() - first_spent) / done_here
        left = 60 * budget - self.learner_seconds() - self._closing_reserve()
        fitted = min(self.global_step + max(int(left / per_step), 0), self.planned_steps)
        if self.dist.enabled:  # one schedule, one stopping step for all ranks
            flag = torch.tensor([fitted], device=self.device, dtype=torch.float64)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            fitted = int(flag.item())
        if abs(fitted - self.schedule_steps) > 0.02 * self.schedule_steps:  # not for jitter
            if self.schedule_steps == self.planned_steps:
                self.say(f"time budget: the LR schedule ends at step {fitted:,} (of {self.planned_steps:,} planned; "
                         f"{1 / per_step:.1f} steps/s), refitted as the speed changes")
            self._set_schedule(fitted)

    def _set_schedule(self, total_steps: int) -> None:
        """The same kind of schedule, `total_steps` long, continued from the current step (in place:
        the epoch being trained holds the scheduler)."""
        self.schedule_steps = total_steps
        scheduler = self.lr_scheduler
        scheduler.lr_lambdas = self._make_scheduler(total_steps).lr_lambdas  # (building it reset the lr to step 0's)
        lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        scheduler._last_lr = lrs

    def start(self) -> None:
        """The env runner (rank 0) and, under torchrun, the DDP wrapper around the resumed policy."""
        env_runner_cfg = self.cfg.task.get("env_runner")
        # `env_runner: null` (offline tasks) stays runner-less when debug/tiny.yaml merges its sizes into it
        if self.dist.is_main and (env_runner_cfg or {}).get("_target_") is not None:
            device = {"device": str(self.device)} if "device" in env_runner_cfg else {}  # `auto` resolved
            self.env_runner = hydra.utils.instantiate(env_runner_cfg, output_dir=str(self.output_dir), **device)
        self.model = self._wrap_ddp()

    def describe(self) -> str:
        n_params = sum(p.numel() for p in self.policy.parameters()) / 1e6
        return (f"{type(self.policy).__name__} ({n_params:.1f}M parameters) on {self.cfg.task.get('name', 'task')}: "
                f"{len(self.dataset)} training windows, {self.steps_per_epoch} steps/epoch, device {self.device}"
                + (f", {self.dist.world_size} ranks" if self.dist.enabled else ""))

    def finished(self) -> bool:
        """All epochs trained (a stop cut short is finished first), or `max_train_steps` reached."""
        max_steps = self.c["training"].max_train_steps
        return (not (self.epoch < self.c["training"].num_epochs or self.batches_into_epoch)
                or (max_steps is not None and self.global_step >= max_steps)
                or self.global_step >= self.schedule_steps)

    def total_units(self) -> int:
        return self.c["training"].num_epochs

    def train_step(self) -> dict:
        """One epoch (or the rest of the one a stop cut short): {"epoch", "train_loss"}."""
        finishing = self.batches_into_epoch > 0  # the epoch a stop cut short, already counted
        train_loss = self._train_epoch(self.model, self.train_loader, self.lr_scheduler, self.logger)
        if not finishing:
            self.epoch += 1  # epochs done; cadences count them
        return {"epoch": self.epoch, "train_loss": self.mean_over_ranks(train_loss)}

    def eval_parts(self) -> dict:
        """Rollouts, validation loss and action MSE of the EMA policy, each at its cadence (in
        epochs) and after the last epoch; 0 or null never."""
        t = self.c["training"]
        parts = {"rollout": (t.rollout_every, self._rollout), "val": (t.val_every, self._val_loss),
                 "sample": (t.sample_every, self._action_mse)}
        return {name: (every, bool(every) and every > 0, fn) for name, (every, fn) in parts.items()}

    def checkpoint_every(self) -> tuple[int | None, bool]:
        every = self.c["training"].checkpoint_every
        return every, bool(every) and every > 0

    def line_items(self, metrics: dict) -> list[str]:
        names = {"train_loss": "loss", "val_loss": "val", "train_action_mse": "action mse"}
        items = [f"{name} {metrics[key]:.4f}" for key, name in names.items() if key in metrics]
        return items + super().line_items({k: v for k, v in metrics.items() if k == "test/mean_score"})

    def seconds_left_by_steps(self, per_unit: float) -> float:
        max_steps = self.c["training"].max_train_steps
        if max_steps is None:
            return float("inf")
        _, first_spent, first_step = self._first
        per_step = (self.learner_seconds() - first_spent) / max(self.global_step - first_step, 1)
        return per_step * (max_steps - self.global_step)

    def stop_reason(self) -> str:
        max_steps = self.c["training"].max_train_steps
        if self._time_up or self.global_step >= self.schedule_steps < self.planned_steps:  # a fitted schedule ended
            return "time budget"
        return "max_train_steps" if max_steps is not None and self.global_step >= max_steps else "num_epochs"

    @contextmanager
    def _evaluating(self):
        policy = self.eval_policy
        policy.eval()
        try:
            with torch.no_grad():
                yield policy
        finally:
            self.policy.train()

    def _rollout(self) -> dict:
        if self.env_runner is None:
            return {}
        with self._evaluating() as policy:
            return self.env_runner.run(policy)

    def _val_loss(self) -> dict:
        if self.val_loader is None:
            return {}
        max_steps = self.c["training"].max_val_steps
        with self._evaluating() as policy:
            losses = [policy.compute_loss(to_device(b, self.device))[0].item()
                      for i, b in enumerate(self.val_loader) if max_steps is None or i < max_steps]
        return {"val_loss": sum(losses) / max(len(losses), 1)}

    def _action_mse(self) -> dict:
        with self._evaluating() as policy:
            batch = to_device(self.dataset.get_batch(list(range(min(len(self.dataset), 16)))), self.device)
            pred = policy.predict_action(batch["obs"])["action_pred"]
            return {"train_action_mse": torch.nn.functional.mse_loss(pred, batch["action"]).item()}

    def _wrap_ddp(self):
        if not self.dist.enabled:
            return self.policy
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.policy, device_ids=device_ids)

    def _train_epoch(self, model, loader, lr_scheduler, logger) -> float:
        train = self.c["training"]
        accum = train.gradient_accumulate_every
        skip = self.batches_into_epoch
        epoch = self.epoch - 1 if skip else self.epoch  # 0-based index of the epoch being trained
        if skip:  # finish the epoch a stop cut short: its order again, from the first batch not trained
            self.data_generator.set_state(self._epoch_start_data_state)
            loader.batch_sampler.skip = skip
        else:
            self._epoch_start_data_state = self.data_generator.get_state()
        if hasattr(loader, "dist_sampler"):
            loader.dist_sampler.set_epoch(epoch)
        self.policy.train()
        losses, n_batches = (self._epoch_losses if skip else []), len(loader)
        self.batches_into_epoch, self._stop_rng, self._epoch_losses = 0, None, []
        # The bar only on a terminal: in a log file the per-epoch line says it once.
        bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, mininterval=1.0, initial=skip, total=n_batches,
                   disable=not (self.dist.is_main and sys.stderr.isatty()))
        for i, batch in enumerate(bar, start=skip):
            # The last group of an epoch may hold fewer than `accum` micro-batches: weight by its size.
            group_size = min(accum, n_batches - (i // accum) * accum)
            step_now = (i + 1) % accum == 0 or i + 1 == n_batches
            # DDP all-reduces gradients in backward; accumulate locally and sync on the last micro-batch.
            with model.no_sync() if self.dist.enabled and not step_now else nullcontext():
                with self.precision.autocast():
                    loss, _ = model(to_device(batch, self.device))
                self.precision.backward(loss / group_size)
            losses.append(loss.item())
            if step_now:
                self._optimizer_step(lr_scheduler)
                self._fit_schedule_to_budget()
                self._time_up = self._time_up or self._over_time_budget()
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if self.global_step % self.c["logging"].log_every == 0:
                    logger.log({"train_loss": losses[-1], "lr": lr_scheduler.get_last_lr()[0], "epoch": epoch},
                               step=self.global_step)
                if self._done():
                    if i + 1 < n_batches:  # stopped mid-epoch: where a resume picks up
                        self.batches_into_epoch, self._stop_rng = i + 1, get_rng_state()
                        self._epoch_losses = losses
                    break
        return sum(losses) / max(len(losses), 1)

    def _optimizer_step(self, lr_scheduler) -> None:
        if self.c["training"].max_grad_norm is not None:
            self.precision.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.c["training"].max_grad_norm)
        self.precision.step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        lr_scheduler.step()
        self.policy.on_optimizer_step()
        if self.ema is not None:
            self.ema.step(self.policy)
        self.global_step += 1

    def _done(self) -> bool:
        max_steps = self.c["training"].max_train_steps
        return (self._time_up or (max_steps is not None and self.global_step >= max_steps)
                or self.global_step >= self.schedule_steps)

    def checkpoint_modules(self) -> dict:
        modules = {"policy": self.policy}
        if self.ema is not None:
            modules["ema_policy"] = self.ema.averaged_model
        return modules

    def state_dict(self) -> dict:
        state = {**super().state_dict(), "epoch": self.epoch, "lr_scheduler": self.lr_scheduler.state_dict(),
                 "schedule_steps": self.schedule_steps,
                 "data_generator": self.data_generator.get_state(), "batches_into_epoch": self.batches_into_epoch,
                 "epoch_start_data_generator": self._epoch_start_data_state, "epoch_losses": self._epoch_losses}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.epoch = int(state["epoch"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if int(state.get("schedule_steps", self.schedule_steps)) != self.schedule_steps:  # fitted to a budget
            self._set_schedule(int(state["schedule_steps"]))
        self.data_generator.set_state(state["data_generator"])
        self.batches_into_epoch = int(state.get("batches_into_epoch", 0))  # 0 in checkpoints before it existed
        if "epoch_start_data_generator" in state:
            self._epoch_start_data_state = state["epoch_start_data_generator"]
            self._epoch_losses = [float(x) for x in state["epoch_losses"]]
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])

    def _loader(self, dataset, c, shard: bool):
        """The training loader (`shard`: under DDP each rank reads its own 1/world_size of every
        epoch) draws from `data_generator` alone; the validation loader leaves it be."""
        if not (shard and self.dist.enabled):
            return make_dataloader(dataset, c.batch_size, shuffle=c.shuffle, num_workers=c.num_workers,
                                   generator=self.data_generator if shard else None, pin_memory=c.pin_memory,
                                   persistent_workers=c.persistent_workers)
        sampler = DistributedSampler(dataset, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                     shuffle=c.shuffle, seed=self.c["training"].seed)
        loader = make_dataloader(dataset, c.batch_size, index_sampler=sampler, num_workers=c.num_workers,
                                 generator=self.data_generator,
                                 pin_memory=c.pin_memory, persistent_workers=c.persistent_workers)
        loader.dist_sampler = sampler
        return loader
