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
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import hydra
import torch
from diffusers.optimization import get_scheduler
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from policylab.common.checkpoint import TopKCheckpointManager, get_rng_state
from policylab.common.precision import resolve_precision
from policylab.data.datasets.base import make_dataloader
from policylab.models.ema import EMAModel
from policylab.workspaces.base import (
    BaseWorkspace,
    LoggingConfig,
    RunConsole,
    broadcast_object,
    due,
    format_minutes,
    seed_everything,
    to_device,
)


@dataclasses.dataclass
class TrainingConfig:
    seed: int = 42
    device: str = "auto"  # auto (CUDA when there is a GPU) | cpu | cuda | cuda:N
    num_epochs: int = 100
    max_train_steps: int | None = None  # stop after this many optimizer steps (smoke runs)
    # Wall-clock budget for the whole run, end-of-epoch evaluations and checkpoints included: training
    # stops early enough to leave the longest end-of-epoch phase measured so far (see _over_time_budget).
    max_train_minutes: float | None = None
    gradient_accumulate_every: int = 1
    max_grad_norm: float | None = None
    use_ema: bool = True
    resume: Any = False  # true | false | "auto" (resume when there is a checkpoint)
    # Cadences in epochs: N > 0 runs after epochs N, 2N, ... and after the last epoch; 0 or null never.
    rollout_every: int | None = 50
    val_every: int | None = 1
    sample_every: int | None = 5
    checkpoint_every: int | None = 50
    max_val_steps: int | None = None
    dist_timeout_minutes: float = 60.0
    mixed_precision: str = "no"  # no | auto | bf16 | fp16: autocast of the training forward (common/precision.py)
    compile: bool = False  # torch.compile the backbone and obs encoder (nn.Module.compile: checkpoints unchanged)
    channels_last: bool = False  # image encoders' weights in channels-last memory format


@dataclasses.dataclass
class DataloaderConfig:
    batch_size: int = 256
    num_workers: int = 0
    shuffle: bool = True
    pin_memory: bool = False
    persistent_workers: bool = False


@dataclasses.dataclass
class OptimizerConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.95, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-6
    encoder_weight_decay: float | None = None
    fused: bool | None = None  # AdamW's fused kernel (None: torch's default for the device)


@dataclasses.dataclass
class LRSchedulerConfig:
    name: str = "cosine"
    warmup_steps: int = 500


@dataclasses.dataclass
class EMAConfig:
    update_after_step: int = 0
    inv_gamma: float = 1.0
    power: float = 0.75
    min_value: float = 0.0
    max_value: float = 0.9999


@dataclasses.dataclass
class CheckpointConfig:
    save_latest: bool = True
    monitor_key: str = "test/mean_score"
    mode: str = "max"
    topk: int = 5


SCHEMAS = {"training": TrainingConfig, "dataloader": DataloaderConfig, "val_dataloader": DataloaderConfig,
           "optimizer": OptimizerConfig, "lr_scheduler": LRSchedulerConfig, "ema": EMAConfig,
           "logging": LoggingConfig, "checkpoint": CheckpointConfig}


class SupervisedWorkspace(BaseWorkspace):
    schemas = SCHEMAS

    def __init__(self, cfg: DictConfig, output_dir: str | Path):
        super().__init__(cfg, output_dir)
        train = self.c["training"]
        self.policy = hydra.utils.instantiate(cfg.policy).to(self.device)
        self.ema = EMAModel(self.policy, **OmegaConf.to_container(self.c["ema"])) if train.use_ema else None
        if self.dist.enabled:  # same initial weights everywhere; then each rank its own noise and crops
            seed_everything(train.seed + self.dist.rank)
        opt = self.c["optimizer"]
        groups = self.policy.get_optim_groups(opt.weight_decay, encoder_weight_decay=opt.encoder_weight_decay)
        fused = {} if opt.fused is None else {"fused": opt.fused}
        self.optimizer = torch.optim.AdamW(groups, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, **fused)
        self._speed_ups(train)
        self.optimizers = {"policy": self.optimizer}
        self.data_generator = torch.Generator().manual_seed(train.seed)
        self.lr_scheduler = None
        self.epoch = 0
        # A stop mid-epoch (time budget, max_train_steps) counts that epoch; a resume finishes it, in
        # the same order, from the batch where it stopped.
        self.batches_into_epoch = 0
        self._epoch_start_data_state = self.data_generator.get_state()
        self._stop_rng: dict | None = None  # RNG states where training stopped, before the evaluation
        self._epoch_losses: list[float] = []  # the stopped epoch's losses so far
        self._t_start, self._time_up = time.monotonic(), False
        self._part_seconds: dict[str, float] = {}

    def _speed_ups(self, train: TrainingConfig) -> None:
        """Mixed precision, channels-last and torch.compile of the training policy (the EMA copy, which
        evaluates, stays eager fp32)."""
        self.precision = resolve_precision(train.mixed_precision, self.device)
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

    def _autocast(self):
        return self.precision.autocast()

    @property
    def eval_policy(self):
        return self.ema.averaged_model if self.ema is not None else self.policy

    def run(self) -> dict[str, Any]:
        cfg, train = self.cfg, self.c["training"]
        dataset = hydra.utils.instantiate(cfg.task.dataset)
        normalizer = dataset.get_normalizer()
        self.policy.set_normalizer(normalizer)
        if self.ema is not None:
            self.ema.averaged_model.set_normalizer(normalizer)
        self.policy.on_train_start()
        if self.ema is not None:  # the EMA copy validates: it needs what the policy prepared
            self.ema.averaged_model.on_train_start(source=self.policy)
        train_loader = self._loader(dataset, self.c["dataloader"], shard=True)
        val_dataset = dataset.get_validation_dataset()
        # Validation runs on rank 0 alone, over the whole validation set.
        val_loader = self._loader(val_dataset, self.c["val_dataloader"], shard=False) if len(val_dataset) else None
        steps_per_epoch = math.ceil(len(train_loader) / train.gradient_accumulate_every)
        total_steps = steps_per_epoch * train.num_epochs
        if train.max_train_steps is not None:
            total_steps = min(total_steps, train.max_train_steps)
        for policy in (self.policy, self.ema.averaged_model if self.ema is not None else None):
            if policy is not None:
                policy.set_total_steps(total_steps)
        self.lr_scheduler = lr_scheduler = get_scheduler(
            self.c["lr_scheduler"].name, optimizer=self.optimizer, num_warmup_steps=self.c["lr_scheduler"].warmup_steps,
            num_training_steps=steps_per_epoch * train.num_epochs)
        resume_from = self.start_run()
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        main = self.dist.is_main
        env_runner = None
        # `env_runner: null` (offline tasks) stays runner-less when debug/tiny.yaml merges its sizes into it
        if main and (cfg.task.get("env_runner") or {}).get("_target_") is not None:
            device = {"device": str(self.device)} if "device" in cfg.task.env_runner else {}  # `auto` resolved
            env_runner = hydra.utils.instantiate(cfg.task.env_runner, output_dir=str(self.output_dir), **device)
        topk = TopKCheckpointManager(self.checkpoint_dir, self.c["checkpoint"].monitor_key,
                                     self.c["checkpoint"].mode, self.c["checkpoint"].topk)
        logger = self.make_logger()
        say = RunConsole(self.output_dir, enabled=main)
        n_params = sum(p.numel() for p in self.policy.parameters()) / 1e6
        say(f"run dir: {self.output_dir.resolve()}")
        say(f"{type(self.policy).__name__} ({n_params:.1f}M parameters) on {cfg.task.get('name', 'task')}: "
            f"{len(dataset)} training windows, {steps_per_epoch} steps/epoch, device {self.device}"
            + (f", {self.dist.world_size} ranks" if self.dist.enabled else "")
            + (f"; resumed at epoch {self.epoch}, step {self.global_step}" if resume_from is not None else ""))
        model = self._wrap_ddp()
        metrics: dict[str, Any] = {}
        first_epoch, first_step = self.epoch, self.global_step
        try:
            while (self.epoch < train.num_epochs or self.batches_into_epoch) and not self._done():
                finishing = self.batches_into_epoch > 0  # the epoch a stop cut short, already counted
                train_loss = self._train_epoch(model, train_loader, lr_scheduler, logger)
                if not finishing:
                    self.epoch += 1  # epochs done; cadences below count them
                metrics = {"epoch": self.epoch, "train_loss": self.mean_over_ranks(train_loss)}
                if main:
                    metrics |= self._evaluate(env_runner, val_loader, dataset)
                if self._due(train.checkpoint_every):
                    with self._timed("checkpoint"):
                        self._checkpoint(topk, metrics)
                self.barrier()  # other ranks wait here while rank 0 evaluates and writes
                logger.log(metrics, step=self.global_step)
                say(self._epoch_line(metrics, first_epoch, first_step))
            say(self._final_line(topk, metrics))
        finally:
            logger.close()
            say.close()
        self.barrier()
        return metrics

    def _epoch_line(self, metrics: dict, first_epoch: int, first_step: int) -> str:
        """`epoch 3/300 step 195 | loss 0.0812 | val 0.0790 | score 0.412 | 2.1s/epoch | left 4m10s`."""
        train = self.c["training"]
        elapsed = time.monotonic() - self._t_start
        per_epoch = elapsed / max(self.epoch - first_epoch, 1)
        left = per_epoch * (train.num_epochs - self.epoch)
        if train.max_train_minutes is not None:
            left = min(left, 60 * train.max_train_minutes - elapsed)
        if train.max_train_steps is not None:
            per_step = elapsed / max(self.global_step - first_step, 1)
            left = min(left, per_step * (train.max_train_steps - self.global_step))
        if self._done() or self.epoch >= train.num_epochs:
            left = 0.0
        parts = [f"epoch {self.epoch}/{train.num_epochs} step {self.global_step}", f"loss {metrics['train_loss']:.4f}"]
        if "val_loss" in metrics:
            parts.append(f"val {metrics['val_loss']:.4f}")
        if "train_action_mse" in metrics:
            parts.append(f"action mse {metrics['train_action_mse']:.4f}")
        if "test/mean_score" in metrics:
            parts.append(f"score {metrics['test/mean_score']:.3f}")
        parts += [f"{per_epoch:.1f}s/epoch", f"left {format_minutes(left)}"]
        return " | ".join(parts)

    def _final_line(self, topk: TopKCheckpointManager, metrics: dict) -> str:
        elapsed = format_minutes(time.monotonic() - self._t_start)
        why = "time budget" if self._time_up else "max_train_steps" if self._done() else "num_epochs"
        line = f"done after {self.epoch} epochs, {self.global_step} steps, {elapsed} ({why})."
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

    @contextmanager
    def _timed(self, part: str):
        """Measures an end-of-epoch part; the time budget reserves the last measured time of each."""
        start = time.monotonic()
        try:
            yield
        finally:
            self._part_seconds[part] = time.monotonic() - start

    def _wrap_ddp(self):
        if not self.dist.enabled:
            return self.policy
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.policy, device_ids=device_ids)

    def _over_time_budget(self) -> bool:
        """True once the elapsed time plus what the final evaluation will take passes the budget.

        Checked after every optimizer step. The final evaluation's time is the sum of the last
        measured time of each end-of-epoch part it will run (rollout, validation, action MSE,
        checkpoint); a part not yet measured counts 0, so a run whose first rollout is its last may
        go over by that one rollout. Under DDP all ranks agree (any rank over budget stops all),
        since a rank that trains a step more than the others would wait forever in its all-reduce.
        """
        train = self.c["training"]
        if train.max_train_minutes is None:
            return False
        parts = {"rollout": train.rollout_every, "val": train.val_every, "sample": train.sample_every,
                 "checkpoint": train.checkpoint_every}
        reserve = sum(self._part_seconds.get(name, 0.0) for name, every in parts.items() if every)
        over = time.monotonic() - self._t_start + reserve > 60 * train.max_train_minutes
        if self.dist.enabled:
            flag = torch.tensor([float(over)], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            over = bool(flag.item())
        return over

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
                with self._autocast():
                    loss, _ = model(to_device(batch, self.device))
                self.precision.backward(loss / group_size)
            losses.append(loss.item())
            if step_now:
                self._optimizer_step(lr_scheduler)
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
        return self._time_up or (max_steps is not None and self.global_step >= max_steps)

    def _due(self, every: int | None) -> bool:
        """True after epochs every, 2*every, ... and after the last epoch; never when `every` is 0 or null."""
        if not every or every < 0:
            return False
        last = self.epoch >= self.c["training"].num_epochs or self._done()
        return due(self.epoch, every) or last

    @torch.no_grad()
    def _evaluate(self, env_runner, val_loader, dataset) -> dict[str, Any]:
        train, metrics = self.c["training"], {}
        policy = self.eval_policy
        policy.eval()
        if env_runner is not None and self._due(train.rollout_every):
            with self._timed("rollout"):
                metrics |= env_runner.run(policy)
        if val_loader is not None and self._due(train.val_every):
            with self._timed("val"):
                losses = [policy.compute_loss(to_device(b, self.device))[0].item()
                          for i, b in enumerate(val_loader) if train.max_val_steps is None or i < train.max_val_steps]
            metrics["val_loss"] = sum(losses) / max(len(losses), 1)
        if self._due(train.sample_every):
            with self._timed("sample"):
                batch = to_device(dataset.get_batch(list(range(min(len(dataset), 16)))), self.device)
                pred = policy.predict_action(batch["obs"])["action_pred"]
            metrics["train_action_mse"] = torch.nn.functional.mse_loss(pred, batch["action"]).item()
        self.policy.train()
        return metrics

    def checkpoint_modules(self) -> dict:
        modules = {"policy": self.policy}
        if self.ema is not None:
            modules["ema_policy"] = self.ema.averaged_model
        return modules

    def state_dict(self) -> dict:
        state = {**super().state_dict(), "epoch": self.epoch, "lr_scheduler": self.lr_scheduler.state_dict(),
                 "data_generator": self.data_generator.get_state(), "batches_into_epoch": self.batches_into_epoch,
                 "epoch_start_data_generator": self._epoch_start_data_state, "epoch_losses": self._epoch_losses}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.precision.scaler is not None:
            state["grad_scaler"] = self.precision.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.epoch = int(state["epoch"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.data_generator.set_state(state["data_generator"])
        self.batches_into_epoch = int(state.get("batches_into_epoch", 0))  # 0 in checkpoints before it existed
        if "epoch_start_data_generator" in state:
            self._epoch_start_data_state = state["epoch_start_data_generator"]
            self._epoch_losses = [float(x) for x in state["epoch_losses"]]
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.precision.scaler is not None and "grad_scaler" in state:
            self.precision.scaler.load_state_dict(state["grad_scaler"])

    def _checkpoint(self, topk: TopKCheckpointManager, metrics: dict) -> None:
        """Called on every rank (each contributes its RNG state); rank 0 writes."""
        if self.c["checkpoint"].save_latest:
            self.save_checkpoint(self.checkpoint_dir / "latest", self._stop_rng)
        path = topk.get_ckpt_path({**metrics, "epoch": self.epoch}) if self.dist.is_main else None
        path = broadcast_object(path, self.dist)  # saving is collective: every rank gives its RNG state
        if path is not None:
            self.save_checkpoint(path, self._stop_rng)

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
