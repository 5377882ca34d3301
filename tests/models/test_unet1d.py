import pytest
import torch

from policylab.models.unet1d import ConditionalResidualBlock1D, ConditionalUnet1D

TINY = {"diffusion_step_embed_dim": 16, "down_dims": (16, 32, 64), "kernel_size": 3, "n_groups": 4}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_param_count_matches_diffusion_policy_pusht_state_config():
    # DP's train_diffusion_unet_lowdim_workspace on pusht_lowdim: action dim 2, global cond
    # 20 obs dims x To 2 = 40, dsed 256, down_dims [256, 512, 1024], kernel 5, 8 groups, FiLM.
    # 65,783,298 is what instantiating DP's own ConditionalUnet1D gives (reference §2.1).
    with torch.device("meta"):
        unet = ConditionalUnet1D(input_dim=2, global_cond_dim=40)
    assert n_params(unet) == 65_783_298


def test_param_count_matches_diffusion_policy_pusht_image_config():
    # DP-C hybrid image PushT: dsed 128, down_dims [512, 1024, 2048], global cond (64+2) x 2.
    with torch.device("meta"):
        unet = ConditionalUnet1D(
            input_dim=2, global_cond_dim=132, diffusion_step_embed_dim=128,
            down_dims=(512, 1024, 2048),
        )
    assert n_params(unet) == 251_511_938


def test_keeps_diffusion_policy_parameter_names():
    unet = ConditionalUnet1D(2, local_cond_dim=3, global_cond_dim=4, **TINY)
    keys = set(unet.state_dict())
    for key in [
        "diffusion_step_encoder.1.weight",
        "diffusion_step_encoder.3.bias",
        "local_cond_encoder.1.cond_encoder.1.weight",
        "down_modules.0.0.blocks.0.block.0.weight",
        "down_modules.0.0.blocks.0.block.1.weight",
        "down_modules.0.0.residual_conv.weight",
        "down_modules.0.2.conv.weight",
        "mid_modules.1.cond_encoder.1.bias",
        "up_modules.0.0.residual_conv.weight",
        "up_modules.1.2.conv.weight",
        "final_conv.0.block.0.weight",
        "final_conv.1.weight",
    ]:
        assert key in keys


@pytest.mark.parametrize("timestep", [3, 3.0, torch.tensor(3), torch.tensor([3, 3])])
def test_forward_shape_and_timestep_forms(timestep):
    torch.manual_seed(0)
    unet = ConditionalUnet1D(2, global_cond_dim=4, **TINY).eval()
    sample, cond = torch.randn(2, 8, 2), torch.randn(2, 4)
    out = unet(sample, timestep, global_cond=cond)
    assert out.shape == (2, 8, 2)
    torch.testing.assert_close(out, unet(sample, torch.tensor([3, 3]), global_cond=cond))


def test_horizon_must_be_multiple_of_downsampling():
    unet = ConditionalUnet1D(2, global_cond_dim=4, **TINY)
    with pytest.raises(ValueError, match="multiple of 4"):
        unet(torch.randn(1, 10, 2), 0, global_cond=torch.randn(1, 4))


def test_missing_global_cond_is_an_error():
    unet = ConditionalUnet1D(2, global_cond_dim=4, **TINY)
    with pytest.raises(ValueError, match="global_cond"):
        unet(torch.randn(1, 8, 2), 0)


@pytest.mark.parametrize("film_scale", [True, False])
def test_film_path(film_scale):
    block = ConditionalResidualBlock1D(4, 8, cond_dim=5, kernel_size=3, n_groups=2,
                                       cond_predict_scale=film_scale)
    # FiLM predicts a scale and a bias per channel; without it a bias only.
    assert block.cond_encoder[1].out_features == (16 if film_scale else 8)
    torch.manual_seed(0)
    unet = ConditionalUnet1D(2, global_cond_dim=4, cond_predict_scale=film_scale, **TINY).eval()
    sample = torch.randn(2, 8, 2)
    out_a = unet(sample, 1, global_cond=torch.zeros(2, 4))
    out_b = unet(sample, 1, global_cond=torch.ones(2, 4))
    assert not torch.allclose(out_a, out_b)


def test_local_cond_reaches_output_through_both_encoders():
    torch.manual_seed(0)
    unet = ConditionalUnet1D(2, local_cond_dim=3, global_cond_dim=4, **TINY)
    sample, local, glob = torch.randn(2, 8, 2), torch.randn(2, 8, 3), torch.randn(2, 4)
    unet(sample, 1, local_cond=local, global_cond=glob).square().sum().backward()
    # In DP the second (up-path) encoder never contributed, so its gradient was None.
    for encoder in unet.local_cond_encoder:
        grad = encoder.blocks[0].block[0].weight.grad
        assert grad is not None
        assert grad.abs().sum() > 0


def test_local_cond_changes_output():
    torch.manual_seed(0)
    unet = ConditionalUnet1D(2, local_cond_dim=3, **TINY).eval()
    sample = torch.randn(2, 8, 2)
    out_a = unet(sample, 1, local_cond=torch.zeros(2, 8, 3))
    out_b = unet(sample, 1, local_cond=torch.ones(2, 8, 3))
    assert out_a.shape == (2, 8, 2)
    assert not torch.allclose(out_a, out_b)


def test_two_level_unet():
    unet = ConditionalUnet1D(3, local_cond_dim=1, down_dims=(8, 16), diffusion_step_embed_dim=8,
                             kernel_size=3, n_groups=2)
    assert unet(torch.randn(2, 6, 3), 0, local_cond=torch.randn(2, 6, 1)).shape == (2, 6, 3)
