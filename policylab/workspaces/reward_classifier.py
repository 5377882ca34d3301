"""Train the binary success classifier (`policylab.rl.reward_classifier`) on labelled frames.

    python train.py workspace=reward_classifier task=pick_cube_success

The frames are a `success_frames` store (`task.reward_classifier.zarr_path`). Whole recordings
are held out (`data.val_ratio`, drawn with `data.seed`), so held-out frames never sit next to a
training frame of the same episode. Every batch is half success, half failure frames (drawn with
replacement: success is the rarer class), random crops in training, BCE on the logits. Every
`training.eval_every` steps the held-out frames are scored (center crops): accuracy, precision,
recall and F1 at `data.threshold`; checkpoints keep the best by `checkpoint.monitor_key` and
`latest`, like any workspace's (`model.safetensors` is the classifier).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from policylab.data.replay_buffer import ReplayBuffer
from policylab.rl.reward_classifier import binary_metrics, build_reward_classifier
from policylab.rl.success_frames import SUCCESS
from policylab.workspaces.base import (
    BaseWorkspace,
    CheckpointConfig,
    LoggingConfig,
    StepTrainingConfig,
)


@dataclasses.dataclass
class ClassifierTrainingConfig(StepTrainingConfig):
    lr: float
    weight_decay: float


@dataclasses.dataclass
class ClassifierDataConfig:
    zarr_path: str
    val_ratio: float
    seed: int
    threshold: float
    eval_batch_size: int


class Frames:
    """The frames of some recordings of a store in memory: `{key: (N, ...)}` tensors and labels (N,)."""

    def __init__(self, buffer: ReplayBuffer, keys: list[str], episodes: np.ndarray, obs_meta: dict):
        ends = buffer.episode_ends[:]
        starts = np.concatenate([[0], ends[:-1]])
        idx = np.concatenate([np.arange(starts[e], ends[e]) for e in episodes]) if len(episodes) else np.zeros(0, int)
        self.obs = {}
        for key in keys:
            value = buffer[key][:][idx]
            if obs_meta[key].get("type") == "rgb":
                if value.ndim != 4 or value.shape[-1] != 3:
                    raise ValueError(f"frames key {key!r} must be (N, H, W, 3) uint8, got {value.shape}")
                value = np.moveaxis(value, -1, 1)  # kept uint8 (N, 3, H, W); scaled per batch
            self.obs[key] = torch.from_numpy(np.ascontiguousarray(value))
        self.labels = torch.from_numpy(buffer[SUCCESS][:][idx].astype(np.float32))
        self.positive = torch.nonzero(self.labels > 0.5).squeeze(-1)
        self.negative = torch.nonzero(self.labels < 0.5).squeeze(-1)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        obs = {key: (value[idx].float().div_(255) if value.dtype == torch.uint8 else value[idx].float())
               for key, value in self.obs.items()}
        return {k: v.to(device) for k, v in obs.items()}, self.labels[idx].to(device)

    def balanced(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Indices: half success frames, half failure frames (with replacement)."""
        if not len(self.positive) or not len(self.negative):
            raise ValueError(f"training frames need both classes: {len(self.positive)} success, "
                             f"{len(self.negative)} failure")
        half = batch_size // 2
        pos = self.positive[torch.randint(len(self.positive), (half,), generator=generator)]
        neg = self.negative[torch.randint(len(self.negative), (batch_size - half,), generator=generator)]
        return torch.cat([pos, neg])


def split_episodes(n_episodes: int, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) episode indices; at least one of each when there are two or more episodes."""
    if n_episodes < 2:
        raise ValueError(f"need at least 2 recordings to hold some out, the store has {n_episodes}")
    n_val = min(max(1, round(val_ratio * n_episodes)), n_episodes - 1)
    order = np.random.default_rng(seed).permutation(n_episodes)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class RewardClassifierWorkspace(BaseWorkspace):
    schemas: ClassVar[dict[str, type]] = {"training": ClassifierTrainingConfig, "data": ClassifierDataConfig,
                                          "logging": LoggingConfig, "checkpoint": CheckpointConfig}

    def __init__(self, cfg, output_dir):
        super().__init__(cfg, output_dir)
        train = self.c["training"]
        shape_meta = OmegaConf.to_container(cfg.task.shape_meta, resolve=True)
        self.model = build_reward_classifier(OmegaConf.to_container(cfg.classifier, resolve=True),
                                             shape_meta).to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizers = {"model": torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)}
        self.generator = torch.Generator().manual_seed(train.seed)

    def checkpoint_modules(self) -> dict:
        return {"policy": self.model}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])

    def load_frames(self) -> tuple[Frames, Frames]:
        d = self.c["data"]
        path = Path(d.zarr_path)
        if not path.exists():
            raise FileNotFoundError(f"no success-frame store at {path}: record one (demo_real_robot.py "
                                    f"mode=record_success, or python -m policylab.rl.success_frames in sim)")
        buffer = ReplayBuffer.create_from_path(str(path), mode="r")
        if SUCCESS not in buffer:
            raise KeyError(f"{path} has no {SUCCESS!r} labels; it has {sorted(buffer.keys())}")
        train_eps, val_eps = split_episodes(buffer.n_episodes, d.val_ratio, d.seed)
        keys, meta = list(self.model.obs_meta), self.model.obs_meta
        return Frames(buffer, keys, train_eps, meta), Frames(buffer, keys, val_eps, meta)

    @torch.no_grad()
    def evaluate(self, frames: Frames) -> dict[str, float]:
        d = self.c["data"]
        probs, losses = [], []
        for start in range(0, len(frames), d.eval_batch_size):
            obs, label = frames.batch(torch.arange(start, min(start + d.eval_batch_size, len(frames))), self.device)
            prob = self.model.probability(obs)
            probs.append(prob.cpu())
            losses.append(F.binary_cross_entropy(prob.clamp(1e-6, 1 - 1e-6), label, reduction="sum").item())
        prob = torch.cat(probs).numpy()
        metrics = binary_metrics(prob, frames.labels.numpy(), d.threshold)
        return {f"val/{k}": v for k, v in metrics.items()} | {"val/loss": sum(losses) / max(len(frames), 1)}

    def build(self) -> None:
        self.train_frames, self.val_frames = self.load_frames()

    def describe(self) -> str:
        t, v = self.train_frames, self.val_frames
        return (f"reward classifier on {self.device}: {len(t)} training frames ({len(t.positive)} success), "
                f"{len(v)} held out ({len(v.positive)} success)")

    def eval_parts(self) -> dict:
        return {"eval": (self.c["training"].eval_every, True, lambda: self.evaluate(self.val_frames))}

    @property
    def topk_name(self) -> str:
        return "step={step:07d}-{monitor_key}={value:.4f}"

    def train_step(self) -> dict:
        """One AdamW step on a balanced batch: {"train/loss"}."""
        train, optimizer = self.c["training"], self.optimizers["model"]
        self.model.train()
        obs, label = self.train_frames.batch(self.train_frames.balanced(train.batch_size, self.generator), self.device)
        loss = F.binary_cross_entropy_with_logits(self.model(obs), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.global_step += 1
        return {"train/loss": loss.item()}

    def line_items(self, metrics: dict) -> list[str]:
        keys = ("train/loss", "val/loss", "val/accuracy", "val/f1")
        return [f"{key} {metrics[key]:.4f}" for key in keys if key in metrics]
