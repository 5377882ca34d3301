"""ConRFT: reinforced fine-tuning of a consistency policy (Chen et al., RSS 2025), in PyTorch.

The actor is a `ConsistencyBCPolicy` (one-step sampling from sigma_max noise); the critic an
ensemble of Q-functions with its own encoder and a Polyak target. One `update(batch)`:

    y        = r + discount * (1 - done) * min_j Qbar_j(s', a'),   a' = pi(s') in one step
    L_td     = mean over members and batch of (Q_j(s, a) - y)^2
    Stage I (Cal-QL, `calql=True`): 10 uniform + 10 pi(s) + 10 pi(s') actions scored at s, each
             floored at the Monte-Carlo return G, with Q(s, a) appended (31 values);
             gap = temp * logsumexp(Q / temp) - temp * ln 31 - Q(s, a);  L_critic = L_td + alpha * gap
    Stage II: L_critic = L_td
    L_actor  = bc_weight * L_bc(a | s) - q_weight * mean_j Q_j(s, pi(s))

`critic_actor_ratio` critic updates per actor update (ConRFT: 2, i.e. one critic-only update, then
one joint update). Targets move by `tau` after every critic step. ConRFT's code (`conrft=code`)
also steps the actor's Adam on critic-only updates with a zero gradient
(`actor_step_every_update`), takes both gradients at the pre-update parameters
(`actor_loss_before_critic_step`), and weighs its one executed action 1 in L_bc
(`bc_executed_weight`). Actions are the executed chunk
(Ta steps of the policy's window, from index To-1), normalized to [-1, 1] and flattened: ConRFT's
setting is Ta = 1. The batch is `rl.transitions.TransitionSampler`'s. Constants: reference
`conrft_octo_cp.md` sections 1.3-1.6 (what the code does where it differs from the paper).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping

import torch
from torch import nn

from policylab.models.critic import CriticEnsemble, stem_key, trunk_key
from policylab.models.ema import polyak_update
from policylab.policies.consistency import ConsistencyBCPolicy


@dataclasses.dataclass(kw_only=True)
class ConRFTConfig:
    """One stage's hyper-parameters: names and types only. Their values, and what each means, are
    the presets' (config/conrft/paper.yaml: `common` + the stage's section; code.yaml and
    anchored.yaml override it)."""

    bc_weight: float
    q_weight: float
    calql: bool
    cql_alpha: float
    cql_n_actions: int
    cql_temp: float
    discount: float
    tau: float
    critic_actor_ratio: int
    actor_lr: float
    critic_lr: float
    image_shift_pad: int
    actor_step_every_update: bool
    actor_loss_before_critic_step: bool
    bc_executed_weight: float | None


class ConRFT(nn.Module):
    """Actor, critic and target critic, their optimizers, and the update.

    The actor's observation encoder is trained by the actor loss only; the critic's by the TD loss.
    """

    def __init__(self, actor: ConsistencyBCPolicy, critic: CriticEnsemble, cfg: ConRFTConfig):
        super().__init__()
        if not isinstance(actor, ConsistencyBCPolicy):
            raise TypeError(f"ConRFT's actor must be a ConsistencyBCPolicy, got {type(actor).__name__}")
        expected = actor.n_action_steps * actor.action_dim
        if critic.action_dim != expected:
            raise ValueError(f"critic.action_dim {critic.action_dim} != Ta * Da = {expected}")
        self.actor, self.critic, self.cfg = actor, critic, cfg
        self.target_critic = copy.deepcopy(critic).requires_grad_(False)
        self.stems_from_trunk: tuple[str, ...] = ()  # the actor's image head reads these keys' trunk features
        self.actor_optimizer = torch.optim.Adam([p for p in actor.parameters() if p.requires_grad], lr=cfg.actor_lr)
        self.critic_optimizer = torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr)
        self.n_updates = 0

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_optimizer, "critic": self.critic_optimizer}

    def executed(self, chunk: torch.Tensor) -> torch.Tensor:
        """(B, T, Da) normalized window -> (B, Ta*Da) the executed actions, from index To-1."""
        return self.actor.action_window(chunk).flatten(1)

    def sample_executed(self, cond: torch.Tensor, n: int = 1) -> torch.Tensor:
        """One-step policy actions: (B, Ta*Da), or (B, n, Ta*Da) for n > 1 draws per state."""
        if n == 1:
            return self.executed(self.actor.sample(cond))
        actions = self.executed(self.actor.sample(cond.repeat_interleave(n, dim=0)))
        return actions.reshape(cond.shape[0], n, -1)

    def prepare(self, batch: Mapping) -> dict:
        """Normalize observations and actions once; the actor's condition at s and s'.

        With "embedding" / "next_embedding" in the batch (a frozen encoder's features, stored with
        the transitions by whoever acted), those are the condition and the actor's observation
        encoder is never run here (ConRFT's Octo path).
        """
        actor = self.actor
        nobs = self.normalize_obs(batch["obs"], batch.get("trunk"), batch.get("stem"))
        nnext = self.normalize_obs(batch["next_obs"], batch.get("next_trunk"), batch.get("next_stem"))
        chunk = actor.normalizer["action"].normalize(batch["action"])
        embedding = None
        if "embedding" in batch:
            embedding = self.cond_from_embedding(batch["embedding"])
            with torch.no_grad():  # an image head's features join the stored ones; it trains in the actor loss only
                next_cond = actor.encode_obs(nnext, embedding=self.cond_from_embedding(batch["next_embedding"]))
        else:
            with torch.no_grad():
                next_cond = actor.encode_obs(nnext)
        # None: encoded in the actor loss, with gradients into the actor's encoder or image head
        cond = embedding if embedding is not None and actor.image_head is None else None
        return {"nobs": nobs, "nnext": nnext, "chunk": chunk, "action": self.executed(chunk), "cond": cond,
                "embedding": embedding, "next_cond": next_cond, "reward": batch["reward"], "discount": batch["discount"],
                "done": batch["done"], "mc_return": batch["mc_return"]}

    def normalize_obs(self, obs: Mapping, trunk: Mapping | None, stem: Mapping | None = None) -> dict:
        """The actor's normalization, plus the critic's cached trunk features `{key: (B, C, h, w)}`
        as `trunk_<key>` and the stem maps of the actor's image head as `stem_<key>` (stored, or the
        trunk's for the keys in `stems_from_trunk`); batches with cached features may carry no
        images (`skip_rgb`)."""
        actor = self.actor
        if all(key in obs for key in actor.rgb_keys):
            nobs = actor.normalize_obs(obs)
        else:
            nobs = {k: actor.normalizer[k].normalize(v) for k, v in obs.items() if k in actor.meta.obs}
        nobs.update({trunk_key(key): value for key, value in (trunk or {}).items()})
        nobs.update({stem_key(key): value for key, value in (stem or {}).items()})
        nobs.update({stem_key(key): trunk[key] for key in self.stems_from_trunk if trunk and key in trunk})
        return nobs

    def cond_from_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        """Stored (B, D) features -> what `actor.encode_obs` returns: (B, D), or tokens (B, n, D/n)."""
        actor = self.actor
        if actor.model.obs_conditioning != "tokens":
            return embedding
        n_tokens = 1 if actor.encodes_window else actor.n_obs_steps
        return embedding.reshape(embedding.shape[0], n_tokens, -1)

    def actor_cond(self, b: Mapping) -> torch.Tensor:
        return b["cond"] if b["cond"] is not None else self.actor.encode_obs(b["nobs"], embedding=b["embedding"])

    def critic_loss(self, b: Mapping, obs: Mapping, next_obs: Mapping) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        with torch.no_grad():
            next_q = self.target_critic(next_obs, self.sample_executed(b["next_cond"]))
            target = td_target(b["reward"], b["discount"], b["done"], next_q)
        features = self.critic.encode(obs)
        q = self.critic.q_from_features(features, b["action"])  # (E, B)
        td = (q - target).pow(2).mean()
        metrics = {"td_loss": td.item(), "q_data": q.mean().item(), "q_target": target.mean().item()}
        if not cfg.calql:
            return td, metrics
        n = cfg.cql_n_actions
        with torch.no_grad():
            cond = self.actor_cond(b)
            batch_size, action_dim = b["action"].shape
            uniform = torch.rand(batch_size, n, action_dim, device=q.device) * 2 - 1
            candidates = torch.cat([uniform, self.sample_executed(cond, n), self.sample_executed(b["next_cond"], n)],
                                   dim=1)
        q_candidates = self.critic.q_from_features(features, candidates)  # (E, B, 3n)
        gap, ood = calql_gap(q, q_candidates, b["mc_return"], cfg.cql_temp)
        loss = td + cfg.cql_alpha * gap
        metrics.update(cql_gap=gap.item(), q_ood=ood.mean().item())
        return loss, metrics

    def actor_loss(self, b: Mapping, obs: Mapping) -> tuple[torch.Tensor, dict]:
        cond = self.actor_cond(b)
        bc = self.actor.bc_loss(b["chunk"], cond, self.bc_step_weights())
        self.critic.requires_grad_(False)  # the Q term moves the actor only
        try:
            q_pi = self.critic(obs, self.sample_executed(cond)).mean(dim=0).mean()
        finally:
            self.critic.requires_grad_(True)
        loss = self.cfg.bc_weight * bc - self.cfg.q_weight * q_pi
        return loss, {"actor_loss": loss.item(), "bc_loss": bc.item(), "q_pi": q_pi.item()}

    def bc_step_weights(self) -> torch.Tensor | None:
        """(T,) weight of each window step's squared error (mean over Da) in L_bc, or None: the plain
        mean over the window, where the Ta executed steps weigh Ta/T together (1/2 for ConRFT's
        T = 2, Ta = 1). ConRFT's actor predicts the executed action alone, so it weighs 1:
        `bc_executed_weight` is the executed steps' total (spread evenly); the others keep 1/T."""
        weight, actor = self.cfg.bc_executed_weight, self.actor
        if weight is None:
            return None
        weights = torch.full((actor.horizon,), 1 / actor.horizon)
        start = actor.n_obs_steps - 1
        weights[start:start + actor.n_action_steps] = weight / actor.n_action_steps
        return weights

    def update(self, batch: Mapping, update_actor: bool = True,
               generator: torch.Generator | None = None) -> dict[str, float]:
        """One critic step (and, with `update_actor`, one actor step) on `batch`; returns metrics.

        With `actor_loss_before_critic_step` the actor's gradient is taken before the critic moves
        (ConRFT's optax update: both gradients at the same parameters, then both steps); its backward
        must run first, since the critic's step changes in place weights that backward reads.
        """
        b = self.prepare(batch)
        obs = augment(b["nobs"], self.critic.encoder.rgb_keys, self.cfg.image_shift_pad, generator)
        next_obs = augment(b["nnext"], self.critic.encoder.rgb_keys, self.cfg.image_shift_pad, generator)
        critic_loss, metrics = self.critic_loss(b, obs, next_obs)
        if not torch.isfinite(critic_loss):
            raise FloatingPointError(f"critic loss is {critic_loss.item()} at update {self.n_updates}: {metrics}")
        early = update_actor and self.cfg.actor_loss_before_critic_step
        actor_metrics = self.actor_backward(b, obs) if early else {}
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()
        polyak_update(self.target_critic, self.critic, self.cfg.tau)
        metrics["critic_loss"] = critic_loss.item()
        if update_actor:
            if not early:
                actor_metrics = self.actor_backward(b, obs)
            self.actor_optimizer.step()
            metrics.update(actor_metrics)
        elif self.cfg.actor_step_every_update:  # ConRFT's optax step on a critic-only update
            self.actor_optimizer.zero_grad(set_to_none=True)
            self.zero_missing_actor_grads()
            self.actor_optimizer.step()
        self.n_updates += 1
        return metrics

    def actor_backward(self, b: Mapping, obs: Mapping) -> dict[str, float]:
        """The actor loss's gradient into the actor's parameters (not yet a step); its metrics."""
        actor_loss, metrics = self.actor_loss(b, obs)
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        if self.cfg.actor_step_every_update:
            self.zero_missing_actor_grads()
        return metrics

    def zero_missing_actor_grads(self) -> None:
        """A zero gradient where there is none, so Adam steps every actor parameter, as optax does
        with jax.grad's zeros: its count rises and its momentum keeps moving the parameter
        (torch's Adam skips a parameter whose grad is None)."""
        for group in self.actor_optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)

    def train_step(self, sample_batch, generator: torch.Generator | None = None) -> dict[str, float]:
        """ConRFT's learner iteration: `critic_actor_ratio - 1` critic-only updates, then a joint one,
        each on a fresh batch from `sample_batch()`."""
        for _ in range(self.cfg.critic_actor_ratio - 1):
            self.update(sample_batch(), update_actor=False, generator=generator)
        return self.update(sample_batch(), update_actor=True, generator=generator)


def td_target(reward: torch.Tensor, discount: torch.Tensor, done: torch.Tensor,
              next_q: torch.Tensor) -> torch.Tensor:
    """(B,) r + discount * (1 - done) * min over the ensemble of next_q (E, B)."""
    return reward + discount * (1 - done) * next_q.min(dim=0).values


def calql_gap(q_data: torch.Tensor, q_candidates: torch.Tensor, mc_return: torch.Tensor,
              temp: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cal-QL's conservative gap, ConRFT's variant.

    q_data (E, B): Q of the stored actions; q_candidates (E, B, N): Q of the sampled actions,
    each floored at the Monte-Carlo return mc_return (B,). With the N + 1 values
    v = [max(q_candidates, G), q_data]:  ood = temp * logsumexp(v / temp) - temp * ln(N + 1)
    (a soft maximum that equals the mean when all are equal); returns (mean(ood - q_data), ood (E, B)).
    """
    calibrated = torch.maximum(q_candidates, mc_return.reshape(1, -1, 1))
    values = torch.cat([calibrated, q_data.unsqueeze(-1)], dim=-1)
    ood = temp * torch.logsumexp(values / temp, dim=-1) - temp * math.log(values.shape[-1])
    return (ood - q_data).mean(), ood


def augment(obs: Mapping[str, torch.Tensor], rgb_keys, pad: int,
            generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Random shift of every rgb key (B, To, C, H, W): edge-pad by `pad`, crop back at a random
    offset per sample (the same for all To frames of a sample). Low-dim keys pass through, and so
    do cached trunk features (their shift is the critic encoder's) when the images are absent."""
    out = dict(obs)
    if pad <= 0:
        return out
    for key in rgb_keys:
        if key not in obs or trunk_key(key) in obs:
            continue
        images = obs[key]
        b, t, c, h, w = images.shape
        padded = nn.functional.pad(images.reshape(b, t * c, h, w), (pad,) * 4, mode="replicate")
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(images.device)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(images.device)
        rows = (dy.reshape(b, 1) + torch.arange(h, device=images.device)).reshape(b, 1, h, 1)
        cols = (dx.reshape(b, 1) + torch.arange(w, device=images.device)).reshape(b, 1, 1, w)
        batch_idx = torch.arange(b, device=images.device).reshape(b, 1, 1, 1)
        channel_idx = torch.arange(t * c, device=images.device).reshape(1, -1, 1, 1)
        out[key] = padded[batch_idx, channel_idx, rows, cols].reshape(b, t, c, h, w)
    return out
