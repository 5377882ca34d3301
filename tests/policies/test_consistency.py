"""Consistency policies: boundary conditions, the distillation loss on an exactly solvable toy,
both modes of a bimodal action distribution from one step, schedules and errors.
(The contract test covers build / loss / shapes / round trip / determinism; the Hydra smoke runs
are in tests/workspaces/test_consistency_workspace.py.)"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn

from policylab.data.normalizer import LinearNormalizer, SingleFieldLinearNormalizer
from policylab.models.unet1d import ConditionalUnet1D
from policylab.policies.consistency import (
    ConsistencyBCPolicy,
    ConsistencyDistillPolicy,
    ConsistencyTrainingPolicy,
    karras_sigmas,
    pseudo_huber,
)
from policylab.policies.diffusion import DiffusionPolicy

SHAPE_META = {"obs": {"state": {"shape": [1], "type": "low_dim"}}, "action": {"shape": [1]}}
T, TO, TA = 4, 1, 2


tiny_unet = partial(ConditionalUnet1D, diffusion_step_embed_dim=16, down_dims=[16, 32], kernel_size=3, n_groups=4)


def identity_normalizer() -> LinearNormalizer:
    normalizer = LinearNormalizer()
    normalizer["state"] = SingleFieldLinearNormalizer.create_identity(1)
    normalizer["action"] = SingleFieldLinearNormalizer.create_identity(1)
    return normalizer


def ddpm() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                         prediction_type="epsilon")


def karras_policy(cls=ConsistencyBCPolicy, model=tiny_unet, **kwargs):
    policy = cls(SHAPE_META, T, TO, TA, model=model, **kwargs)
    policy.set_normalizer(identity_normalizer())
    return policy


@pytest.mark.parametrize("cls", [ConsistencyBCPolicy, ConsistencyTrainingPolicy])
def test_karras_boundary_is_identity_exactly(cls):
    torch.manual_seed(0)
    policy = karras_policy(cls, clip_denoised=False)
    x = torch.randn(8, T, 1) * 3
    cond = torch.randn(8, 1)
    sigma = torch.full((8,), policy.sigma_min)
    assert torch.equal(policy.consistency_fn(x, sigma, cond), x)
    c_skip, c_out, _ = policy.scalings(sigma)
    assert torch.equal(c_skip, torch.ones_like(c_skip))
    assert torch.equal(c_out, torch.zeros_like(c_out))
    # away from the boundary the network matters
    assert not torch.allclose(policy.consistency_fn(x, sigma * 100, cond), x)


def test_lcm_boundary_is_identity_exactly():
    torch.manual_seed(0)
    policy = ConsistencyDistillPolicy(SHAPE_META, T, TO, TA, model=tiny_unet, noise_scheduler=ddpm())
    x, eps = torch.randn(5, T, 1), torch.randn(5, T, 1)
    assert torch.equal(policy.lcm_fn(x, torch.zeros(5, dtype=torch.long), eps), x)


def test_karras_grid_and_schedule():
    sigmas = karras_sigmas(40, 0.002, 80.0, 7.0)
    assert sigmas[0].item() == pytest.approx(0.002, rel=1e-5)
    assert sigmas[-1].item() == pytest.approx(80.0, rel=1e-5)
    assert torch.all(sigmas[1:] > sigmas[:-1])
    policy = karras_policy(ConsistencyTrainingPolicy, total_steps=1000, scales_start=10, scales_end=150)
    counts = [policy.num_scales(k) for k in (0, 250, 500, 1000, 5000)]
    assert counts[0] == 10
    assert counts[-2] == counts[-1] == 151  # Song et al.: s1 + 1 levels at the end
    assert counts == sorted(counts)


def test_pseudo_huber_is_l2_near_zero_and_l1_far():
    x = torch.zeros(2, 3, 1)
    small, large = torch.full_like(x, 1e-4), torch.full_like(x, 100.0)
    c = 0.01
    assert pseudo_huber(x, x, c).abs().max() < 1e-7
    assert pseudo_huber(small, x, c)[0].item() == pytest.approx(3e-8 / (2 * c), rel=1e-3)
    assert pseudo_huber(large, x, c)[0].item() == pytest.approx(100 * 3 ** 0.5 - c, rel=1e-4)


class PointMassEps(nn.Module):
    """The exact epsilon of data that is a single chunk `a0`: eps(x_t) = (x_t - sqrt(a_t) a0) / sqrt(1 - a_t).
    Along a DDIM (eta 0) trajectory eps stays constant, so this teacher's solver is exact."""

    obs_conditioning = "global"

    def __init__(self, input_dim, global_cond_dim, a0=None, alphas_cumprod=None):
        super().__init__()
        self.a0, self.alphas_cumprod = a0, alphas_cumprod

    def eps(self, x, t):
        a = self.alphas_cumprod[t].reshape(-1, 1, 1)
        return (x - a.sqrt() * self.a0) / (1 - a).sqrt()

    def forward(self, sample, timestep, global_cond):
        return self.eps(sample, timestep)


class ExactConsistency(PointMassEps):
    """A student whose LCM-parameterised f(x_t, t) is the true consistency function of the
    point-mass ODE: the trajectory's point at t = 0, sqrt(a_0) a0 + sqrt(1 - a_0) eps(x_t)."""

    def __init__(self, input_dim, global_cond_dim, a0=None, alphas_cumprod=None, scaling=10.0):
        super().__init__(input_dim, global_cond_dim, a0, alphas_cumprod)
        self.scaling = scaling

    def forward(self, sample, timestep, global_cond):
        a = self.alphas_cumprod[timestep].reshape(-1, 1, 1)
        a_0 = self.alphas_cumprod[0]
        endpoint = a_0.sqrt() * self.a0 + (1 - a_0).sqrt() * self.eps(sample, timestep)
        scaled = timestep.float().reshape(-1, 1, 1) * self.scaling
        c_skip, c_out = 0.25 / (scaled ** 2 + 0.25), scaled / (scaled ** 2 + 0.25).sqrt()
        # solve f = c_skip x + c_out x0 for x0 (at t = 0, c_out = 0 and f = x whatever x0 is)
        x0 = torch.where(c_out > 0, (endpoint - c_skip * sample) / c_out.clamp_min(1e-12), endpoint)
        return (sample - a.sqrt() * x0) / (1 - a).sqrt()


def test_distillation_loss_is_zero_for_an_exact_student_of_a_one_step_exact_teacher():
    torch.manual_seed(0)
    scheduler = ddpm()
    alphas = scheduler.alphas_cumprod.float()
    a0 = torch.tensor([0.3, -0.5, 0.7, 0.1]).reshape(1, T, 1)
    teacher = DiffusionPolicy(SHAPE_META, T, TO, TA, noise_scheduler=scheduler,
                              model=partial(PointMassEps, a0=a0, alphas_cumprod=alphas))
    student = ConsistencyDistillPolicy(SHAPE_META, T, TO, TA, noise_scheduler=ddpm(), num_ddim_timesteps=20,
                                       model=partial(ExactConsistency, a0=a0, alphas_cumprod=alphas))
    object.__setattr__(student, "teacher", teacher)  # what on_train_start does after loading a checkpoint
    action, cond = a0.expand(256, T, 1), torch.zeros(256, 1)
    loss = student.distillation_loss(action, cond, cond)
    assert loss.item() < 1e-5

    # the teacher's own epsilon is not a consistency function: the same loss sees it
    naive = ConsistencyDistillPolicy(SHAPE_META, T, TO, TA, noise_scheduler=ddpm(), num_ddim_timesteps=20,
                                     model=partial(PointMassEps, a0=a0, alphas_cumprod=alphas))
    object.__setattr__(naive, "teacher", teacher)
    assert naive.distillation_loss(action, cond, cond).item() > 100 * max(loss.item(), 1e-7)


def test_distill_without_teacher_is_a_clear_error():
    policy = ConsistencyDistillPolicy(SHAPE_META, T, TO, TA, model=tiny_unet, noise_scheduler=ddpm())
    policy.set_normalizer(identity_normalizer())
    batch = {"obs": {"state": torch.zeros(2, TO, 1)}, "action": torch.zeros(2, T, 1)}
    with pytest.raises(RuntimeError, match="teacher is not loaded"):
        policy.compute_loss(batch)
    with pytest.raises(ValueError, match="policy.teacher"):
        policy.on_train_start()
    with pytest.raises(ValueError, match="epsilon"):
        ConsistencyDistillPolicy(SHAPE_META, T, TO, TA, model=tiny_unet,
                                 noise_scheduler=DDPMScheduler(prediction_type="sample"))


def test_bad_inference_sigmas_are_refused():
    with pytest.raises(ValueError, match="inference_sigmas"):
        karras_policy(inference_sigmas=[80.0, 0.001])


def train_bimodal(policy, steps: int, batch_size: int = 64, lr: float = 3e-3) -> None:
    """Actions are chunks of all +0.8 or all -0.8, half and half, whatever the observation."""
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    policy.train()
    for _ in range(steps):
        sign = torch.randint(0, 2, (batch_size, 1, 1)).float() * 2 - 1
        batch = {"obs": {"state": torch.zeros(batch_size, TO, 1)}, "action": sign.expand(batch_size, T, 1) * 0.8}
        loss, _ = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        policy.on_optimizer_step()  # what the workspace calls after every optimizer step
    policy.eval()


def sample_chunk_means(policy, n: int = 400) -> torch.Tensor:
    out = policy.predict_action({"state": torch.zeros(n, TO, 1)}, generator=torch.Generator().manual_seed(1))
    return out["action_pred"].mean(dim=(1, 2))


def test_one_step_consistency_training_produces_both_modes():
    torch.manual_seed(0)
    policy = karras_policy(ConsistencyTrainingPolicy, total_steps=200)
    train_bimodal(policy, 200, batch_size=64)
    assert policy.inference_sigmas == [policy.sigma_max]  # one network evaluation
    means = sample_chunk_means(policy)
    upper, lower = (means > 0.5).float().mean().item(), (means < -0.5).float().mean().item()
    # both modes, each often; little mass in between (a mean-regressing policy would sit at 0)
    assert upper > 0.15, (upper, lower)
    assert lower > 0.15, (upper, lower)
    assert upper + lower > 0.8, (upper, lower)


def test_one_step_denoising_bc_head_regresses_to_the_mean():
    """ConRFT's BC head is trained as a denoiser, f(x_sigma, sigma) ~ E[a | x_sigma]; from sigma_max
    noise, which says nothing about a, one step returns the mean of the modes. This is the head
    ConRFT uses (its Q term then picks among actions); the test pins the behaviour down."""
    torch.manual_seed(0)
    policy = karras_policy(ConsistencyBCPolicy)
    train_bimodal(policy, 200, batch_size=64)
    means = sample_chunk_means(policy)
    assert (means.abs() < 0.3).float().mean().item() > 0.9, means.abs().max()


def test_chained_sampling_is_deterministic_and_differs_from_one_step():
    torch.manual_seed(0)
    policy = karras_policy(inference_sigmas=[80.0, 0.8, 0.2])
    obs = {"state": torch.zeros(3, TO, 1)}
    a = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))["action_pred"]
    b = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))["action_pred"]
    assert torch.equal(a, b)
    cond = policy.encode_obs(policy.normalize_obs(obs))
    one = policy.sample(cond, torch.Generator().manual_seed(0), sigmas=[80.0])
    assert not torch.equal(one, a)
    assert a.abs().max() <= 1.0  # clipped to the normalized action range (identity normalizer)
