"""Consistency trajectory distillation (CTM, Kim et al. 2024) of an EDM teacher, as Prasad et al.'s
Consistency Policy does it: a one-step (or few-step) student that stays close to its teacher.

The student jumps along the teacher's probability-flow ODE from any level t to any lower level s:

    G(x_t, t, s) = (s / t) x_t + (1 - s / t) g(x_t, t, s),
    g(x, t, s)   = c_skip(t) x + c_out(t) F(c_in(t) x, c_noise(t) | obs, emb(s))   (EDM preconditioning)

so G(x, s, s) = x exactly (the boundary condition), and g(x, t, t) is a denoiser. `emb(s)` is a
sinusoidal embedding of c_noise(s) appended to the backbone's observation condition (one vector, or
every token of a token backbone). Warm start: the backbone takes the teacher's weights, the columns
that read emb(s) start at zero, so the student starts as the teacher's one-step Euler jump.

Loss per sample, on a grid of `num_bins` Karras levels sigma_max = l_0 > ... > l_{N-1} = sigma_min:
draw bins t < u <= s with u = t + 1 (larger index, lower noise); x_t = a + l_t z; the teacher takes
one Heun step x_t -> x_u; then

    ctm = d( G_sg(G(x_t, t, s), s, sigma_min),  G_sg(G_sg(x_u, u, s), s, sigma_min) )

with d pseudo-Huber and G_sg a stop-gradient copy (`target_ema_decay` 0: the current weights), plus
the EDM denoising loss of g(x, sigma, sigma) (`dsm_weight`), and (`endpoint_weight`, 0 turns it off)
the teacher's whole sampler run on the one-step sampler's own input:

    endpoint = d( G(sigma_max z, sigma_max, sigma_min),  the teacher's sampler from sigma_max z to sigma_min )

which trains the jump that one-step inference takes against its exact target instead of a chain of
`num_bins` bootstrapped ones (Luhman & Luhman's distillation; CTM's u = s limit at t = sigma_max).
Sampling: G(sigma_max z, sigma_max, sigma_min), one network evaluation; a chain `inference_sigmas`
re-noises to each next level.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from policylab.models.ema import polyak_update
from policylab.models.unet1d import SinusoidalPosEmb
from policylab.policies.base import Generators
from policylab.policies.consistency import (
    adopt_teacher,
    pseudo_huber,
    share_or_load_teacher,
    student_and_teacher_cond,
)
from policylab.policies.edm import EDMDiffusionPolicy, edm_sigmas


class ConsistencyCTMPolicy(EDMDiffusionPolicy):
    """Args beyond `EDMDiffusionPolicy`'s (whose noise settings must equal the teacher's):
        teacher: an `EDMDiffusionPolicy` checkpoint directory; needed for training only
            (`on_train_start` loads it), never saved with the student.
        num_bins: Karras levels of the distillation grid (one teacher Heun step per bin).
        s_embed_dim: size of the embedding of the target level s.
        target_ema_decay: of the stop-gradient copy G_sg (0: a copy of the current weights).
        huber_c: pseudo-Huber c; None: improved CT's 0.00054 sqrt(T * Da).
        ctm_weight, dsm_weight: weights of the two loss terms (Consistency Policy: 1 and 1); a term
            whose weight is 0 is not computed.
        endpoint_weight: weight of the term that matches the one-step jump to the teacher's sampler
            (0: off, which is Consistency Policy's loss); it costs the teacher's NFE on
            `endpoint_batch` samples of each batch (None: all).
        endpoint_obs_noise: std of Gaussian noise added to the normalized low-dim observations of the
            endpoint term's samples, which student and teacher both see: the teacher labels states
            near the demos that its rollouts visit but the demos do not hold (0: the demo states only).
        inference_sigmas: the sampling chain; [sigma_max] is one evaluation, e.g. [80, 0.8, 0.2]
            three (each step jumps to sigma_min, the next re-noises to its level).
    """

    def __init__(self, shape_meta: Mapping, horizon: int, n_obs_steps: int, n_action_steps: int,
                 model: Callable, obs_encoder: Callable | None = None, teacher: str | None = None,
                 num_bins: int = 40, s_embed_dim: int = 16, target_ema_decay: float = 0.0,
                 huber_c: float | None = None, ctm_weight: float = 1.0, dsm_weight: float = 1.0,
                 endpoint_weight: float = 1.0, endpoint_batch: int | None = None,
                 endpoint_obs_noise: float = 0.0, inference_sigmas: Sequence[float] | None = None, **edm):
        super().__init__(shape_meta, horizon, n_obs_steps, n_action_steps,
                         _with_extra_condition(model, s_embed_dim), obs_encoder, **edm)
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        self.teacher_path, self.num_bins, self.s_embed_dim = teacher, num_bins, s_embed_dim
        self.target_ema_decay, self.ctm_weight, self.dsm_weight = target_ema_decay, ctm_weight, dsm_weight
        if endpoint_batch is not None and endpoint_batch < 1:
            raise ValueError(f"endpoint_batch must be >= 1 or null (the whole batch), got {endpoint_batch}")
        if endpoint_obs_noise < 0:
            raise ValueError(f"endpoint_obs_noise must be >= 0, got {endpoint_obs_noise}")
        self.endpoint_weight, self.endpoint_batch = endpoint_weight, endpoint_batch
        self.endpoint_obs_noise = endpoint_obs_noise
        self.huber_c = 0.00054 * math.sqrt(horizon * self.action_dim) if huber_c is None else huber_c
        self.inference_sigmas = [float(s) for s in (inference_sigmas or [self.sigma_max])]
        if any(not self.sigma_min < s <= self.sigma_max for s in self.inference_sigmas) or \
                self.inference_sigmas != sorted(self.inference_sigmas, reverse=True):
            raise ValueError(f"inference_sigmas {self.inference_sigmas} must decrease within "
                             f"({self.sigma_min}, {self.sigma_max}]")
        if not ctm_weight and len(self.inference_sigmas) > 1:
            raise ValueError(f"inference_sigmas {self.inference_sigmas} chains jumps from lower levels, which "
                             "only the CTM term trains; with ctm_weight=0 the student learns the one-step jump alone")
        self.s_embedding = SinusoidalPosEmb(s_embed_dim)
        self.target_model = copy.deepcopy(self.model).requires_grad_(False)
        self.register_buffer("bins", edm_sigmas(num_bins, self.sigma_min, self.sigma_max, self.rho),
                             persistent=False)
        self.teacher = None  # a plain attribute, not a submodule: never in the student's state_dict

    def condition_on(self, cond: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The observation condition with emb(s) appended: (B, D) -> (B, D + E), or to every token."""
        emb = self.s_embedding(self.c_noise(s)).to(cond.dtype)
        if cond.ndim == 3:
            return torch.cat([cond, emb[:, None].expand(-1, cond.shape[1], -1)], dim=-1)
        return torch.cat([cond, emb], dim=-1)

    def denoiser(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor,
                 model: nn.Module | None = None, s: torch.Tensor | None = None) -> torch.Tensor:
        """g(x, sigma, s); s defaults to sigma (the denoiser that the DSM term trains)."""
        s = sigma if s is None else s
        return super().denoiser(x, sigma, self.condition_on(cond, s), model)

    def trajectory_fn(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, cond: torch.Tensor,
                      model: nn.Module | None = None) -> torch.Tensor:
        """G(x (B, T, Da), t (B,), s (B,) | cond): the point at level s of the ODE through x at t."""
        ratio = (s / t).reshape(-1, 1, 1)
        return ratio * x + (1 - ratio) * self.denoiser(x, t, cond, model, s=s)

    def on_train_start(self, source: ConsistencyCTMPolicy | None = None) -> None:
        """Load the teacher and start from its weights (with `source`, share its teacher)."""
        teacher = share_or_load_teacher(self, source, "a diffusion_edm")
        if teacher is None:
            return
        self.check_teacher(teacher)
        warm_start(self.model, teacher.model, self.teacher_path)
        self.target_model.load_state_dict(self.model.state_dict())
        adopt_teacher(self, teacher)

    def check_teacher(self, teacher: nn.Module) -> None:
        """ValueError unless `teacher` (from `self.teacher_path`) is an EDM policy with the student's
        noise settings: the sampler whose endpoint the student learns."""
        if type(teacher) is not EDMDiffusionPolicy:
            raise ValueError(f"teacher {self.teacher_path} is a {type(teacher).__name__}; "
                             "consistency_ctm distills an EDMDiffusionPolicy (policy=diffusion_edm)")
        noise = ("sigma_min", "sigma_max", "sigma_data", "rho")
        if any(getattr(teacher, k) != getattr(self, k) for k in noise):
            raise ValueError(f"teacher {self.teacher_path} has noise settings "
                             f"{[getattr(teacher, k) for k in noise]}, the student {[getattr(self, k) for k in noise]}")

    def draw_bins(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(n,) levels t > u >= s: u one bin below t, s uniform over the bins from u down."""
        i_t = torch.randint(0, self.num_bins - 1, (n,), device=device)
        i_u = i_t + 1
        i_s = i_u + (torch.rand(n, device=device) * (self.num_bins - i_u)).long()
        bins = self.bins.to(device)
        return bins[i_t], bins[i_u], bins[i_s]

    def ctm_loss(self, action: torch.Tensor, cond: torch.Tensor, teacher_cond: torch.Tensor) -> torch.Tensor:
        """The trajectory-matching term on normalized `action (B, T, Da)`."""
        t, u, s = self.draw_bins(action.shape[0], action.device)
        floor = torch.full_like(s, self.sigma_min)
        x_t = action + t.reshape(-1, 1, 1) * torch.randn_like(action)
        sg_cond = cond.detach()
        with torch.no_grad():
            x_u = self.teacher.ode_step(x_t, t, u, teacher_cond, heun=True)
            target = self.trajectory_fn(x_u, u, s, sg_cond, self.target_model)
            target = self.trajectory_fn(target, s, floor, sg_cond, self.target_model)
        pred = self.trajectory_fn(x_t, t, s, cond)
        pred = self.trajectory_fn(pred, s, floor, sg_cond, self.target_model)
        return pseudo_huber(pred, target, self.huber_c).mean()

    def endpoint_loss(self, nobs: Mapping[str, torch.Tensor], cond: torch.Tensor,
                      teacher_cond: torch.Tensor) -> torch.Tensor:
        """The one-step jump from sigma_max noise against the teacher's sampler run on that noise, on
        the first `endpoint_batch` samples (their observations perturbed by `endpoint_obs_noise`)."""
        n = cond.shape[0] if self.endpoint_batch is None else min(self.endpoint_batch, cond.shape[0])
        if self.endpoint_obs_noise:
            nobs = {k: v[:n] if k in self.rgb_keys else v[:n] + self.endpoint_obs_noise * torch.randn_like(v[:n])
                    for k, v in nobs.items()}
            cond = self.encode_obs(nobs)
            with torch.no_grad():
                teacher_cond = self.teacher.encode_obs(nobs)
        cond, teacher_cond = cond[:n], teacher_cond[:n]
        x = self.sigma_max * torch.randn((n, self.horizon, self.action_dim), device=cond.device, dtype=cond.dtype)
        with torch.no_grad():
            target = self.teacher.solve(x, teacher_cond, to_zero=False)
        t, floor = torch.full((n,), self.sigma_max, device=x.device), torch.full((n,), self.sigma_min, device=x.device)
        return pseudo_huber(self.trajectory_fn(x, t, floor, cond), target, self.huber_c).mean()

    def compute_loss(self, batch: Mapping) -> tuple[torch.Tensor, dict[str, float]]:
        nobs = self.normalize_obs(batch["obs"])
        cond, teacher_cond = student_and_teacher_cond(self, nobs)
        action = self.normalizer["action"].normalize(batch["action"])
        zero = torch.zeros((), device=action.device)
        ctm = self.ctm_loss(action, cond, teacher_cond) if self.ctm_weight else zero
        dsm = self.dsm_loss(action, cond) if self.dsm_weight else zero
        endpoint = self.endpoint_loss(nobs, cond, teacher_cond) if self.endpoint_weight else zero
        loss = self.ctm_weight * ctm + self.dsm_weight * dsm + self.endpoint_weight * endpoint
        return loss, {"loss": loss.item(), "ctm_loss": ctm.item(), "dsm_loss": dsm.item(),
                      "endpoint_loss": endpoint.item()}

    def on_optimizer_step(self) -> None:
        polyak_update(self.target_model, self.model, 1 - self.target_ema_decay)

    def sample(self, cond: torch.Tensor, generator: Generators = None,
               sigmas: Sequence[float] | None = None) -> torch.Tensor:
        """Normalized action chunks (B, T, Da), one network evaluation per level of the chain."""
        sigmas = self.inference_sigmas if sigmas is None else sigmas
        shape = (cond.shape[0], self.horizon, self.action_dim)
        floor = torch.full((shape[0],), self.sigma_min, device=cond.device)
        x = None
        for i, sigma in enumerate(sigmas):
            noise = randn_tensor(shape, generator=generator, device=cond.device, dtype=cond.dtype)
            x = sigma * noise if i == 0 else x + math.sqrt(sigma ** 2 - self.sigma_min ** 2) * noise
            x = self.trajectory_fn(x, torch.full_like(floor, sigma), floor, cond)
            if self.clip_denoised:
                x = x.clamp(-1, 1)
        return x

    def num_function_evals(self) -> int:
        return len(self.inference_sigmas)


def _with_extra_condition(factory: Callable, extra: int) -> Callable:
    """The backbone partial with `extra` more condition features (global vector or per token)."""
    network_cls = getattr(factory, "func", factory)
    key = "cond_dim" if getattr(network_cls, "obs_conditioning", None) == "tokens" else "global_cond_dim"

    def build(**dims):
        return factory(**{**dims, key: dims[key] + extra})

    build.func = network_cls  # what the backbone builder reads obs_conditioning from
    return build


def warm_start(student: nn.Module, teacher: nn.Module, name: object) -> None:
    """Copy the teacher backbone into the student's; a weight that reads more inputs in the student
    (the emb(s) columns, appended last) gets the teacher's columns first and zeros after them."""
    mine, theirs = student.state_dict(), teacher.state_dict()
    bad = [k for k in mine if k not in theirs or not _fits(theirs[k], mine[k])]
    if bad or len(mine) != len(theirs):
        raise ValueError(f"teacher {name} does not match the student's backbone (e.g. {bad[:3]}); "
                         "use the teacher's policy.model settings")
    with torch.no_grad():
        for k, value in mine.items():
            value.zero_()
            value[tuple(slice(0, n) for n in theirs[k].shape)] = theirs[k]
    student.load_state_dict(mine)


def _fits(teacher: torch.Tensor, student: torch.Tensor) -> bool:
    if teacher.shape == student.shape:
        return True
    return (teacher.ndim == student.ndim == 2 and teacher.shape[0] == student.shape[0]
            and teacher.shape[1] < student.shape[1])
