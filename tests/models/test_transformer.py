import pytest
import torch

from policylab.models.transformer import TransformerForDiffusion

TINY = {"n_layer": 2, "n_head": 2, "n_emb": 16, "p_drop_emb": 0.0, "p_drop_attn": 0.0}


def test_param_count_matches_diffusion_policy_pusht_lowdim():
    # DP's train_diffusion_transformer_lowdim_pusht_workspace: 20 obs dims, To 2, horizon 16.
    # Analytic: 8 decoder layers x 1,053,440 + MLP cond encoder 525,568 + embeddings/head 11,034.
    with torch.device("meta"):
        model = TransformerForDiffusion(
            input_dim=2, output_dim=2, horizon=16, n_obs_steps=2, cond_dim=20,
            n_layer=8, n_head=4, n_emb=256, causal_attn=True,
        )
    assert sum(p.numel() for p in model.parameters()) == 8_965_122


def test_keeps_diffusion_policy_parameter_names():
    model = TransformerForDiffusion(2, 3, horizon=8, n_obs_steps=2, cond_dim=5,
                                    causal_attn=True, **TINY)
    keys = set(model.state_dict())
    for key in ["input_emb.weight", "pos_emb", "cond_obs_emb.weight", "cond_pos_emb",
                "encoder.0.weight", "encoder.2.bias",
                "decoder.layers.1.multihead_attn.in_proj_weight",
                "ln_f.weight", "head.bias", "mask", "memory_mask"]:
        assert key in keys


@pytest.mark.parametrize(
    "kwargs, cond_shape",
    [
        ({"cond_dim": 5, "n_obs_steps": 2}, (4, 2, 5)),
        ({"cond_dim": 5, "n_obs_steps": 2, "n_cond_layers": 1}, (4, 2, 5)),
        ({}, None),
        ({"time_as_cond": False}, None),
    ],
)
def test_forward_shapes(kwargs, cond_shape):
    model = TransformerForDiffusion(2, 3, horizon=8, causal_attn=True, **TINY, **kwargs)
    cond = None if cond_shape is None else torch.randn(cond_shape)
    assert model(torch.randn(4, 8, 2), torch.tensor([0, 1, 2, 3]), cond).shape == (4, 8, 3)
    assert model(torch.randn(4, 8, 2), 5, cond).shape == (4, 8, 3)


@pytest.mark.parametrize("time_as_cond", [True, False])
def test_causal_mask_future_actions_do_not_change_earlier_outputs(time_as_cond):
    torch.manual_seed(0)
    cond_kwargs = {"cond_dim": 5, "n_obs_steps": 2} if time_as_cond else {}
    model = TransformerForDiffusion(2, 2, horizon=8, causal_attn=True, time_as_cond=time_as_cond,
                                    **TINY, **cond_kwargs).eval()
    cond = torch.randn(3, 2, 5) if time_as_cond else None
    sample = torch.randn(3, 8, 2)
    changed = sample.clone()
    changed[:, 5] += 1.0
    out, out_changed = model(sample, 7, cond), model(changed, 7, cond)
    torch.testing.assert_close(out[:, :5], out_changed[:, :5])
    assert not torch.allclose(out[:, 5:], out_changed[:, 5:])


def test_memory_mask_hides_later_observations():
    torch.manual_seed(0)
    model = TransformerForDiffusion(2, 2, horizon=8, n_obs_steps=2, cond_dim=5,
                                    causal_attn=True, **TINY).eval()
    sample, cond = torch.randn(3, 8, 2), torch.randn(3, 2, 5)
    changed = cond.clone()
    changed[:, 1] += 1.0
    out, out_changed = model(sample, 7, cond), model(sample, 7, changed)
    # Action token 0 sees the time token and obs 0 only.
    torch.testing.assert_close(out[:, 0], out_changed[:, 0])
    assert not torch.allclose(out[:, 1:], out_changed[:, 1:])


def test_non_causal_attention_sees_the_future():
    torch.manual_seed(0)
    model = TransformerForDiffusion(2, 2, horizon=8, causal_attn=False, **TINY).eval()
    assert model.mask is None
    assert "mask" not in model.state_dict()
    sample = torch.randn(3, 8, 2)
    changed = sample.clone()
    changed[:, 5] += 1.0
    assert not torch.allclose(model(sample, 7)[:, 0], model(changed, 7)[:, 0])


def test_optim_groups_split_decay_and_no_decay():
    model = TransformerForDiffusion(2, 2, horizon=8, n_obs_steps=2, cond_dim=5, **TINY)
    decay, no_decay = model.get_optim_groups(weight_decay=0.1)
    assert decay["weight_decay"] == 0.1
    assert no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay_names | no_decay_names == set(names.values())
    assert not decay_names & no_decay_names
    assert {"input_emb.weight", "head.weight", "decoder.layers.0.self_attn.in_proj_weight",
            "decoder.layers.0.self_attn.out_proj.weight"} <= decay_names
    assert {"pos_emb", "cond_pos_emb", "ln_f.weight", "head.bias",
            "decoder.layers.0.norm1.weight",
            "decoder.layers.0.self_attn.in_proj_bias"} <= no_decay_names
    torch.optim.AdamW(model.get_optim_groups(), lr=1e-4)


def test_obs_as_cond_contradiction_raises():
    with pytest.raises(ValueError):
        TransformerForDiffusion(2, 2, horizon=8, cond_dim=0, obs_as_cond=True, **TINY)
    with pytest.raises(ValueError):
        TransformerForDiffusion(2, 2, horizon=8, cond_dim=5, time_as_cond=False, **TINY)
