"""Diffusion Policy (Chi et al., RSS 2023): denoise an action chunk conditioned on observations.

One class for low-dim and image observations (the `shape_meta` decides) and for both backbones:
a `ConditionalUnet1D` conditioned on one flat vector (DP-C) or a `TransformerForDiffusion` with
one condition token per observation step (DP-T). Training adds DDPM noise at a random step and
regresses the noise (`epsilon`) or the clean actions (`sample`); inference runs DDPM or DDIM for
any number of steps from the same trained network.

    obs {key: (B, To, ...)} --normalize--> obs_encoder (B*To, Do) --> cond
    noise (B, T, Da) --denoise x num_inference_steps--> action_pred (B, T, Da) --> action (B, Ta, Da)
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from policylab.models.encoders.multi_image import MultiImageObsEncoder
from policylab.policies.base import BasePolicy

INFERENCE_SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}


class DiffusionPolicy(BasePolicy):
    """Args:
        model: a partial of the denoising network; the policy fills in the dims it derives
            (ConditionalUnet1D: input_dim, global_cond_dim; TransformerForDiffusion: input/output
            dims, horizon, n_obs_steps, cond_dim).
        noise_scheduler: the training `DDPMScheduler` (100 steps, squaredcos_cap_v2 in DP).
        obs_encoder: a partial taking `shape_meta`; default concatenates the low-dim keys.
        inference_scheduler: "ddpm" or "ddim", built from the training scheduler's config.
    """

    def __init__(self, shape_meta: Mapping, horizon: int, n_obs_steps: int, n_action_steps: int,
                 model: Callable, noise_scheduler: DDPMScheduler, obs_encoder: Callable | None = None,
                 inference_scheduler: str = "ddpm", num_inference_steps: int | None = None):
        super().__init__(shape_meta, horizon, n_obs_steps, n_action_steps)
        self.obs_encoder = (obs_encoder or MultiImageObsEncoder)(shape_meta=self.shape_meta)
        # An encoder that reads the whole window (Octo) gives one feature vector per sample.
        self.encodes_window = getattr(self.obs_encoder, "consumes_time_window", False)
        obs_dim = self.obs_encoder.output_dim()
        n_cond = 1 if self.encodes_window else n_obs_steps
        self.model = _build_backbone(model, self.action_dim, horizon, n_cond, obs_dim)
        self.noise_scheduler = noise_scheduler
        if inference_scheduler not in INFERENCE_SCHEDULERS:
            raise ValueError(f"inference_scheduler must be one of {sorted(INFERENCE_SCHEDULERS)}, "
                             f"got {inference_scheduler!r}")
        self.inference_scheduler = INFERENCE_SCHEDULERS[inference_scheduler].from_config(noise_scheduler.config)
        self.num_inference_steps = num_inference_steps or noise_scheduler.config.num_train_timesteps

    # ------------------------------------------------------------------ conditioning
    def encode_obs(self, nobs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Normalized obs {key: (B, To', ...)} -> the backbone's condition.

        (B, To*Do) for a global-condition backbone, (B, To, Do) for a token backbone.
        """
        window = {k: v[:, : self.n_obs_steps] for k, v in nobs.items()}
        batch_size = next(iter(window.values())).shape[0]
        if self.encodes_window:
            features = self.obs_encoder(window).reshape(batch_size, 1, -1)
        else:
            flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in window.items()}
            features = self.obs_encoder(flat).reshape(batch_size, self.n_obs_steps, -1)
        if self.model.obs_conditioning == "tokens":
            return features
        return features.reshape(batch_size, -1)

    def denoise(self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if self.model.obs_conditioning == "tokens":
            return self.model(sample, timestep, cond=cond)
        return self.model(sample, timestep, global_cond=cond)

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: Mapping) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: {"obs": {key: (B, To, ...)}, "action": (B, T, Da)} -> (MSE loss, metrics)."""
        cond = self.encode_obs(self.normalize_obs(batch["obs"]))
        trajectory = self.normalizer["action"].normalize(batch["action"])
        noise = torch.randn_like(trajectory)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps,
                                  (trajectory.shape[0],), device=trajectory.device)
        noisy = self.noise_scheduler.add_noise(trajectory, noise, timesteps)
        pred = self.denoise(noisy, timesteps, cond)
        target = self._target(trajectory, noise)
        loss = F.mse_loss(pred, target)
        return loss, {"loss": loss.item()}

    def _target(self, trajectory: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "sample":
            return trajectory
        raise ValueError(f"unsupported prediction_type {prediction_type!r}; use 'epsilon' or 'sample'")

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_action(self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> dict:
        """obs {key: (B, To, ...)} -> {"action": (B, Ta, Da), "action_pred": (B, T, Da)}."""
        cond = self.encode_obs(self.normalize_obs(obs))
        batch_size = cond.shape[0]
        sample = torch.randn((batch_size, self.horizon, self.action_dim), generator=generator,
                             device=self.device, dtype=self.dtype)
        scheduler = self.inference_scheduler
        scheduler.set_timesteps(self.num_inference_steps, device=self.device)
        for t in scheduler.timesteps:
            model_output = self.denoise(sample, t.expand(batch_size), cond)
            sample = scheduler.step(model_output, t, sample, generator=generator).prev_sample
        action_pred = self.normalizer["action"].unnormalize(sample)
        return {"action": self.action_window(action_pred), "action_pred": action_pred}

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
