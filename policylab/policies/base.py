"""The policy contract every method honours, and rebuilding any policy from a checkpoint.

    predict_action(obs: {key: (B, To, ...)}, generator=None) -> {"action": (B, Ta, Da), "action_pred": (B, T, Da)}
    compute_loss(batch)                      -> (loss, {name: float})

`generator` seeds the sampling noise: one `torch.Generator` for the batch, or a list of B of them,
row b's noise drawn from generator b alone (the env runner gives one per episode, seeded from the
episode's seed, so an episode's noise depends neither on the batch it is in nor on earlier runs).

Policies are stateless over the observation window: history and action chunking belong to
wrappers (`MultiStepWrapper`) or to `RealEnv`. The normalizer is a submodule, so it is saved with
the weights; `from_checkpoint` needs the checkpoint directory and nothing else.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from policylab.common.shape_meta import ShapeMeta
from policylab.data.normalizer import LinearNormalizer
from policylab.models.encoders.multi_image import MultiImageObsEncoder
from policylab.policies.loading import load_policy

Generators = torch.Generator | Sequence[torch.Generator] | None  # see the module docstring


class BasePolicy(nn.Module, abc.ABC):
    """Shapes: B batch, To = n_obs_steps, Ta = n_action_steps, T = horizon, Da action dim."""

    def __init__(self, shape_meta: ShapeMeta | Mapping, horizon: int, n_obs_steps: int, n_action_steps: int):
        super().__init__()
        if not 1 <= n_action_steps <= horizon - n_obs_steps + 1:
            raise ValueError(
                f"n_action_steps (Ta={n_action_steps}) must be in [1, horizon - n_obs_steps + 1 = "
                f"{horizon - n_obs_steps + 1}]: actions start at index To-1 of the T={horizon} predicted")
        self.meta = ShapeMeta.parse(shape_meta)
        self.shape_meta = self.meta.to_dict()  # the plain form, e.g. for the policy server's schema
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.action_dim = self.meta.action_dim
        self.obs_keys = list(self.meta.obs)
        self.rgb_keys = self.meta.rgb_keys
        self.normalizer = LinearNormalizer()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def set_normalizer(self, normalizer: LinearNormalizer) -> None:
        self.normalizer.load_state_dict(normalizer.state_dict())

    def normalize_obs(self, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Low-dim keys through the normalizer; rgb keys stay in [0, 1] for their encoder."""
        self.check_obs(obs)
        return {k: (v if k in self.rgb_keys else self.normalizer[k].normalize(v)) for k, v in obs.items()
                if k in self.meta.obs}

    def check_obs(self, obs: Mapping[str, torch.Tensor]) -> None:
        """KeyError or ValueError unless obs is `{key: (B, To, *shape)}` (`ShapeMeta.check_obs`)."""
        self.meta.check_obs(obs, self.n_obs_steps)

    def action_window(self, action_pred: torch.Tensor) -> torch.Tensor:
        """(B, T, Da) -> the Ta executed actions (B, Ta, Da), starting at index To-1."""
        start = self.n_obs_steps - 1
        return action_pred[:, start:start + self.n_action_steps]

    def get_optim_groups(self, weight_decay: float, encoder_weight_decay: float | None = None) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "weight_decay": weight_decay}]

    def forward(self, batch: Mapping) -> tuple[torch.Tensor, dict[str, float]]:
        """`compute_loss`, reached through `forward` so DistributedDataParallel syncs gradients."""
        return self.compute_loss(batch)

    @abc.abstractmethod
    def predict_action(self, obs: Mapping[str, torch.Tensor], generator: Generators = None) -> dict:
        ...

    @abc.abstractmethod
    def compute_loss(self, batch: Mapping) -> tuple[torch.Tensor, dict[str, float]]:
        ...

    def on_train_start(self, source: BasePolicy | None = None) -> None:
        """Called by the workspace once the normalizer is set, before the first step (and before
        a resumed run loads its checkpoint). `source`: an already started policy of the same
        config (the live one, when this is its EMA copy): take what it prepared instead of
        preparing it again."""

    def set_total_steps(self, total_steps: int) -> None:
        """Called by the workspace before training with the number of optimizer steps the run will
        take, for schedules that span the run (consistency training's growing grid)."""

    def on_optimizer_step(self) -> None:
        """Called by the workspace after each optimizer step (not per micro-batch): per-step state
        such as target networks is updated here, never inside `compute_loss`."""

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True) -> BasePolicy:
        """Rebuild the policy from a checkpoint directory alone (its config.yaml and weights)."""
        return load_policy(path, device=device, use_ema=use_ema)


class DenoisingPolicy(BasePolicy):
    """A policy that denoises action chunks `(B, T, Da)` with a backbone conditioned on encoded
    observations: the shared machinery of diffusion and consistency policies.

    model: a partial of the backbone; the policy fills in the dims it derives (ConditionalUnet1D:
        input_dim, global_cond_dim; TransformerForDiffusion: input/output dims, horizon,
        n_obs_steps, cond_dim).
    obs_encoder: a partial taking `shape_meta`; default concatenates the low-dim keys.
    image_head: a partial taking `obs_encoder` and `shape_meta` (`policies.image_head.StemImageHead`):
        trained features of the frozen encoder's camera stems, appended to the condition (the RL
        stages' actor; needs an encoder that reads the whole window and a global-condition backbone).
    """

    def __init__(self, shape_meta: Mapping, horizon: int, n_obs_steps: int, n_action_steps: int,
                 model: Callable, obs_encoder: Callable | None = None, image_head: Callable | None = None):
        super().__init__(shape_meta, horizon, n_obs_steps, n_action_steps)
        self.obs_encoder = (obs_encoder or MultiImageObsEncoder)(shape_meta=self.meta)
        # An encoder that reads the whole window (Octo) gives one feature vector per sample.
        self.encodes_window = getattr(self.obs_encoder, "consumes_time_window", False)
        obs_dim = self.obs_encoder.output_dim()
        n_cond = 1 if self.encodes_window else n_obs_steps
        self.embedding_dim = obs_dim * n_cond  # the encoder's part of the condition (what RL stores)
        self.image_head = None
        if image_head is not None:
            if not self.encodes_window:
                raise ValueError("policy.image_head reads an Octo encoder's stems: it needs policy/obs_encoder=octo_*")
            self.image_head = image_head(obs_encoder=self.obs_encoder, shape_meta=self.meta)
            obs_dim += self.image_head.output_dim()
        self.model = _build_backbone(model, self.action_dim, horizon, n_cond, obs_dim)
        if self.image_head is not None and self.model.obs_conditioning != "global":
            raise ValueError("policy.image_head needs a global-condition backbone (its features join one vector)")

    def encode_obs(self, nobs: Mapping[str, torch.Tensor], embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized obs {key: (B, To', ...)} -> the backbone's condition.

        (B, To*Do) for a global-condition backbone, (B, To, Do) for a token backbone. `embedding`:
        the observation encoder's part, already computed (a frozen encoder's, stored); with an
        image head its features are appended (`trunk_<key>` maps from `nobs` when present).
        """
        if embedding is None:
            embedding = self.encode_window(nobs)
        if self.image_head is None:
            return embedding
        return torch.cat([embedding, self.image_head(nobs, last=self.n_obs_steps - 1)], dim=-1)

    def stored_embedding(self, cond: torch.Tensor) -> torch.Tensor:
        """`encode_obs`'s output -> the observation encoder's part of it, `(B, embedding_dim)`."""
        return cond.reshape(cond.shape[0], -1)[:, :self.embedding_dim]

    def encode_window(self, nobs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The observation encoder's part of `encode_obs` (all of it without an image head)."""
        window = {k: v[:, : self.n_obs_steps] for k, v in nobs.items() if k in self.meta.obs}
        batch_size = next(iter(window.values())).shape[0]
        if self.encodes_window:
            features = self.obs_encoder(window).reshape(batch_size, 1, -1)
        else:
            flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in window.items()}
            features = self.obs_encoder(flat).reshape(batch_size, self.n_obs_steps, -1)
        if self.model.obs_conditioning == "tokens":
            return features
        return features.reshape(batch_size, -1)

    @abc.abstractmethod
    def sample(self, cond: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        """The encoded observation `cond` -> normalized action chunks (B, T, Da)."""

    @torch.no_grad()
    def predict_action(self, obs: Mapping[str, torch.Tensor], generator: Generators = None) -> dict:
        """obs {key: (B, To, ...)} -> {"action": (B, Ta, Da), "action_pred": (B, T, Da)}."""
        return self.predict_from_cond(self.encode_obs(self.normalize_obs(obs)), generator)

    @torch.no_grad()
    def predict_from_cond(self, cond: torch.Tensor, generator: Generators = None) -> dict:
        """`predict_action` from `encode_obs`'s output: a caller that keeps the features too (the RL
        actor storing a frozen encoder's) encodes each observation once."""
        action_pred = self.normalizer["action"].unnormalize(self.sample(cond, generator))
        return {"action": self.action_window(action_pred), "action_pred": action_pred}

    def denoise(self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor,
                model: nn.Module | None = None) -> torch.Tensor:
        """The backbone (or `model`, e.g. a target copy) on `sample (B, T, Da)` at `timestep`."""
        model = self.model if model is None else model
        if model.obs_conditioning == "tokens":
            return model(sample, timestep, cond=cond)
        return model(sample, timestep, global_cond=cond)

    def get_optim_groups(self, weight_decay: float, encoder_weight_decay: float | None = None) -> list[dict]:
        """The backbone's own groups when it defines them (DP-T), plus the encoder's parameters."""
        if hasattr(self.model, "get_optim_groups"):
            groups = self.model.get_optim_groups(weight_decay)
        else:
            groups = [{"params": list(self.model.parameters()), "weight_decay": weight_decay}]
        encoder_params = [p for p in self.obs_encoder.parameters() if p.requires_grad]
        if encoder_params:
            wd = weight_decay if encoder_weight_decay is None else encoder_weight_decay
            groups.append({"params": encoder_params, "weight_decay": wd})
        return groups


def _build_backbone(factory: Callable, action_dim: int, horizon: int, n_cond: int, obs_dim: int):
    """Instantiate the backbone partial with the dims this policy derives for it."""
    network_cls = getattr(factory, "func", factory)
    kind = getattr(network_cls, "obs_conditioning", None)
    if kind == "tokens":
        return factory(input_dim=action_dim, output_dim=action_dim, horizon=horizon,
                       n_obs_steps=n_cond, cond_dim=obs_dim)
    if kind == "global":
        return factory(input_dim=action_dim, global_cond_dim=obs_dim * n_cond)
    raise TypeError(f"{network_cls} declares no obs_conditioning ('global' or 'tokens')")

