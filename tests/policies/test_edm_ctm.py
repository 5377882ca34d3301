"""EDM teacher and CTM student: preconditioning and boundary conditions, the samplers and the
distillation loss on an exactly solvable toy (data = one chunk), the warm start, and errors.
(The contract test covers build / loss / shapes / round trip / determinism; train.py runs with
resume and loading are in tests/workspaces/test_edm_ctm_workspace.py.)"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn

from policylab.policies.consistency_ctm import ConsistencyCTMPolicy
from policylab.policies.edm import EDMDiffusionPolicy, edm_sigmas
from tests.policies.test_consistency import (
    SHAPE_META,
    TA,
    TO,
    T,
    identity_normalizer,
    tiny_unet,
)

A0 = torch.tensor([0.3, -0.5, 0.7, 0.1]).reshape(1, T, 1)


def edm(cls=EDMDiffusionPolicy, model=tiny_unet, **kwargs):
    policy = cls(SHAPE_META, T, TO, TA, model=model, **kwargs)
    policy.set_normalizer(identity_normalizer())
    return policy


class PointMassF(nn.Module):
    """The raw network F whose preconditioned denoiser is exact for data that is the one chunk
    `a0`: D(x, sigma) = a0 whatever x, so F = (a0 - c_skip x) / c_out. It reads sigma back from
    c_noise = 250 ln sigma and x from c_in x (sigma_data 0.5); the condition is ignored, or with
    `from_obs` the data is the chunk that repeats the observation (the condition's first feature)."""

    obs_conditioning = "global"

    def __init__(self, input_dim, global_cond_dim, a0=A0, wrong: bool = False, from_obs: bool = False):
        super().__init__()
        self.a0, self.wrong, self.from_obs = a0, wrong, from_obs

    def forward(self, sample, timestep, global_cond):
        sigma = torch.exp(timestep / 250.0).reshape(-1, 1, 1)
        c_in = 1 / torch.sqrt(sigma ** 2 + 0.25)
        x = sample / c_in
        c_skip, c_out = 0.25 / (sigma ** 2 + 0.25), sigma * 0.5 / torch.sqrt(sigma ** 2 + 0.25)
        target = torch.zeros_like(self.a0) if self.wrong else self.a0
        if self.from_obs:
            target = global_cond[:, :1, None].expand(-1, T, 1)
        return (target - c_skip * x) / c_out


def test_edm_scalings_and_weighting_are_karras():
    policy = edm()
    sd = policy.sigma_data
    c_skip, c_out, c_in = policy.scalings(torch.tensor([sd]))
    assert c_skip.item() == pytest.approx(0.5, abs=1e-7)
    assert c_out.item() == pytest.approx(sd / math.sqrt(2), abs=1e-7)
    assert c_in.item() == pytest.approx(1 / (sd * math.sqrt(2)), abs=1e-7)
    sigma = torch.tensor([0.002, 0.1, 1.0, 80.0])
    c_skip, c_out, _ = policy.scalings(sigma)
    # lambda c_out^2 = 1: every noise level contributes equally at init (EDM eq. 8)
    torch.testing.assert_close(policy.loss_weight(sigma) * c_out.flatten() ** 2, torch.ones(4))
    torch.testing.assert_close(c_skip.flatten(), sd ** 2 / (sigma ** 2 + sd ** 2))
    # as sigma -> 0 the denoiser is the identity; at sigma_max it is almost all network
    assert c_skip[0].item() > 0.9999 and c_out[0].item() < 0.0021 and c_skip[-1].item() < 1e-4


def test_edm_grid_runs_from_sigma_max_to_sigma_min():
    sigmas = edm_sigmas(9, 0.002, 80.0, 7.0)
    assert sigmas[0].item() == pytest.approx(80.0, rel=1e-6) and sigmas[-1].item() == pytest.approx(0.002, rel=1e-5)
    assert torch.all(sigmas[1:] < sigmas[:-1])
    with pytest.raises(ValueError, match="at least 2"):
        edm_sigmas(1, 0.002, 80.0, 7.0)


@pytest.mark.parametrize("sampler, steps, nfe", [("heun", 9, 17), ("euler", 5, 5), ("heun", 2, 3)])
def test_samplers_land_on_the_data_of_an_exact_denoiser(sampler, steps, nfe):
    policy = edm(model=PointMassF, sampler=sampler, num_inference_steps=steps, clip_denoised=False)
    out = policy.predict_action({"state": torch.zeros(3, TO, 1)}, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["action_pred"], A0.expand(3, T, 1), atol=1e-5, rtol=0)
    assert policy.num_function_evals() == nfe


def test_solve_is_the_samplers_map_and_can_stop_at_sigma_min():
    policy = edm(model=PointMassF, clip_denoised=False)
    cond = torch.zeros(3, 1)
    x = policy.sigma_max * torch.randn(3, T, 1, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(policy.solve(x, cond), A0.expand(3, T, 1), atol=1e-5, rtol=0)
    # the exact ODE through x: a0 + (sigma / sigma_max)(x - a0), read at sigma_min
    expected = A0 + policy.sigma_min / policy.sigma_max * (x - A0)
    torch.testing.assert_close(policy.solve(x, cond, to_zero=False), expected, atol=1e-5, rtol=0)
    noise = torch.randn(3, T, 1, generator=torch.Generator().manual_seed(2)) * policy.sigma_max
    torch.testing.assert_close(policy.sample(cond, torch.Generator().manual_seed(2)), policy.solve(noise, cond))


def test_edm_loss_vanishes_for_an_exact_denoiser_and_not_otherwise():
    torch.manual_seed(0)
    batch = {"obs": {"state": torch.zeros(64, TO, 1)}, "action": A0.expand(64, T, 1)}
    assert edm(model=PointMassF).compute_loss(batch)[0].item() < 1e-8
    assert edm(model=partial(PointMassF, wrong=True)).compute_loss(batch)[0].item() > 0.1


def test_edm_bad_settings_are_refused():
    with pytest.raises(ValueError, match="sampler"):
        edm(sampler="dpm")
    with pytest.raises(ValueError, match="sigma_min"):
        edm(sigma_min=1.0, sigma_max=0.5)


def ctm(model=tiny_unet, **kwargs):
    return edm(ConsistencyCTMPolicy, model=model, **kwargs)


def test_ctm_boundary_is_identity_exactly():
    torch.manual_seed(0)
    policy = ctm(clip_denoised=False)
    x, cond = torch.randn(6, T, 1) * 3, torch.randn(6, 1)
    for level in (policy.sigma_min, 0.7, policy.sigma_max):
        s = torch.full((6,), level)
        assert torch.equal(policy.trajectory_fn(x, s, s, cond), x)
    t, s = torch.full((6,), 5.0), torch.full((6,), 0.5)
    assert not torch.allclose(policy.trajectory_fn(x, t, s, cond), x)


def attach_teacher(student: ConsistencyCTMPolicy, teacher: EDMDiffusionPolicy) -> None:
    object.__setattr__(student, "teacher", teacher)  # what on_train_start does after loading


def test_ctm_loss_vanishes_for_an_exact_teacher_and_student():
    """Data = one chunk: the ODE is x_sigma = a0 + sigma z, the teacher's Heun step is exact and
    G(x, t, s) = a0 + (s / t)(x - a0) is the exact student. Both terms vanish; a wrong student's do not."""
    torch.manual_seed(0)
    teacher = edm(model=PointMassF)
    student = ctm(model=PointMassF, num_bins=20)
    attach_teacher(student, teacher)
    batch = {"obs": {"state": torch.zeros(256, TO, 1)}, "action": A0.expand(256, T, 1)}
    _, metrics = student.compute_loss(batch)
    assert metrics["ctm_loss"] < 1e-5 and metrics["dsm_loss"] < 1e-8, metrics

    wrong = ctm(model=partial(PointMassF, wrong=True), num_bins=20)
    wrong.target_model = student.target_model  # an exact target, a wrong student
    attach_teacher(wrong, teacher)
    _, bad = wrong.compute_loss(batch)
    assert bad["ctm_loss"] > 1e3 * max(metrics["ctm_loss"], 1e-7) and bad["dsm_loss"] > 0.1


def test_endpoint_loss_vanishes_for_an_exact_teacher_and_student():
    """The teacher's sampler from sigma_max z, stopped at sigma_min, is where the exact student's
    one-step jump lands; a wrong student is far from it. Only `endpoint_batch` samples pay for it."""
    torch.manual_seed(0)
    teacher = edm(model=PointMassF)
    student = ctm(model=PointMassF, num_bins=20, endpoint_weight=1.0, endpoint_batch=8)
    attach_teacher(student, teacher)
    sizes = []
    teacher.model.register_forward_hook(lambda module, args, out: sizes.append(args[0].shape[0]))
    batch = {"obs": {"state": torch.zeros(64, TO, 1)}, "action": A0.expand(64, T, 1)}
    _, metrics = student.compute_loss(batch)
    assert metrics["endpoint_loss"] < 1e-5, metrics
    # the CTM term's Heun step (2 evaluations on 64) and the sampler's 9 levels to sigma_min (16 on 8)
    assert sorted(sizes) == [8] * 16 + [64] * 2
    wrong = ctm(model=partial(PointMassF, wrong=True), num_bins=20, endpoint_weight=1.0)
    attach_teacher(wrong, teacher)
    assert wrong.compute_loss(batch)[1]["endpoint_loss"] > 0.1
    sizes.clear()
    off = ctm(model=PointMassF, num_bins=20, endpoint_weight=0.0)  # Consistency Policy's loss: no sampler run
    attach_teacher(off, teacher)
    assert off.compute_loss(batch)[1]["endpoint_loss"] == 0.0 and sizes == [64, 64]
    sizes.clear()
    only = ctm(model=PointMassF, num_bins=20, endpoint_weight=1.0, endpoint_batch=8, ctm_weight=0.0)
    attach_teacher(only, teacher)  # endpoint distillation alone: the CTM term's Heun step is not run
    metrics = only.compute_loss(batch)[1]
    assert metrics["ctm_loss"] == 0.0 and metrics["endpoint_loss"] < 1e-5 and sizes == [8] * 16


def test_endpoint_obs_noise_shows_student_and_teacher_the_same_perturbed_observations():
    """With `endpoint_obs_noise` the endpoint samples' observations are perturbed once, for both:
    an exact pair whose action depends on the observation still has zero loss, while the teacher
    saw observations off the batch's by about the noise's std."""
    torch.manual_seed(0)
    teacher = edm(model=partial(PointMassF, from_obs=True))
    seen = []
    teacher.model.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs["global_cond"][:, 0]),
                                        with_kwargs=True)
    batch = {"obs": {"state": torch.zeros(512, TO, 1)}, "action": torch.zeros(512, T, 1)}
    for noise, exact in ((0.0, True), (0.1, True), (0.1, False)):
        student = ctm(model=partial(PointMassF, from_obs=exact, wrong=not exact), endpoint_weight=1.0,
                      ctm_weight=0.0, dsm_weight=0.0, endpoint_batch=256, endpoint_obs_noise=noise)
        attach_teacher(student, teacher)
        seen.clear()
        endpoint = student.compute_loss(batch)[1]["endpoint_loss"]
        if exact:
            assert endpoint < 1e-5, (noise, endpoint)
        else:  # the zero-chunk student misses the perturbed observations' chunks by their noise
            assert endpoint > 1e-3
        obs = torch.stack(seen)  # every teacher evaluation, on the 256 endpoint samples
        assert obs.shape == (16, 256) and torch.all(obs == obs[0])
        assert obs[0].std().item() == pytest.approx(noise, rel=0.15, abs=1e-12)
    with pytest.raises(ValueError, match="endpoint_obs_noise"):
        ctm(endpoint_obs_noise=-0.1)


def test_bins_are_ordered_t_above_u_at_or_above_s():
    policy = ctm(num_bins=7)
    t, u, s = policy.draw_bins(5000, torch.device("cpu"))
    bins = policy.bins.tolist()
    idx = {round(b, 6): i for i, b in enumerate(bins)}
    it, iu, i_s = ([idx[round(v, 6)] for v in x.tolist()] for x in (t, u, s))
    assert all(b == a + 1 for a, b in zip(it, iu)) and all(c >= b for b, c in zip(iu, i_s))
    assert set(i_s) == set(range(1, 7)) and set(it) == set(range(6))


def test_warm_start_makes_the_student_the_teachers_euler_jump():
    torch.manual_seed(0)
    teacher = edm()
    student = ctm()
    from policylab.policies.consistency_ctm import warm_start

    warm_start(student.model, teacher.model, "teacher")
    student.obs_encoder.load_state_dict(teacher.obs_encoder.state_dict())
    x, cond = torch.randn(4, T, 1) * 2, torch.randn(4, 1)
    t, s = torch.full((4,), 3.0), torch.full((4,), 0.4)
    euler = (s / t).reshape(-1, 1, 1) * x + (1 - s / t).reshape(-1, 1, 1) * teacher.denoiser(x, t, cond)
    torch.testing.assert_close(student.trajectory_fn(x, t, s, cond), euler, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="does not match"):
        warm_start(ctm(model=partial(tiny_unet, down_dims=[8, 16])).model, teacher.model, "teacher")


def test_chained_sampling_costs_one_evaluation_per_level():
    torch.manual_seed(0)
    policy = ctm(inference_sigmas=[80.0, 0.8, 0.2])
    calls = []
    policy.model.register_forward_hook(lambda *args: calls.append(1))
    obs = {"state": torch.zeros(3, TO, 1)}
    a = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))["action_pred"]
    assert len(calls) == 3 == policy.num_function_evals()
    cond = policy.encode_obs(policy.normalize_obs(obs))
    assert not torch.equal(policy.sample(cond, torch.Generator().manual_seed(0), sigmas=[80.0]), a)
    assert a.abs().max() <= 1.0


def test_ctm_errors_are_clear():
    policy = ctm()
    batch = {"obs": {"state": torch.zeros(2, TO, 1)}, "action": torch.zeros(2, T, 1)}
    with pytest.raises(RuntimeError, match="teacher is not loaded"):
        policy.compute_loss(batch)
    with pytest.raises(ValueError, match="policy.teacher"):
        policy.on_train_start()
    with pytest.raises(ValueError, match="inference_sigmas"):
        ctm(inference_sigmas=[0.2, 80.0])
    with pytest.raises(ValueError, match="num_bins"):
        ctm(num_bins=1)
    with pytest.raises(ValueError, match="endpoint_batch"):
        ctm(endpoint_batch=0)
    with pytest.raises(ValueError, match="ctm_weight=0"):  # endpoint-only: no chain was trained
        ctm(ctm_weight=0.0, inference_sigmas=[80.0, 0.8, 0.2])
    ctm(ctm_weight=0.0, inference_sigmas=[80.0])


@pytest.mark.parametrize("task", ["state", "image"])
def test_cpu_experiments_of_teacher_and_student_share_the_benchmark_backbone(task):
    from tests.helpers import compose_config

    teacher, student = (compose_config([f"experiment=pusht_{task}_cpu_{m}"]) for m in ("edm", "ctm"))
    assert student.policy.model == teacher.policy.model
    assert student.policy.obs_encoder == teacher.policy.obs_encoder
    assert student.task.name == teacher.task.name == f"pusht_{'lowdim' if task == 'state' else 'image'}"
    assert (student.horizon, student.n_obs_steps, student.n_action_steps) == (
        teacher.horizon, teacher.n_obs_steps, teacher.n_action_steps)
    noise = ("sigma_min", "sigma_max", "sigma_data", "rho")
    assert all(teacher.policy[k] == student.policy[k] for k in noise)
    if task == "state":  # the DDPM teacher of the same benchmark has the same network
        assert compose_config(["experiment=pusht_state_cpu"]).policy.model == teacher.policy.model


def test_one_step_experiment_is_the_ctm_experiment_on_the_endpoint_term_alone():
    from tests.helpers import compose_config

    ctm_cfg, onestep = (compose_config([f"experiment={name}"])
                        for name in ("pusht_state_cpu_ctm", "pusht_state_cpu_ctm_onestep"))
    assert onestep.policy.model == ctm_cfg.policy.model and onestep.task.name == ctm_cfg.task.name
    assert (onestep.policy.ctm_weight, onestep.policy.dsm_weight, onestep.policy.endpoint_weight) == (0, 0, 1)
    assert list(onestep.policy.inference_sigmas) == [80.0] and onestep.optimizer.lr == 1e-3
