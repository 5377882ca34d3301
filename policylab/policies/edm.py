"""An EDM (Karras et al. 2022) diffusion policy: the teacher consistency trajectory distillation
starts from (Prasad et al.'s Consistency Policy uses one).

Continuous noise levels sigma instead of DDPM's 100 discrete steps. The network is preconditioned,

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))
    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = 250 ln sigma   (sd = sigma_data)

and trained to denoise, E ||D(a + sigma z, sigma) - a||^2 weighted by
lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 (so lambda c_out^2 = 1), ln sigma ~ N(p_mean, p_std^2).
Inference integrates the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma over a Karras
grid from sigma_max to sigma_min (rho 7), then to 0, with Euler or Heun steps.

c_noise is 250 ln sigma (EDM's 1000 * ln(sigma) / 4), the time input every Karras-parameterised
policy here uses, so a consistency student can start from the teacher's weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from policylab.policies.base import DenoisingPolicy, Generators

SAMPLERS = ("euler", "heun")


def edm_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """(n,) noise levels from sigma_max down to sigma_min (Karras et al. eq. 5); n >= 2."""
    if n < 2:
        raise ValueError(f"a Karras grid needs at least 2 levels, got {n}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((hi + ramp * (lo - hi)) ** rho).float()


class EDMDiffusionPolicy(DenoisingPolicy):
    """Args beyond `DenoisingPolicy`'s:
        sigma_min, sigma_max, sigma_data, rho: the EDM noise range and grid (0.002, 80, 0.5, 7).
        p_mean, p_std: log-normal training noise levels (EDM: -1.2, 1.2).
        sampler: "heun" (2 evaluations per step, one for the last) or "euler" (1 per step).
        num_inference_steps: levels of the sampling grid; Heun costs 2n - 1 evaluations, Euler n.
        clip_denoised: clip D to [-1, 1] (the normalized action range) while sampling, as DP's
            DDIM clips its x0 estimate.
    """

    def __init__(self, shape_meta: Mapping, horizon: int, n_obs_steps: int, n_action_steps: int,
                 model: Callable, obs_encoder: Callable | None = None, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, sigma_data: float = 0.5, rho: float = 7.0, p_mean: float = -1.2,
                 p_std: float = 1.2, sampler: str = "heun", num_inference_steps: int = 9,
                 clip_denoised: bool = True):
        super().__init__(shape_meta, horizon, n_obs_steps, n_action_steps, model, obs_encoder)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.sigma_data, self.rho = sigma_min, sigma_max, sigma_data, rho
        self.p_mean, self.p_std = p_mean, p_std
        self.sampler, self.num_inference_steps, self.clip_denoised = sampler, num_inference_steps, clip_denoised

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """c_skip, c_out, c_in for `sigma (B,)`, each (B, 1, 1)."""
        sd2, s = self.sigma_data ** 2, sigma.reshape(-1, 1, 1)
        c_skip = sd2 / (s ** 2 + sd2)
        c_out = s * self.sigma_data / torch.sqrt(s ** 2 + sd2)
        c_in = 1 / torch.sqrt(s ** 2 + sd2)
        return c_skip, c_out, c_in

    @staticmethod
    def c_noise(sigma: torch.Tensor) -> torch.Tensor:
        return 250.0 * torch.log(sigma)

    def denoiser(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor,
                 model: nn.Module | None = None) -> torch.Tensor:
        """D(x (B, T, Da), sigma (B,) | cond) -> the clean-chunk estimate (B, T, Da)."""
        c_skip, c_out, c_in = self.scalings(sigma)
        return c_skip * x + c_out * self.denoise(c_in * x, self.c_noise(sigma), cond, model)

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2

    def draw_sigmas(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.exp(self.p_mean + self.p_std * torch.randn(n, device=device))

    def dsm_loss(self, action: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The weighted denoising loss on normalized `action (B, T, Da)`."""
        sigma = self.draw_sigmas(action.shape[0], action.device)
        noisy = action + sigma.reshape(-1, 1, 1) * torch.randn_like(action)
        err = (self.denoiser(noisy, sigma, cond) - action).pow(2).flatten(1).mean(1)
        return (self.loss_weight(sigma) * err).mean()

    def compute_loss(self, batch: Mapping) -> tuple[torch.Tensor, dict[str, float]]:
        cond = self.encode_obs(self.normalize_obs(batch["obs"]))
        loss = self.dsm_loss(self.normalizer["action"].normalize(batch["action"]), cond)
        return loss, {"loss": loss.item()}

    def clean_estimate(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        d = self.denoiser(x, sigma, cond)
        return d.clamp(-1, 1) if self.clip_denoised else d

    def ode_step(self, x: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, cond: torch.Tensor,
                 heun: bool | None = None) -> torch.Tensor:
        """One solver step of the probability-flow ODE from `sigma (B,)` to `sigma_next (B,)`
        (Heun's correction is skipped where sigma_next is 0, as in EDM)."""
        heun = self.sampler == "heun" if heun is None else heun
        s, s_next = sigma.reshape(-1, 1, 1), sigma_next.reshape(-1, 1, 1)
        slope = (x - self.clean_estimate(x, sigma, cond)) / s
        x_next = x + (s_next - s) * slope
        if not heun:
            return x_next
        positive = sigma_next > 0
        if not positive.any():
            return x_next
        safe = torch.where(positive, sigma_next, torch.ones_like(sigma_next))
        slope_next = (x_next - self.clean_estimate(x_next, safe, cond)) / safe.reshape(-1, 1, 1)
        corrected = x + (s_next - s) * (slope + slope_next) / 2
        return torch.where(positive.reshape(-1, 1, 1), corrected, x_next)

    def sample(self, cond: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        """Normalized action chunks (B, T, Da) from sigma_max noise over `num_inference_steps` levels."""
        batch_size = cond.shape[0]
        x = randn_tensor((batch_size, self.horizon, self.action_dim), generator=generator, device=cond.device,
                        dtype=cond.dtype) * self.sigma_max
        return self.solve(x, cond)

    def solve(self, x: torch.Tensor, cond: torch.Tensor, to_zero: bool = True) -> torch.Tensor:
        """The sampler's chunks from `x (B, T, Da)` at sigma_max: the deterministic map that
        `sample` applies to its noise. `to_zero=False` stops at sigma_min, before the last step
        (where a CTM student's one-step jump lands)."""
        batch_size = x.shape[0]
        sigmas = edm_sigmas(self.num_inference_steps, self.sigma_min, self.sigma_max, self.rho).to(x.device)
        if to_zero:
            sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
        for s, s_next in itertools.pairwise(sigmas):
            x = self.ode_step(x, s.expand(batch_size), s_next.expand(batch_size), cond)
        return x.clamp(-1, 1) if self.clip_denoised else x

    def num_function_evals(self) -> int:
        n = self.num_inference_steps
        return 2 * n - 1 if self.sampler == "heun" else n
