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

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from policylab.policies.base import DenoisingPolicy, Generators

INFERENCE_SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}


class DiffusionPolicy(DenoisingPolicy):
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
        super().__init__(shape_meta, horizon, n_obs_steps, n_action_steps, model, obs_encoder)
        self.noise_scheduler = noise_scheduler
        if inference_scheduler not in INFERENCE_SCHEDULERS:
            raise ValueError(f"inference_scheduler must be one of {sorted(INFERENCE_SCHEDULERS)}, "
                             f"got {inference_scheduler!r}")
        self.inference_scheduler = INFERENCE_SCHEDULERS[inference_scheduler].from_config(noise_scheduler.config)
        self.num_inference_steps = num_inference_steps or noise_scheduler.config.num_train_timesteps

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

    def sample(self, cond: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        """Normalized action chunks (B, T, Da): `num_inference_steps` of the inference scheduler."""
        batch_size = cond.shape[0]
        sample = randn_tensor((batch_size, self.horizon, self.action_dim), generator=generator,
                              device=self.device, dtype=self.dtype)
        scheduler = self.inference_scheduler
        scheduler.set_timesteps(self.num_inference_steps, device=self.device)
        for t in scheduler.timesteps:
            model_output = self.denoise(sample, t.expand(batch_size), cond)
            sample = scheduler.step(model_output, t, sample, generator=generator).prev_sample
        return sample
