"""What both ConRFT stages share: the actor (from `policy.init` or `policy`), the critic, the
agent, the demos, evaluation through the task's env runner and the checkpoint contents.

`OfflineRLWorkspace` (Stage I, rl_offline.py) and `OnlineRLWorkspace` (Stage II, rl_online.py)
subclass `RLWorkspace` and supply their data (`build`) and one learner iteration (`train_step`);
the loop, cadences, budget and console are `BaseWorkspace`'s. The algorithm is one class with a
`train_step(sample, generator) -> metrics` and its config (`rl.conrft.ConRFT`, `ConRFTConfig`,
the `conrft` preset's `common` + `<stage>` sections).

A step is one learner iteration. Checkpoints hold the actor (`model.safetensors`), `critic` and
`target_critic`, both optimizers, the sampler's generator and every RNG state: `training.resume`
continues exactly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

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
from policylab.models.critic import stem_key
from policylab.policies.image_head import widen_state_dict
from policylab.policies.loading import load_policy
from policylab.rl.conrft import ConRFT, ConRFTConfig
from policylab.rl.embeddings import (
    EMBEDDING_KEY,
    episode_embeddings,
    has_frozen_encoder,
)
from policylab.rl.transitions import TransitionSpec
from policylab.rl.trunk_features import (
    episode_feature_maps,
    episode_trunk_features,
    trunk_identity,
)
from policylab.workspaces.base import BaseWorkspace, StepTrainingConfig


@dataclasses.dataclass
class RLTrainingConfig(StepTrainingConfig):
    eval_at_end: bool


@dataclasses.dataclass
class RewardConfig:
    gamma: float
    scale: float
    bias: float
    reward_neg: float | None
    is_sparse: bool


WORKSPACE_POLICY_KEYS = ("init", "freeze_encoder")  # under `policy`, read by the RL workspaces only


def policy_build_config(policy_cfg) -> dict:
    """The `policy` config without the RL workspace's own keys: what builds the actor."""
    cfg = OmegaConf.to_container(policy_cfg, resolve=True)
    return {k: v for k, v in cfg.items() if k not in WORKSPACE_POLICY_KEYS}


def stems_shared_with_critic(actor, critic, trunk_keys) -> tuple[str, ...]:
    """The rgb keys whose stem maps an actor's image head can take from the critic's cached trunk
    features (the same maps: `critic_trunk=sft` from the same checkpoint, checked on a random probe
    frame); the learner stores its own `stem_<key>` maps for the others."""
    head = getattr(actor, "image_head", None)
    if head is None:
        return ()
    shared = []
    for key in head.keys:
        if key not in trunk_keys:
            continue
        probe = torch.rand(1, 3, *ShapeMeta.parse(actor.shape_meta).obs[key].shape[1:],
                           generator=torch.Generator().manual_seed(0))
        ours, critics = head.maps(key, probe), critic.encoder.trunk_features(key, probe)
        if ours.shape == critics.shape and torch.allclose(ours, critics, atol=1e-4):
            shared.append(key)
    return tuple(shared)


class RLWorkspace(BaseWorkspace):
    """An actor-critic agent trained one learner iteration per step; `stage` names the preset section."""

    stage = ""

    def __init__(self, cfg: DictConfig, output_dir: str | Path):
        super().__init__(cfg, output_dir)
        actor = self.build_actor()
        # A frozen observation encoder (Octo, as ConRFT) runs where transitions are recorded, never
        # in the learner: its features are stored as `embedding` with every transition.
        self.embed = has_frozen_encoder(actor)
        critic = self.build_critic()(
            shape_meta=OmegaConf.to_container(cfg.task.shape_meta, resolve=True), n_obs_steps=actor.n_obs_steps,
            action_dim=actor.n_action_steps * actor.action_dim)
        # A frozen critic image trunk runs once per frame, where episodes reach the stores, never in
        # an update: its features are stored as `trunk_<key>` (rl/trunk_features.py).
        self.trunk_keys = tuple(getattr(critic.encoder, "cached_keys", ()))
        # An actor's image head reads its frozen stems' maps: the critic's, when its trunk is those
        # stems, else stored beside them as `stem_<key>` (policies/image_head.py).
        shared = stems_shared_with_critic(actor, critic, self.trunk_keys)
        self.stem_keys = tuple(k for k in (actor.image_head.keys if actor.image_head else ()) if k not in shared)
        self.agent = self.build_agent(actor, critic).to(self.device)
        self.agent.stems_from_trunk = shared
        self.optimizers = self.agent.optimizers
        self.init_critic()
        self.generator = torch.Generator().manual_seed(self.c["training"].seed)
        self.env_runner = None

    def build_agent(self, actor, critic) -> ConRFT:
        """The algorithm: an `nn.Module` holding `actor`, `critic`, `target_critic`, its `optimizers`
        and `n_updates`, with `train_step(sample, generator) -> metrics`; here ConRFT with this stage's
        config (the `conrft` preset's `common` + `<stage>` sections). Another algorithm is that one
        class and its config, built here."""
        conrft = self.cfg.conrft
        stage_cfg = {**OmegaConf.to_container(conrft.common), **OmegaConf.to_container(conrft[self.stage])}
        return ConRFT(actor, critic, ConRFTConfig(**stage_cfg))

    @property
    def actor(self):
        return self.agent.actor

    def build_actor(self):
        """The actor from `policy.init` (its config replaces `policy`) or from `policy` itself;
        `policy.freeze_encoder` freezes its observation encoder (e.g. an Octo trained in SFT)."""
        init = self.init_path = self.cfg.policy.get("init")
        freeze = bool(self.cfg.policy.get("freeze_encoder", False))
        head = self.cfg.policy.get("image_head")  # read before an init checkpoint's config replaces `policy`
        if init is None:
            actor = hydra.utils.instantiate(policy_build_config(self.cfg.policy))
            actor.set_normalizer(hydra.utils.instantiate(self.cfg.task.dataset).get_normalizer())
        else:
            init_cfg = ckpt.load_config(init)
            actor = load_policy(init, use_ema=True)  # allow-listed targets only
            with open_dict(self.cfg):  # the saved config rebuilds the actor; `init_from` records where it began
                self.cfg.policy = init_cfg.policy
                self.cfg.init_from = str(init)
            if head is not None and getattr(actor, "image_head", None) is None:
                actor = self.add_image_head(actor, head, freeze)
        if freeze:
            encoder_cfg = self.cfg.policy.get("obs_encoder")
            if encoder_cfg is None or "frozen" not in encoder_cfg:
                raise ValueError("policy.freeze_encoder=true needs an observation encoder with a `frozen` option "
                                 f"(e.g. policy/obs_encoder=octo_*), got {encoder_cfg and encoder_cfg.get('_target_')}")
            with open_dict(self.cfg):  # saved, and read by the ray actors
                self.cfg.policy.obs_encoder.frozen = True
            actor.obs_encoder.frozen = True
        if getattr(actor, "bc_weight", 1.0) != 1.0:  # the policy's weight scales its supervised loss only
            self.say(f"policy.bc_weight={actor.bc_weight} has no effect here: the RL stages weigh BC with "
                     f"conrft.{self.stage}.bc_weight ({self.cfg.conrft[self.stage].bc_weight})")
        actor.train().requires_grad_(True)
        if has_frozen_encoder(actor):
            actor.obs_encoder.requires_grad_(False)
            actor.obs_encoder.train()  # a frozen encoder keeps itself in eval mode
        return actor

    def add_image_head(self, actor, head_cfg, freeze: bool):
        """The init checkpoint's actor (an SFT policy) plus `policy.image_head`, computing exactly
        what it did: the new condition inputs start at zero weight (`widen_state_dict`)."""
        if not (freeze or has_frozen_encoder(actor)):
            raise ValueError("policy.image_head reads the frozen encoder's stems through cached features: "
                             "it needs policy.freeze_encoder=true")
        with open_dict(self.cfg):  # saved with the run: the ray actors, eval.py and a resume rebuild it
            self.cfg.policy.image_head = head_cfg
        widened = instantiate_trusted(policy_build_config(self.cfg.policy), "policy")
        widened.load_state_dict(widen_state_dict(widened, actor.state_dict()))
        widened.set_normalizer(actor.normalizer)
        self.say(f"actor: {type(widened.image_head).__name__} on the frozen encoder's camera stems "
                 f"(+{widened.image_head.output_dim()} condition features, zero-weighted at the start)")
        return widened

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
            self.say(f"critic: using {init}'s critic config (this run's `critic` differs and is ignored)")
        with open_dict(self.cfg):
            self.cfg.critic = init_critic
        return instantiate_trusted(self.cfg.critic, "critic")

    def init_critic(self) -> None:
        """The critic's starting weights (Stage I: from scratch)."""

    def checkpoint_modules(self) -> dict:
        return {"policy": self.actor, "critic": self.agent.critic, "target_critic": self.agent.target_critic}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "generator": self.generator.get_state(), "n_updates": self.agent.n_updates}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])
        self.agent.n_updates = int(state["n_updates"])

    def transition_spec(self) -> TransitionSpec:
        """The learner's transitions; with a frozen actor encoder and every camera's critic trunk
        cached, batches skip the images (nothing in an update reads them)."""
        r = self.c["reward"]
        rgb = set(ShapeMeta.parse(self.cfg.task.shape_meta).rgb_keys)
        return TransitionSpec(self.actor.horizon, self.actor.n_obs_steps, self.actor.n_action_steps, r.gamma,
                              reward_scale=r.scale, reward_bias=r.bias, reward_neg=r.reward_neg,
                              is_sparse_reward=r.is_sparse, embedding_key=EMBEDDING_KEY if self.embed else None,
                              trunk_keys=self.trunk_keys, skip_rgb=self.embed and set(self.trunk_keys) == rgb,
                              trunk_identity=trunk_identity(self.agent.critic.encoder) if self.trunk_keys else "",
                              stem_keys=self.stem_keys)

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
        desc = " and ".join(["demo embeddings"] * self.embed + ["demo trunk features"] * bool(self.trunk_keys)
                            + ["demo stem maps"] * bool(self.stem_keys))
        for i in tqdm(chosen, desc=desc, disable=not desc):
            episode = store.get_episode(int(i), copy=True)
            if self.embed:
                episode[EMBEDDING_KEY] = episode_embeddings(self.actor, episode, shape_meta)
            demos.add_episode(self.with_trunk_features(episode))
        return demos

    def with_trunk_features(self, episode: dict) -> dict:
        """The episode plus its frames' critic trunk features (`trunk_<key>`), if any are cached, and
        the stem maps of the actor's image head it does not share with them (`stem_<key>`)."""
        if not self.trunk_keys and not self.stem_keys:
            return episode
        meta = ShapeMeta.parse(self.cfg.task.shape_meta)
        out = {**episode, **episode_trunk_features(self.agent.critic.encoder, episode, meta)}
        if self.stem_keys:
            out.update(episode_feature_maps(self.actor.image_head.maps, self.stem_keys, stem_key, episode, meta,
                                            self.device))
        return out

    def eval_parts(self) -> dict:
        t = self.c["training"]
        return {"eval": (t.eval_every, t.eval_at_end, self.evaluate)}

    def evaluate(self) -> dict[str, Any]:
        """The task's env runner on the actor; the global RNGs are restored after it."""
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

    def line_items(self, metrics: dict) -> list[str]:
        names = {"critic_loss": "critic", "actor_loss": "actor", "q_data": "q"}
        return [f"{name} {metrics[key]:.3f}" for key, name in names.items() if key in metrics] + \
            super().line_items(metrics)
