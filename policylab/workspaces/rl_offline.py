"""Stage I of ConRFT (Cal-ConRFT): offline actor-critic fine-tuning on the demonstrations.

    python train.py workspace=rl_offline task=pick_cube_lowdim policy.init=<SFT checkpoint> [conrft=code]

The actor starts from a supervised checkpoint (`policy.init`, e.g. a `policy=conrft_actor` run):
its policy config replaces `policy` (the path is kept as `init_from`), so the saved `config.yaml` rebuilds the actor and `eval.py`,
`from_checkpoint` and the policy server load RL checkpoints like any other. Without `init` the
actor is built from `policy` and its normalizer fitted on the demos. The critic comes from
`critic`, the stage's hyper-parameters from the `conrft` preset (`conrft.common` + `conrft.offline`).

Step-based: one step is one learner iteration of `rl.conrft.ConRFT.train_step` (critic_actor_ratio
updates, each on a fresh batch). Checkpoints hold the actor (`model.safetensors`), `critic` and
`target_critic`, both optimizers, the sampler's generator and every RNG state: `training.resume`
continues exactly.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, ClassVar

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from policylab.common import checkpoint as ckpt
from policylab.common.safe_config import instantiate_trusted
from policylab.common.shape_meta import ShapeMeta
from policylab.data.replay_buffer import ReplayBuffer
from policylab.data.sampler import downsample_mask, get_val_mask
from policylab.policies.loading import load_policy
from policylab.rl.conrft import ConRFT, ConRFTConfig
from policylab.rl.embeddings import (
    EMBEDDING_KEY,
    episode_embeddings,
    has_frozen_encoder,
)
from policylab.rl.transitions import TransitionSampler, TransitionSpec
from policylab.workspaces.base import BaseWorkspace, LoggingConfig, due, to_device


@dataclasses.dataclass
class RLTrainingConfig:
    seed: int = 42
    device: str = "cpu"
    resume: Any = False  # true | false | "auto" (resume when there is a checkpoint)
    num_steps: int = 20_000               # learner iterations
    batch_size: int = 256
    max_train_minutes: float | None = None  # stop at the first step past this budget (evaluation excluded)
    log_every: int = 50
    eval_every: int = 2_000               # steps between env-runner evaluations (0: never)
    eval_at_end: bool = True
    checkpoint_every: int = 2_000         # steps between checkpoints (0: only at the end)
    torch_threads: int | None = None      # intra-op threads of the learner (None: torch's default)
    dist_timeout_minutes: float = 60.0


@dataclasses.dataclass
class RewardConfig:
    gamma: float = 0.98                   # discount of rewards over an action chunk and of MC returns
    scale: float = 1.0                    # r' = scale * r + bias (ConRFT: success 10, else -0.05)
    bias: float = 0.0
    reward_neg: float | None = None       # raw failure reward, for the sparse MC-return rule
    is_sparse: bool = True


@dataclasses.dataclass
class CheckpointConfig:
    save_latest: bool = True
    monitor_key: str = "test/success_rate"
    mode: str = "max"
    topk: int = 2


WORKSPACE_POLICY_KEYS = ("init", "freeze_encoder")  # under `policy`, read by the RL workspaces only


def policy_build_config(policy_cfg) -> dict:
    """The `policy` config without the RL workspace's own keys: what builds the actor."""
    cfg = OmegaConf.to_container(policy_cfg, resolve=True)
    return {k: v for k, v in cfg.items() if k not in WORKSPACE_POLICY_KEYS}


class OfflineRLWorkspace(BaseWorkspace):
    schemas: ClassVar[dict[str, type]] = {"training": RLTrainingConfig, "reward": RewardConfig, "logging": LoggingConfig,
               "checkpoint": CheckpointConfig}
    stage = "offline"

    def __init__(self, cfg: DictConfig, output_dir: str | Path):
        super().__init__(cfg, output_dir)
        train = self.c["training"]
        if train.torch_threads:
            torch.set_num_threads(train.torch_threads)
        actor = self.build_actor()
        # A frozen observation encoder (Octo, as ConRFT) runs where transitions are recorded, never
        # in the learner: its features are stored as `embedding` with every transition.
        self.embed = has_frozen_encoder(actor)
        critic = self.build_critic()(
            shape_meta=OmegaConf.to_container(cfg.task.shape_meta, resolve=True), n_obs_steps=actor.n_obs_steps,
            action_dim=actor.n_action_steps * actor.action_dim)
        stage_cfg = {**OmegaConf.to_container(cfg.conrft.common), **OmegaConf.to_container(cfg.conrft[self.stage])}
        self.agent = ConRFT(actor, critic, ConRFTConfig(**stage_cfg)).to(self.device)
        self.optimizers = self.agent.optimizers
        self.init_critic()
        self.generator = torch.Generator().manual_seed(train.seed)
        self.env_runner = None
        self._t_start = time.monotonic()

    @property
    def actor(self):
        return self.agent.actor

    def build_actor(self):
        """The actor from `policy.init` (its config replaces `policy`) or from `policy` itself;
        `policy.freeze_encoder` freezes its observation encoder (e.g. an Octo trained in SFT)."""
        init = self.init_path = self.cfg.policy.get("init")
        freeze = bool(self.cfg.policy.get("freeze_encoder", False))
        if init is None:
            actor = hydra.utils.instantiate(policy_build_config(self.cfg.policy))
            actor.set_normalizer(hydra.utils.instantiate(self.cfg.task.dataset).get_normalizer())
        else:
            init_cfg = ckpt.load_config(init)
            actor = load_policy(init, use_ema=True)  # allow-listed targets only
            with open_dict(self.cfg):  # the saved config rebuilds the actor; `init_from` records where it began
                self.cfg.policy = init_cfg.policy
                self.cfg.init_from = str(init)
        if freeze:
            encoder_cfg = self.cfg.policy.get("obs_encoder")
            if encoder_cfg is None or "frozen" not in encoder_cfg:
                raise ValueError("policy.freeze_encoder=true needs an observation encoder with a `frozen` option "
                                 f"(e.g. policy/obs_encoder=octo_*), got {encoder_cfg and encoder_cfg.get('_target_')}")
            with open_dict(self.cfg):  # saved, and read by the ray actors
                self.cfg.policy.obs_encoder.frozen = True
            actor.obs_encoder.frozen = True
        actor.train().requires_grad_(True)
        if has_frozen_encoder(actor):
            actor.obs_encoder.requires_grad_(False)
            actor.obs_encoder.train()  # a frozen encoder keeps itself in eval mode
        return actor

    def build_critic(self):
        """The critic factory: the init checkpoint's own `critic` config when it holds a critic (Stage
        II continues Stage I's network; that config came from a file, so only allow-listed targets
        are built), else `critic` from this run's config."""
        init = self.init_path
        if init is None or not (Path(init) / "critic.safetensors").exists():
            return hydra.utils.instantiate(self.cfg.critic)
        init_critic = ckpt.load_config(init).get("critic")
        if init_critic is None:
            raise ValueError(f"{init} holds a critic but its config.yaml has no `critic` section")
        if OmegaConf.to_container(init_critic, resolve=True) != OmegaConf.to_container(self.cfg.critic, resolve=True):
            print(f"critic: using {init}'s critic config (this run's `critic` differs and is ignored)")
        with open_dict(self.cfg):
            self.cfg.critic = init_critic
        return instantiate_trusted(self.cfg.critic, "critic")

    def init_critic(self) -> None:
        """Stage I starts the critic from scratch."""

    def checkpoint_modules(self) -> dict:
        return {"policy": self.actor, "critic": self.agent.critic, "target_critic": self.agent.target_critic}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "generator": self.generator.get_state(), "n_updates": self.agent.n_updates}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])
        self.agent.n_updates = int(state["n_updates"])

    def transition_spec(self) -> TransitionSpec:
        r = self.c["reward"]
        return TransitionSpec(self.actor.horizon, self.actor.n_obs_steps, self.actor.n_action_steps, r.gamma,
                              reward_scale=r.scale, reward_bias=r.bias, reward_neg=r.reward_neg,
                              is_sparse_reward=r.is_sparse, embedding_key=EMBEDDING_KEY if self.embed else None)

    def demo_replay_buffer(self) -> ReplayBuffer:
        """The task dataset's training episodes (same `val_ratio` / `max_train_episodes` / `seed`
        selection as `SequenceDataset`, so the RL stages see the demos the supervised stage saw)."""
        d = self.cfg.task.dataset
        store = ReplayBuffer.copy_from_path(d.zarr_path)
        train_mask = downsample_mask(~get_val_mask(store.n_episodes, d.get("val_ratio", 0.0), seed=d.get("seed", 42)),
                                     d.get("max_train_episodes"), seed=d.get("seed", 42))
        demos = ReplayBuffer.create_empty_numpy()
        shape_meta = OmegaConf.to_container(self.cfg.task.shape_meta, resolve=True)
        chosen = np.flatnonzero(train_mask)
        for i in tqdm(chosen, desc="demo embeddings", disable=not self.embed):
            episode = store.get_episode(int(i), copy=True)
            if self.embed:
                episode[EMBEDDING_KEY] = episode_embeddings(self.actor, episode, shape_meta)
            demos.add_episode(episode)
        return demos

    def resume_if_asked(self) -> None:
        resume_from = self.start_run()
        if resume_from is not None:
            self.load_checkpoint(resume_from)
            print(f"resumed from {resume_from} at step {self.global_step}")

    def over_time_budget(self) -> bool:
        budget = self.c["training"].max_train_minutes
        return budget is not None and time.monotonic() - self._t_start > 60 * budget

    def evaluate(self) -> dict[str, Any]:
        if self.env_runner is None and self.cfg.task.get("env_runner") is not None:
            self.env_runner = hydra.utils.instantiate(self.cfg.task.env_runner, output_dir=str(self.output_dir))
        if self.env_runner is None:
            return {}
        # Rollouts draw from the global RNGs: restore them, so evaluating (or not, or at the end of a
        # shorter run that is resumed later) never changes the training that follows.
        rng = ckpt.get_rng_state()
        self.actor.eval()
        try:
            return self.env_runner.run(self.actor)
        finally:
            self.actor.train()
            ckpt.set_rng_state(rng)

    def checkpoint(self, topk: ckpt.TopKCheckpointManager, metrics: dict) -> None:
        if self.c["checkpoint"].save_latest:
            self.save_checkpoint(self.checkpoint_dir / "latest")
        path = topk.get_ckpt_path({**metrics, "epoch": self.global_step})
        if path is not None:
            self.save_checkpoint(path)

    def run(self) -> dict[str, Any]:
        train = self.c["training"]
        sampler = TransitionSampler(self.demo_replay_buffer(), ShapeMeta.parse(self.cfg.task.shape_meta),
                                    self.transition_spec())
        self.resume_if_asked()
        topk = ckpt.TopKCheckpointManager(self.checkpoint_dir, self.c["checkpoint"].monitor_key,
                                          self.c["checkpoint"].mode, self.c["checkpoint"].topk,
                                          format_str="step={epoch:07d}-{monitor_key}={value:.3f}")
        logger = self.make_logger()
        print(f"Stage I (Cal-ConRFT) in {self.output_dir}: {len(sampler)} demo transitions")
        sample = lambda: to_device(sampler.sample(train.batch_size, self.generator), self.device)
        metrics: dict[str, Any] = {}
        bar = tqdm(total=train.num_steps, initial=self.global_step, desc="cal-conrft", mininterval=1.0)
        while self.global_step < train.num_steps and not self.over_time_budget():
            metrics = self.agent.train_step(sample, self.generator)
            self.global_step += 1
            bar.update(1)
            if due(self.global_step, train.log_every):
                bar.set_postfix(critic=f"{metrics['critic_loss']:.3f}", q=f"{metrics['q_data']:.2f}")
                logger.log(metrics, step=self.global_step)
            if due(self.global_step, train.eval_every):
                logger.log(self.evaluate(), step=self.global_step)
            if due(self.global_step, train.checkpoint_every):
                self.checkpoint(topk, metrics)
        bar.close()
        final = self.evaluate() if train.eval_at_end else {}
        logger.log(final, step=self.global_step)
        self.checkpoint(topk, {**metrics, **final})
        logger.close()
        print(f"done at step {self.global_step}: {_summary(final)}; checkpoint {self.checkpoint_dir / 'latest'}")
        return {**metrics, **final}


def _summary(metrics: dict) -> str:
    keys = ("test/success_rate", "test/mean_score")
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics) or "no evaluation"


def load_stage_checkpoint(path: str | Path, agent: ConRFT) -> None:
    """Actor, critic and target critic from an RL checkpoint (optimizers are not taken)."""
    ckpt.load_weights(agent.actor, Path(path) / ckpt.MODEL)
    ckpt.load_modules(path, {"critic": agent.critic, "target_critic": agent.target_critic})

