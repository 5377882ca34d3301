"""On-policy distillation of a one-step student (DAgger-style): the teacher labels the states the
student's own rollouts visit, where its errors grow, not only the demos' states.

Rounds of `distill.steps_per_round` optimizer steps. A round begins by recording: the current
student rolls out on `distill.record_episodes` training seeds (`record_start_seed` + i, counted on
over the rounds; never a test seed, which is checked), its noise seeded per episode, and every
observation it acted on, `{key: (To, ...)}`, is appended to `<run dir>/onpolicy_pool.zarr` (one
episode per rollout with its seed and round: one writer, each episode committed atomically). The
pool aggregates all rounds. Then each step draws `round(pool_share * batch_size)` observations from
the pool and the rest of the batch from demo windows, and trains the endpoint term: the student's
jump from sigma_max noise against the teacher's sampler run on that same noise
(`ConsistencyCTMPolicy.endpoint_loss`), so no actions are needed, only observations. AdamW starts
afresh each round and its LR anneals from `optimizer.lr` to 0 over the round (cosine).

The student (`distill.student`, a consistency_ctm checkpoint) and its teacher (`distill.teacher`,
the diffusion_edm checkpoint it was distilled from) are loaded with the safe loaders. The run's
`policy` config becomes the student's (the composed one is replaced), so `eval.py` and
`from_checkpoint` load the result as any student. The task's env runner scores the student on the
test seeds at `training.eval_every` (a round, by default); checkpoints keep the top k.

Resume (`training.resume`): `latest` holds the step, AdamW, the batch generator, every RNG state
and the number of pool episodes it trained on; a resumed run drops the episodes recorded after it
(a kill mid-recording) and records them again: the same seeds, seeded noise and weights give the
same observations, so it continues the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from policylab.common.checkpoint import load_config
from policylab.data.replay_buffer import ReplayBuffer
from policylab.policies.consistency import student_and_teacher_cond
from policylab.policies.consistency_ctm import ConsistencyCTMPolicy
from policylab.policies.loading import load_policy
from policylab.workspaces.base import (
    BaseWorkspace,
    CheckpointConfig,
    LoggingConfig,
    StepTrainingConfig,
    to_device,
)
from policylab.workspaces.supervised import OptimizerConfig, make_adamw

POOL = "onpolicy_pool.zarr"
SEEDS_KEY, ROUNDS_KEY = "episode_seeds", "episode_rounds"
# The test split a recording must stay out of: the runner's test_start_seed and the next 100,000
# seeds, which eval.py reaches with any n_test up to that.
TEST_SEED_SPAN = 100_000


@dataclasses.dataclass
class DistillConfig:
    student: str | None
    teacher: str | None
    use_ema: bool
    steps_per_round: int
    pool_share: float
    record_episodes: int
    record_start_seed: int


SCHEMAS = {"training": StepTrainingConfig, "distill": DistillConfig, "optimizer": OptimizerConfig,
           "logging": LoggingConfig, "checkpoint": CheckpointConfig}


def distill_loss(student: ConsistencyCTMPolicy, obs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The endpoint term on every observation of `obs {key: (B, To, ...)}`: the student's jump from
    sigma_max noise against the teacher's sampler on that noise (the teacher labels these obs)."""
    nobs = student.normalize_obs(obs)
    cond, teacher_cond = student_and_teacher_cond(student, nobs)
    return student.endpoint_loss(nobs, cond, teacher_cond)


def recording_seeds(runner_cfg: DictConfig, d: DistillConfig, round_index: int) -> list[int]:
    """The episode seeds round `round_index` records; ValueError if one is a test seed."""
    first = d.record_start_seed + round_index * d.record_episodes
    seeds = list(range(first, first + d.record_episodes))
    test0 = int(runner_cfg.test_start_seed)
    clash = [s for s in seeds if test0 <= s < test0 + TEST_SEED_SPAN]
    if clash:
        raise ValueError(f"distill.record_start_seed: round {round_index} would record on seeds {clash[0]}.., inside "
                         f"the test seeds {test0}..{test0 + TEST_SEED_SPAN - 1}; record on seeds outside them")
    return seeds


class ObservationPool:
    """The observations the student's rollouts acted on: a zarr store, one episode per rollout
    `{key: (L, To, ...)}` with its seed and round, and its rows in memory as tensors `(N, To, ...)`."""

    def __init__(self, path: Path, keys: list[str]):
        self.keys, self.path = keys, path
        self.store = ReplayBuffer.create_from_path(path, mode="a")  # holds the writer lock: one writer
        self.obs: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.store.n_steps

    @property
    def n_episodes(self) -> int:
        return self.store.n_episodes

    def keep(self, n_episodes: int) -> None:
        """Drop the episodes past the first `n_episodes` (recorded after the checkpoint resumed from)."""
        if self.store.n_episodes < n_episodes:
            raise ValueError(f"{self.path} holds {self.store.n_episodes} episodes but the checkpoint resumed from trained "
                             f"on {n_episodes}: the pool was changed outside the run")
        while self.store.n_episodes > n_episodes:
            self.store.drop_episode()
        self._load()

    def add(self, episodes: dict[int, list[dict[str, torch.Tensor]]], round_index: int) -> None:
        """Append each episode `{seed: [obs {key: (To, ...)} per decision]}` in seed order."""
        for seed in sorted(episodes):
            steps = episodes[seed]
            data = {k: torch.stack([step[k] for step in steps]).numpy() for k in self.keys}
            self.store.add_episode(data, episode_meta={SEEDS_KEY: np.int64(seed), ROUNDS_KEY: np.int64(round_index)})
        self._load()

    def _load(self) -> None:
        self.obs = {k: torch.from_numpy(np.asarray(self.store.data[k][:])) for k in self.keys if k in self.store}

    def close(self) -> None:
        self.store.close()


class OnPolicyDistillWorkspace(BaseWorkspace):
    schemas = SCHEMAS

    def __init__(self, cfg: DictConfig, output_dir: str | Path):
        super().__init__(cfg, output_dir)
        d, train = self.c["distill"], self.c["training"]
        if self.dist.enabled:
            raise ValueError("on-policy distillation runs in one process (one writer records the pool); run it without torchrun")
        if not 0 <= d.pool_share <= 1 or d.steps_per_round < 1 or d.record_episodes < 1:
            raise ValueError(f"distill: pool_share must be in [0, 1] (got {d.pool_share}), steps_per_round and "
                             f"record_episodes >= 1 (got {d.steps_per_round}, {d.record_episodes})")
        if not (d.student and d.teacher):
            raise ValueError("distill.student and distill.teacher must name checkpoint directories (a consistency_ctm "
                             "student and the diffusion_edm teacher it was distilled from)")
        self.policy = load_policy(d.student, device=self.device, use_ema=d.use_ema)
        if not isinstance(self.policy, ConsistencyCTMPolicy):
            raise TypeError(f"distill.student {d.student} is a {type(self.policy).__name__}; on-policy distillation "
                             "trains a ConsistencyCTMPolicy (policy=consistency_ctm) on its endpoint term")
        self._adopt_student_config(cfg, load_config(d.student))
        self.policy.teacher_path = d.teacher
        teacher = load_policy(d.teacher, device=self.device).requires_grad_(False)
        self.policy.check_teacher(teacher)
        mine, theirs = self.policy.normalizer.state_dict(), teacher.normalizer.state_dict()
        if mine.keys() != theirs.keys() or any(not torch.equal(mine[k], theirs[k]) for k in mine):
            raise ValueError(f"distill.teacher {d.teacher} normalizes observations unlike the student: use the "
                             "checkpoint the student was distilled from")
        object.__setattr__(self.policy, "teacher", teacher)  # a plain attribute: never in a checkpoint
        self.policy.endpoint_batch = None  # every observation of a batch gets the teacher's label
        self.policy.train()
        self.optimizer = make_adamw(self.policy, self.c["optimizer"])
        self.optimizers = {"policy": self.optimizer}
        self.generator = torch.Generator().manual_seed(train.seed)  # which demo windows and pool rows
        self.recorded_rounds, self.pool_episodes = 0, 0
        self._round_metrics: dict = {}
        self.env_runner = None

    def _adopt_student_config(self, cfg: DictConfig, student_cfg: DictConfig) -> None:
        """The run's policy config becomes the student's (what its checkpoints rebuild), its horizons the
        student's; the task's observations must be the student's."""
        policy_cfg = student_cfg.policy
        task_meta = OmegaConf.to_container(cfg.task.shape_meta, resolve=True)
        if OmegaConf.to_container(policy_cfg.shape_meta, resolve=True) != task_meta:
            raise ValueError(f"task.shape_meta differs from the shape_meta of distill.student {self.c['distill'].student}: "
                             "distill it on the task it was trained on")
        with open_dict(cfg):
            cfg.policy = OmegaConf.merge(policy_cfg, {"teacher": self.c["distill"].teacher, "endpoint_batch": None})
            for key in ("horizon", "n_obs_steps", "n_action_steps"):
                cfg[key] = policy_cfg[key]

    def build(self) -> None:
        """Demo windows and the pool's store (opened for writing; truncated once resumed, in `start`)."""
        self.dataset = hydra.utils.instantiate(self.cfg.task.dataset)
        self.pool = ObservationPool(self.output_dir / POOL, list(self.policy.obs_keys))

    def start(self) -> None:
        self.pool.keep(self.pool_episodes)
        runner_cfg = self.cfg.task.get("env_runner")
        if (runner_cfg or {}).get("_target_") is not None:
            self.env_runner = hydra.utils.instantiate(runner_cfg, output_dir=str(self.output_dir), device=str(self.device))

    def close(self) -> None:
        if self.env_runner is not None:
            self.env_runner.close()
        if getattr(self, "pool", None) is not None:
            self.pool.close()

    def describe(self) -> str:
        d, n_params = self.c["distill"], sum(p.numel() for p in self.policy.parameters()) / 1e6
        return (f"on-policy distillation of {d.student} ({n_params:.1f}M parameters) by {d.teacher}: rounds of "
                f"{d.steps_per_round} steps, {d.pool_share:.0%} of each batch from the observations of "
                f"{d.record_episodes} rollouts a round (seeds {d.record_start_seed}..), the rest from "
                f"{len(self.dataset)} demo windows; device {self.device}")

    def train_step(self) -> dict:
        """One AdamW step on a mixed batch; a round's first step records its rollouts first."""
        d, base_lr = self.c["distill"], self.c["optimizer"].lr
        round_index, into_round = divmod(self.global_step, d.steps_per_round)
        if d.pool_share > 0 and self.recorded_rounds <= round_index:
            self._round_metrics = self._record(round_index)
        if into_round == 0:  # a new round: AdamW afresh
            self.optimizer.state.clear()
        lr = base_lr * 0.5 * (1 + math.cos(math.pi * into_round / d.steps_per_round))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        obs, n_pool = self.next_batch()
        loss = distill_loss(self.policy, obs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.policy.on_optimizer_step()
        self.global_step += 1
        return {**self._round_metrics, "train_loss": loss.item(), "lr": lr, "round": round_index,
                "pool_rows_in_batch": n_pool}

    def next_batch(self, generator: torch.Generator | None = None) -> tuple[dict[str, torch.Tensor], int]:
        """({key: (B, To, ...)}, n_pool): B - n_pool demo windows, then n_pool pool observations
        (`round(pool_share * B)` once the pool holds any), drawn with `generator` (the run's)."""
        generator = self.generator if generator is None else generator
        batch_size = self.c["training"].batch_size
        n_pool = round(self.c["distill"].pool_share * batch_size) if len(self.pool) else 0
        demo = torch.randint(len(self.dataset), (batch_size - n_pool,), generator=generator)
        obs = self.dataset.get_batch(demo.numpy())["obs"]
        if n_pool:
            rows = torch.randint(len(self.pool), (n_pool,), generator=generator)
            obs = {k: torch.cat([obs[k], self.pool.obs[k][rows]]) for k in obs}
        return to_device(obs, self.device), n_pool

    def _record(self, round_index: int) -> dict:
        """Roll the student out on this round's training seeds; add what it saw to the pool."""
        d, t0 = self.c["distill"], time.monotonic()
        task_runner = self.cfg.task.get("env_runner")
        if (task_runner or {}).get("_target_") is None:
            raise ValueError("on-policy distillation records rollouts: task.env_runner must be set")
        seeds = recording_seeds(task_runner, d, round_index)
        overrides = {"n_train": len(seeds), "train_start_seed": seeds[0], "n_test": 0, "n_train_vis": 0,
                     "n_test_vis": 0, "device": str(self.device)}
        runner = hydra.utils.instantiate(OmegaConf.merge(task_runner, overrides),
                                         output_dir=str(self.output_dir / "recording"))
        played = [(split, seed) for split, seed, _ in runner.episodes]
        if played != [("train", s) for s in seeds]:
            raise RuntimeError(f"the recording runner would play {played[:3]}..., not training seeds {seeds[0]}..")
        episodes: dict[int, list] = {s: [] for s in seeds}

        def observe(row_seeds: list[int], obs: dict) -> None:
            for i, seed in enumerate(row_seeds):
                episodes[seed].append({k: obs[k][i].cpu() for k in self.pool.keys})

        self.policy.eval()
        try:
            with torch.no_grad():
                log = runner.run(self.policy, observe=observe)
        finally:
            runner.close()
            self.policy.train()
        self.pool.add(episodes, round_index)
        self.recorded_rounds, self.pool_episodes = round_index + 1, self.pool.n_episodes
        return {"record/mean_score": log["train/mean_score"], "pool/episodes": self.pool.n_episodes,
                "pool/observations": len(self.pool), "record_seconds": time.monotonic() - t0}

    def eval_parts(self) -> dict:
        t = self.c["training"]
        return {"rollout": (t.eval_every, bool(t.eval_every) and t.eval_every > 0, self._rollout)}

    def _rollout(self) -> dict:
        if self.env_runner is None:
            return {}
        self.policy.eval()
        try:
            with torch.no_grad():
                return self.env_runner.run(self.policy)
        finally:
            self.policy.train()

    def line_items(self, metrics: dict) -> list[str]:
        items = [f"round {metrics['round']}"] if "round" in metrics else []
        items += [f"loss {metrics['train_loss']:.4f}"] if "train_loss" in metrics else []
        items += [f"record {metrics['record/mean_score']:.3f}"] if "record/mean_score" in metrics else []
        return items + super().line_items(metrics)

    def checkpoint_modules(self) -> dict:
        return {"policy": self.policy}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "generator": self.generator.get_state(),
                "recorded_rounds": self.recorded_rounds, "pool_episodes": self.pool_episodes}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])
        self.recorded_rounds, self.pool_episodes = int(state["recorded_rounds"]), int(state["pool_episodes"])
