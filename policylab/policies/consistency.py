"""Consistency policies: an action chunk in one network evaluation (or a short chain).

A consistency function maps any point of the noising trajectory of an action chunk straight to
its clean end, f(x_sigma, sigma | obs) ~ a, so sampling is one call from pure noise. Three ways to
learn it, on the same backbones and encoders as `DiffusionPolicy`:

- `ConsistencyTrainingPolicy`: teacher-free consistency training (Song et al. 2023; Ding & Jin
  2024). Adjacent noise levels of a Karras grid that grows during training must map to the same
  point; the target side runs an EMA copy of the network.
- `ConsistencyDistillPolicy`: LCM-style distillation of a trained epsilon-prediction DDPM
  teacher (a `DiffusionPolicy` checkpoint): one DDIM step of the teacher links two timesteps;
  warm-started from the teacher's weights; sampled with diffusers' `LCMScheduler`.
- `ConsistencyBCPolicy`: ConRFT's actor head: a Karras-weighted denoising (reconstruction) loss,
  `bc_weight * L_bc`, one-step sampling from sigma_max noise, outputs clipped to [-1, 1]. The RL
  work adds its Q term on top of `bc_loss` and `sample`.

Karras parameterisation (sigma_data 0.5): f(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, 250 ln s)
with c_skip = sd^2 / ((s - s_min)^2 + sd^2), c_out = (s - s_min) sd / sqrt(s^2 + sd^2),
c_in = 1 / sqrt(s^2 + sd^2), so f(x, s_min) = x exactly.

Shapes: actions are normalized chunks `(B, T, Da)`; `cond` is the encoded observation window.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from diffusers import DDPMScheduler, LCMScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from policylab.models.ema import polyak_update
from policylab.policies.base import BasePolicy, DenoisingPolicy, Generators
from policylab.policies.loading import load_policy

LCM_SIGMA_DATA = 0.5  # fixed inside diffusers' LCMScheduler boundary scalings


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """(n,) noise levels from sigma_min up to sigma_max, dense near sigma_min (Karras et al.)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((lo + ramp * (hi - lo)) ** rho).float()


def pseudo_huber(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """(B,) sqrt(|x - y|^2 + c^2) - c over each chunk: L2 near 0, L1 for large errors."""
    sq = (x - y).pow(2).flatten(1).sum(1)
    return torch.sqrt(sq + c * c) - c


class KarrasConsistencyPolicy(DenoisingPolicy):
    """What the Karras-parameterised variants share: f(x, sigma), and chained sampling.

    inference_sigmas: the chain; [sigma_max] is one step, e.g. [80, 0.8, 0.2] re-noises to 0.8 and
        to 0.2 and denoises again (three evaluations).
    clip_denoised: clip f to [-1, 1], the normalized action range.
    """

    def __init__(self, shape_meta: Mapping, horizon: int, n_obs_steps: int, n_action_steps: int,
                 model: Callable, obs_encoder: Callable | None = None, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, sigma_data: float = 0.5, rho: float = 7.0,
                 inference_sigmas: Sequence[float] | None = None, clip_denoised: bool = True,
                 image_head: Callable | None = None):
        super().__init__(shape_meta, horizon, n_obs_steps, n_action_steps, model, obs_encoder, image_head)
        self.sigma_min, self.sigma_max, self.sigma_data, self.rho = sigma_min, sigma_max, sigma_data, rho
        self.inference_sigmas = [float(s) for s in (inference_sigmas or [sigma_max])]
        if any(not sigma_min < s <= sigma_max for s in self.inference_sigmas):
            raise ValueError(f"inference_sigmas {self.inference_sigmas} must lie in ({sigma_min}, {sigma_max}]")
        self.clip_denoised = clip_denoised

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """c_skip, c_out, c_in for `sigma (B,)`, each shaped (B, 1, 1)."""
        sd, s = self.sigma_data, sigma.reshape(-1, 1, 1)
        c_skip = sd ** 2 / ((s - self.sigma_min) ** 2 + sd ** 2)
        c_out = (s - self.sigma_min) * sd / torch.sqrt(s ** 2 + sd ** 2)
        c_in = 1 / torch.sqrt(s ** 2 + sd ** 2)
        return c_skip, c_out, c_in

    def consistency_fn(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor,
                       model: nn.Module | None = None) -> torch.Tensor:
        """f(x (B, T, Da), sigma (B,) | cond) -> clean chunk (B, T, Da)."""
        c_skip, c_out, c_in = self.scalings(sigma)
        out = c_skip * x + c_out * self.denoise(c_in * x, 250.0 * torch.log(sigma), cond, model)
        return out.clamp(-1, 1) if self.clip_denoised else out

    def sample(self, cond: torch.Tensor, generator: Generators = None,
               sigmas: Sequence[float] | None = None) -> torch.Tensor:
        """Normalized action chunks (B, T, Da) from noise, one evaluation per sigma of the chain."""
        sigmas = self.inference_sigmas if sigmas is None else sigmas
        shape = (cond.shape[0], self.horizon, self.action_dim)
        x = None
        for i, sigma in enumerate(sigmas):
            noise = randn_tensor(shape, generator=generator, device=cond.device, dtype=cond.dtype)
            # the first step starts from pure noise; later ones re-noise the previous estimate
            x = sigma * noise if i == 0 else x + math.sqrt(sigma ** 2 - self.sigma_min ** 2) * noise
            x = self.consistency_fn(x, torch.full((shape[0],), sigma, device=cond.device), cond)
        return x


class ConsistencyBCPolicy(KarrasConsistencyPolicy):
    """ConRFT's consistency head: loss = bc_weight * E[lambda(sigma) |f(a + sigma z, sigma) - a|^2],
    sigma from a `num_scales` Karras grid (sigma_min itself never drawn), lambda = 1/sigma^2 + 1/sd^2.

    Trained this way f is a denoiser, f(x_sigma, sigma) ~ E[a | x_sigma, obs]; from sigma_max noise
    one step gives about the mean action of the observation, not a sample of one mode (see
    tests/policies/test_consistency.py). ConRFT relies on its Q term to pick among actions; for
    multimodal behaviour cloning alone use `ConsistencyTrainingPolicy` or distillation.
    """

    def __init__(self, *args, bc_weight: float = 1.0, num_scales: int = 40, **kwargs):
        super().__init__(*args, **kwargs)
        self.bc_weight, self.num_scales = bc_weight, num_scales
        self.register_buffer("train_sigmas", karras_sigmas(num_scales, self.sigma_min, self.sigma_max, self.rho),
                             persistent=False)

    def bc_loss(self, action: torch.Tensor, cond: torch.Tensor,
                step_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Denoising loss on normalized `action (B, T, Da)`: the term ConRFT's actor shares with BC.
        step_weights (T,): each step's squared error (mean over Da) weighs this much; None: the
        mean over all T * Da."""
        idx = torch.randint(1, self.num_scales, (action.shape[0],), device=action.device)
        sigma = self.train_sigmas[idx]
        noisy = action + sigma.reshape(-1, 1, 1) * torch.randn_like(action)
        error = (self.consistency_fn(noisy, sigma, cond) - action).pow(2)
        recon = error.flatten(1).mean(1) if step_weights is None else error.mean(-1) @ step_weights.to(error)
        weight = 1 / sigma ** 2 + 1 / self.sigma_data ** 2
        return (weight * recon).mean()

    def compute_loss(self, batch: Mapping) -> tuple[torch.Tensor, dict[str, float]]:
        cond = self.encode_obs(self.normalize_obs(batch["obs"]))
        bc = self.bc_loss(self.normalizer["action"].normalize(batch["action"]), cond)
        loss = self.bc_weight * bc
        return loss, {"loss": loss.item(), "bc_loss": bc.item()}


class ConsistencyTrainingPolicy(KarrasConsistencyPolicy):
    """Teacher-free consistency training.

    The grid has N(k) = ceil(sqrt(k / total_steps * ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1 levels at
    step k (Song et al.'s schedule, s0 -> s1). total_steps: None takes the run's number of optimizer
    steps from the workspace (`set_total_steps`); with neither, the grid is full (s1 levels). Levels are drawn from a discretised log-normal
    (P_mean, P_std; Song & Dhariwal's improved CT) and weighted by 1 / (sigma_{i+1} - sigma_i).
    distance: "pseudo_huber" (c = `huber_c`, default 0.00054 sqrt(T * Da)) or "l2".
    """

    def __init__(self, *args, total_steps: int | None = None, scales_start: int = 10, scales_end: int = 150,
                 target_ema_decay: float = 0.95, distance: str = "pseudo_huber", p_mean: float = -1.1,
                 p_std: float = 2.0, huber_c: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if distance not in ("pseudo_huber", "l2"):
            raise ValueError(f"distance must be 'pseudo_huber' or 'l2', got {distance!r}")
        self.total_steps, self.scales_start, self.scales_end = total_steps, scales_start, scales_end
        self._total_steps_from_config = total_steps
        self.target_ema_decay, self.distance, self.p_mean, self.p_std = target_ema_decay, distance, p_mean, p_std
        # improved CT's default scales with the chunk size
        self.huber_c = 0.00054 * math.sqrt(self.horizon * self.action_dim) if huber_c is None else huber_c
        self.target_model = copy.deepcopy(self.model).requires_grad_(False)
        self.register_buffer("train_step", torch.zeros((), dtype=torch.long))

    def set_total_steps(self, total_steps: int) -> None:
        """The workspace's number of optimizer steps, unless the config set `total_steps`."""
        if self._total_steps_from_config is None:
            self.total_steps = int(total_steps)

    def num_scales(self, step: int) -> int:
        s0, s1 = self.scales_start, self.scales_end
        frac = 1.0 if self.total_steps is None else min(step / max(self.total_steps, 1), 1.0)
        return int(math.ceil(math.sqrt(frac * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1) + 1)

    def _draw_levels(self, sigmas: torch.Tensor, n: int) -> torch.Tensor:
        """(n,) indices i of pairs (sigma_i, sigma_i+1), drawn with log-normal weights."""
        log_s = torch.log(sigmas.double())
        cdf = torch.special.erf((log_s - self.p_mean) / (math.sqrt(2) * self.p_std))
        return torch.multinomial((cdf[1:] - cdf[:-1]).float().clamp_min(1e-12), n, replacement=True)

    def on_optimizer_step(self) -> None:
        """The target averages the weights after each optimizer step; the grid grows per step."""
        polyak_update(self.target_model, self.model, 1 - self.target_ema_decay)
        self.train_step += 1

    def compute_loss(self, batch: Mapping) -> tuple[torch.Tensor, dict[str, float]]:
        cond = self.encode_obs(self.normalize_obs(batch["obs"]))
        action = self.normalizer["action"].normalize(batch["action"])
        n_scales = self.num_scales(int(self.train_step) + 1)  # the step being taken, counted from 1
        sigmas = karras_sigmas(n_scales, self.sigma_min, self.sigma_max, self.rho).to(action.device)
        idx = self._draw_levels(sigmas, action.shape[0]).to(action.device)
        s_lo, s_hi = sigmas[idx], sigmas[idx + 1]
        noise = torch.randn_like(action)
        pred = self.consistency_fn(action + s_hi.reshape(-1, 1, 1) * noise, s_hi, cond)
        with torch.no_grad():
            target = self.consistency_fn(action + s_lo.reshape(-1, 1, 1) * noise, s_lo, cond.detach(),
                                         model=self.target_model)
        if self.distance == "pseudo_huber":
            dist = pseudo_huber(pred, target, self.huber_c)
        else:
            dist = (pred - target).pow(2).flatten(1).mean(1)
        loss = (dist / (s_hi - s_lo)).mean()
        return loss, {"loss": loss.item(), "num_scales": float(n_scales)}


def share_or_load_teacher(student: BasePolicy, source: BasePolicy | None, kind: str) -> BasePolicy | None:
    """A distilled student's teacher, frozen, from `student.teacher_path`; with `source` (another
    copy of the student), the student takes its state and shares its teacher, and None is returned."""
    if source is not None:
        student.load_state_dict(source.state_dict())
        object.__setattr__(student, "teacher", source.teacher)
        return None
    if student.teacher_path is None:
        raise ValueError(f"policy.teacher must name {kind} checkpoint directory to distill")
    return load_policy(student.teacher_path, device=student.device).requires_grad_(False)


def student_and_teacher_cond(student: BasePolicy, nobs: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's observation condition (with gradients) and the frozen teacher's, for one batch
    of normalized observations."""
    if student.teacher is None:
        raise RuntimeError("the teacher is not loaded: call on_train_start() (the workspace does)")
    with torch.no_grad():
        teacher_cond = student.teacher.encode_obs(nobs)
    return student.encode_obs(nobs), teacher_cond


def adopt_teacher(student: BasePolicy, teacher: BasePolicy) -> None:
    """The student starts from the teacher's encoder and normalizer and keeps the teacher as a plain
    attribute (never a submodule, so never in the student's checkpoint)."""
    student.obs_encoder.load_state_dict(teacher.obs_encoder.state_dict())
    student.normalizer.load_state_dict(teacher.normalizer.state_dict())
    object.__setattr__(student, "teacher", teacher)


class ConsistencyDistillPolicy(DenoisingPolicy):
    """LCM-style consistency distillation of an epsilon-prediction DDPM `DiffusionPolicy`.

    The student has the teacher's architecture (same `model` / `obs_encoder` config) and starts
    from its weights. For t on the `num_ddim_timesteps` grid, x_t = noised action; the teacher's
    DDIM step gives x_{t-k}; the loss is pseudo-Huber(f(x_t, t), f_ema(x_{t-k}, t-k)) with
    f(x, t) = c_skip(t) x + c_out(t) x0_pred(x, t) and LCM's boundary scalings (t=0: f = x).

    teacher: a checkpoint directory; needed for training only (`on_train_start` loads it), never
        saved with the student, so the student's checkpoint stands alone.
    """

    def __init__(self, shape_meta: Mapping, horizon: int, n_obs_steps: int, n_action_steps: int,
                 model: Callable, noise_scheduler: DDPMScheduler, obs_encoder: Callable | None = None,
                 teacher: str | None = None, num_ddim_timesteps: int = 20, target_ema_decay: float = 0.95,
                 huber_c: float = 0.001, num_inference_steps: int = 1):
        super().__init__(shape_meta, horizon, n_obs_steps, n_action_steps, model, obs_encoder)
        if noise_scheduler.config.prediction_type != "epsilon":
            raise ValueError("consistency distillation needs an epsilon-prediction teacher scheduler")
        self.noise_scheduler = noise_scheduler
        shared = inspect.signature(LCMScheduler.__init__).parameters  # e.g. no DDPM variance_type
        self.lcm = LCMScheduler.from_config({k: v for k, v in noise_scheduler.config.items() if k in shared},
                                            original_inference_steps=num_ddim_timesteps)
        self.teacher_path, self.num_ddim_timesteps = teacher, num_ddim_timesteps
        self.target_ema_decay, self.huber_c, self.num_inference_steps = target_ema_decay, huber_c, num_inference_steps
        self.target_model = copy.deepcopy(self.model).requires_grad_(False)
        step = noise_scheduler.config.num_train_timesteps // num_ddim_timesteps
        self.register_buffer("ddim_timesteps", torch.arange(1, num_ddim_timesteps + 1) * step - 1, persistent=False)
        self.register_buffer("alphas_cumprod", noise_scheduler.alphas_cumprod.clone().float(), persistent=False)
        self.step_ratio = step
        self.teacher = None  # a plain attribute, not a submodule: never in the student's state_dict

    def on_train_start(self, source: ConsistencyDistillPolicy | None = None) -> None:
        """Load the teacher and start from its weights (with `source`, share its teacher)."""
        teacher = share_or_load_teacher(self, source, "a DiffusionPolicy")
        if teacher is None:
            return
        mine, theirs = self.model.state_dict(), teacher.model.state_dict()
        bad = [k for k in mine if k not in theirs or theirs[k].shape != mine[k].shape]
        if bad or getattr(teacher, "noise_scheduler", None) is None:
            raise ValueError(f"teacher {self.teacher_path} does not match the student's backbone (e.g. {bad[:3]}); "
                             "use the teacher's policy.model settings")
        self.model.load_state_dict(theirs)
        self.target_model.load_state_dict(theirs)
        adopt_teacher(self, teacher)

    def predict_x0(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 from an epsilon prediction, clipped as the schedulers clip it at inference
        (`clip_sample`). Diffusion Policy's cosine schedule has alpha_bar ~ 2e-7 at its last step,
        so an unclipped x0 there multiplies any error in eps by ~2000."""
        a = self.alphas_cumprod[t].reshape(-1, 1, 1)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        config = self.noise_scheduler.config
        if config.clip_sample:
            x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
        return x0

    def lcm_fn(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """f(x_t, t) from an epsilon prediction: c_skip(t) x + c_out(t) x0_pred, LCM's boundary
        scalings (sigma_data 0.5, t scaled by `timestep_scaling`), exactly as `LCMScheduler.step`."""
        scaled = (t.float() * self.lcm.config.timestep_scaling).reshape(-1, 1, 1)
        sd2 = LCM_SIGMA_DATA ** 2
        c_skip = sd2 / (scaled ** 2 + sd2)
        c_out = scaled / (scaled ** 2 + sd2).sqrt()
        return c_skip * x + c_out * self.predict_x0(x, t, eps)

    def distillation_loss(self, action: torch.Tensor, cond: torch.Tensor, teacher_cond: torch.Tensor) -> torch.Tensor:
        idx = torch.randint(0, self.num_ddim_timesteps, (action.shape[0],), device=action.device)
        t = self.ddim_timesteps[idx]
        t_prev = (t - self.step_ratio).clamp_min(0)
        noise = torch.randn_like(action)
        a_t = self.alphas_cumprod[t].reshape(-1, 1, 1)
        x_t = a_t.sqrt() * action + (1 - a_t).sqrt() * noise
        pred = self.lcm_fn(x_t, t, self.denoise(x_t, t, cond))
        with torch.no_grad():
            eps_teacher = self.teacher.denoise(x_t, t, teacher_cond)
            x0_teacher = self.predict_x0(x_t, t, eps_teacher)  # the DDIM step as DP's inference takes it
            a_prev = self.alphas_cumprod[t_prev].reshape(-1, 1, 1)
            x_prev = a_prev.sqrt() * x0_teacher + (1 - a_prev).sqrt() * eps_teacher  # DDIM, eta 0
            target = self.lcm_fn(x_prev, t_prev, self.denoise(x_prev, t_prev, cond.detach(), self.target_model))
        return pseudo_huber(pred, target, self.huber_c).mean()

    def compute_loss(self, batch: Mapping) -> tuple[torch.Tensor, dict[str, float]]:
        cond, teacher_cond = student_and_teacher_cond(self, self.normalize_obs(batch["obs"]))
        loss = self.distillation_loss(self.normalizer["action"].normalize(batch["action"]), cond, teacher_cond)
        return loss, {"loss": loss.item()}

    def on_optimizer_step(self) -> None:
        polyak_update(self.target_model, self.model, 1 - self.target_ema_decay)

    def sample(self, cond: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        """Normalized action chunks (B, T, Da): `num_inference_steps` of LCMScheduler."""
        shape = (cond.shape[0], self.horizon, self.action_dim)
        sample = randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)
        self.lcm.set_timesteps(self.num_inference_steps, device=self.device)
        for t in self.lcm.timesteps:
            eps = self.denoise(sample, t.expand(shape[0]), cond)
            sample = self.lcm.step(eps, t, sample, generator=generator).prev_sample
        return sample
