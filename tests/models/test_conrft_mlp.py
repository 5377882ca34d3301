"""ConRFT's actor network: shapes, ConRFT's parameter count, time embedding, init, the consistency
boundary condition through the policy, and ConRFT's constants in config/policy/conrft_actor."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn

from policylab.data.normalizer import LinearNormalizer, SingleFieldLinearNormalizer
from policylab.models.conrft_mlp import ConRFTMLP
from policylab.policies.consistency import ConsistencyBCPolicy
from tests.helpers import compose_config


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("horizon", [1, 2, 8])
@pytest.mark.parametrize("cond_proj_dim", [64, None])
def test_shapes(horizon, cond_proj_dim):
    model = ConRFTMLP(input_dim=4, global_cond_dim=14, horizon=horizon, cond_proj_dim=cond_proj_dim)
    sample, cond = torch.randn(5, horizon, 4), torch.randn(5, 14)
    assert model(sample, torch.randn(5), global_cond=cond).shape == (5, horizon, 4)
    assert model(sample, 3.0, global_cond=cond).shape == (5, horizon, 4)  # one timestep for the batch


def test_wrong_shapes_are_named():
    model = ConRFTMLP(input_dim=4, global_cond_dim=14, horizon=2)
    with pytest.raises(ValueError, match="T=2"):
        model(torch.randn(3, 8, 4), torch.zeros(3), global_cond=torch.randn(3, 14))
    with pytest.raises(ValueError, match="global_cond"):
        model(torch.randn(3, 2, 4), torch.zeros(3), global_cond=torch.randn(3, 13))


def test_parameter_count_is_conrfts():
    # ConRFT: 7-d action, o = [Octo embedding 384 ; proprio latent 64] = 448-d, one action.
    time = (16 * 32 + 32) + (32 * 16 + 16)                 # Dense 32, Dense 16
    trunk_in = 7 + 16 + 448                                # c_in x, time feature, o
    trunk = (trunk_in * 256 + 256) + 2 * 256 + (256 * 256 + 256) + 2 * 256  # Dense + LayerNorm, twice
    head = 256 * 7 + 7
    assert time + trunk + head == 190_519
    assert n_params(ConRFTMLP(7, 448, horizon=1, cond_proj_dim=None)) == 190_519
    # ConRFT's proprio Dense(64) + LayerNorm on its 2 x 19-d proprio, when the projection takes it
    proprio = ConRFTMLP(7, 38, horizon=1, cond_proj_dim=64)
    assert n_params(proprio.cond_proj) == 38 * 64 + 64 + 2 * 64


def test_time_embedding_matches_conrfts_formula():
    torch.manual_seed(0)
    model = ConRFTMLP(7, 448, horizon=1).double()
    sigma = 2.5
    tau = 250 * math.log(sigma)
    freqs = [math.exp(-i * math.log(1e4) / 7) for i in range(8)]
    expected = torch.tensor([math.sin(tau * f) for f in freqs] + [math.cos(tau * f) for f in freqs],
                            dtype=torch.float64)
    sinusoid = model.time_mlp[0](torch.tensor([tau], dtype=torch.float64))
    # the frequencies are float32 (as in ConRFT's JAX): ~1e-7 relative, times tau ~ 229
    torch.testing.assert_close(sinusoid[0], expected, rtol=0, atol=2e-5)
    dense_32, dense_16 = model.time_mlp[1], model.time_mlp[3]
    feature = dense_16.weight @ torch.tanh(dense_32.weight @ sinusoid[0] + dense_32.bias) + dense_16.bias
    torch.testing.assert_close(model.time_mlp(torch.tensor([tau], dtype=torch.float64))[0], feature)


def test_xavier_uniform_kernels_zero_biases_flax_layer_norm():
    torch.manual_seed(0)
    model = ConRFTMLP(7, 448, horizon=1)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 6  # time 2, condition projection 1, trunk 2, head 1
    for layer in linears:
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
        if layer.weight.numel() > 10_000:  # uniform(-b, b) has std b / sqrt(3)
            assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert all(m.eps == 1e-6 for m in model.modules() if isinstance(m, nn.LayerNorm))


SHAPE_META = {"obs": {"state": {"shape": [3], "type": "low_dim"}}, "action": {"shape": [7]}}


def conrft_policy(horizon: int, **kwargs) -> ConsistencyBCPolicy:
    model = partial(ConRFTMLP, horizon=horizon)
    policy = ConsistencyBCPolicy(SHAPE_META, horizon, 2, 1, model=model, **kwargs)
    normalizer = LinearNormalizer()
    normalizer["state"] = SingleFieldLinearNormalizer.create_identity(3)
    normalizer["action"] = SingleFieldLinearNormalizer.create_identity(7)
    policy.set_normalizer(normalizer)
    return policy


@pytest.mark.parametrize("horizon", [2, 8])
def test_policy_boundary_is_identity_exactly(horizon):
    torch.manual_seed(0)
    policy = conrft_policy(horizon, clip_denoised=False)
    x, cond = torch.randn(6, horizon, 7) * 3, torch.randn(6, 2 * 3)
    sigma = torch.full((6,), policy.sigma_min)
    assert torch.equal(policy.consistency_fn(x, sigma, cond), x)
    assert not torch.allclose(policy.consistency_fn(x, sigma * 100, cond), x)


def test_policy_one_step_actions_are_clipped_and_shaped():
    torch.manual_seed(0)
    policy = conrft_policy(2).eval()
    out = policy.predict_action({"state": torch.randn(4, 2, 3)})
    assert out["action"].shape == (4, 1, 7)
    assert out["action_pred"].shape == (4, 2, 7)
    assert out["action_pred"].abs().max() <= 1
    torch.testing.assert_close(out["action"], out["action_pred"][:, 1:2])


def test_conrft_actor_config_has_conrfts_constants():
    cfg = compose_config(["policy=conrft_actor"])
    p = cfg.policy
    assert p._target_ == "policylab.policies.consistency.ConsistencyBCPolicy"
    assert (p.num_scales, p.sigma_min, p.sigma_max, p.sigma_data, p.rho) == (40, 0.002, 80.0, 0.5, 7.0)
    assert list(p.inference_sigmas) == [80.0]
    assert p.clip_denoised
    assert p.bc_weight == 1.0
    m = p.model
    assert m._target_ == "policylab.models.conrft_mlp.ConRFTMLP"
    assert (list(m.hidden_dims), m.time_dim, m.cond_proj_dim) == ([256, 256], 16, 64)


def test_sft_experiment_acts_one_step_on_two_observations():
    cfg = compose_config(["experiment=conrft_pick_cube_sft"])
    assert (cfg.horizon, cfg.n_obs_steps, cfg.n_action_steps) == (2, 2, 1)
    assert cfg.task.name == "pick_cube_lowdim"
    assert cfg.policy.model.horizon == 2
