"""ConRFT's critic image encoder: frozen ResNet-v1 trunk (no gradient, always eval) + trained head."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from policylab.models.encoders.frozen_resnet import (
    FrozenTrunkEncoder,
    ResNetV1Trunk,
    SpatialLearnedEmbeddings,
)


def make_encoder(**kwargs) -> FrozenTrunkEncoder:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FrozenTrunkEncoder(**{"image_shape": (3, 64, 64), **kwargs})


@pytest.fixture(scope="module")
def encoder() -> FrozenTrunkEncoder:
    return make_encoder()


def images(batch=2, size=(64, 64), seed=0) -> torch.Tensor:
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def test_parameter_counts_are_serls():
    # conv_init 9,408 + norm_init 128 + blocks 73,984 / 230,144 / 919,040 / 3,673,088.
    with torch.device("meta"):  # shapes only
        resnet10, resnet18 = ResNetV1Trunk((1, 1, 1, 1)), ResNetV1Trunk((2, 2, 2, 2))
    assert sum(p.numel() for p in resnet10.parameters()) == 4_905_792
    assert sum(p.numel() for p in resnet18.parameters()) == 11_176_512  # torchvision's ResNet-18 without fc: GN and BN have as many
    assert ResNetV1Trunk().state_dict().keys() >= {"blocks.1.conv_proj.weight", "blocks.3.norm_proj.bias"}
    assert "blocks.0.conv_proj.weight" not in ResNetV1Trunk().state_dict()  # 64 -> 64, stride 1


@pytest.mark.parametrize("trunk,image_shape,feature_shape", [
    ("resnet10", (3, 128, 128), (512, 4, 4)),  # ConRFT's 128 x 128 cameras
    ("resnet18", (3, 96, 80), (512, 3, 3)),
])
def test_shapes(trunk, image_shape, feature_shape):
    encoder = make_encoder(image_shape=image_shape, trunk=trunk).eval()
    x = images(3, image_shape[1:])
    features = encoder.trunk_features(x)
    assert features.shape == (3, *feature_shape) == (3, *encoder.feature_shape)
    out = encoder(x)
    assert out.shape == (3, 256) and encoder.output_dim() == 256
    assert out.abs().max() < 1
    assert encoder.spatial.kernel.shape == (feature_shape[1], feature_shape[2], 512, 8)
    assert encoder.dense.in_features == 512 * 8


def test_no_gradient_reaches_the_trunk(encoder):
    encoder.zero_grad(set_to_none=True)
    encoder.train()
    x = images().requires_grad_(True)
    assert all(not p.requires_grad for p in encoder.trunk.parameters())
    features = encoder.trunk_features(x)
    assert not features.requires_grad and features.grad_fn is None
    encoder(x).square().sum().backward()
    assert all(p.grad is None for p in encoder.trunk.parameters())
    assert x.grad is None
    head = [encoder.spatial.kernel, encoder.dense.weight, encoder.dense.bias, encoder.norm.weight]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head)
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {"spatial.kernel", "dense.weight", "dense.bias", "norm.weight", "norm.bias"}


def test_train_mode_never_reaches_the_trunk(encoder):
    parent = nn.Sequential(encoder)
    for module in (encoder, parent):
        module.train()
        assert encoder.training and encoder.dropout.training
        assert not any(m.training for m in encoder.trunk.modules())
    parent.eval()
    assert not encoder.training and not any(m.training for m in encoder.trunk.modules())


def test_dropout_in_train_mode_only(encoder):
    x = images()
    torch.manual_seed(0)
    encoder.train()
    assert not torch.equal(encoder(x), encoder(x))
    encoder.eval()
    torch.testing.assert_close(encoder(x), encoder(x), rtol=0, atol=0)


def test_head_on_cached_features_equals_encoding_on_the_fly(encoder):
    encoder.eval()
    x = images(4)
    cached = encoder.trunk_features(x).clone()
    torch.testing.assert_close(encoder.head(cached), encoder(x), rtol=0, atol=0)
    torch.testing.assert_close(encoder.head(cached[1:3]), encoder(x)[1:3])


def test_spatial_learned_embeddings_is_serls_sum():
    torch.manual_seed(0)
    layer = SpatialLearnedEmbeddings(channels=5, height=3, width=4, num_features=2)
    feats = torch.randn(2, 5, 3, 4)
    # SERL: sum over (H, W) of features[..., None] (B, H, W, C, 1) * kernel[None] (1, H, W, C, F),
    # flattened to (B, C * F).
    nhwc = feats.permute(0, 2, 3, 1).numpy()[..., None]
    expected = (nhwc * layer.kernel.detach().numpy()[None]).sum(axis=(1, 2)).reshape(2, -1)
    np.testing.assert_allclose(layer(feats).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_inits_are_flaxs(encoder):
    torch.manual_seed(0)
    layer = SpatialLearnedEmbeddings(channels=512, height=4, width=4, num_features=8)
    std = (1 / (4 * 4 * 512)) ** 0.5  # lecun_normal: variance 1 / fan_in
    kernel = layer.kernel.detach()
    assert abs(kernel.std().item() / std - 1) < 0.02
    assert kernel.abs().max() <= 2 * std / 0.87962566103423978 + 1e-7
    conv = ResNetV1Trunk().blocks[3].conv_0.weight.detach()  # kaiming_normal: 2 / fan_in
    assert abs(conv.std().item() / (2 / (256 * 9)) ** 0.5 - 1) < 0.02
    assert torch.count_nonzero(encoder.dense.bias) == 0 and encoder.norm.eps == 1e-6


def test_bad_input_is_named(encoder):
    encoder.eval()
    with pytest.raises(ValueError, match=r"images must be \(B, 3, 64, 64\), got \(2, 3, 32, 32\)"):
        encoder(images(size=(32, 32)))
    with pytest.raises(ValueError, match=r"trunk features must be \(B, 512, 2, 2\), got \(2, 512, 4, 4\)"):
        encoder.head(torch.zeros(2, 512, 4, 4))
    with pytest.raises(ValueError, match="unknown trunk 'resnet50'"):
        make_encoder(trunk="resnet50")
    with pytest.raises(ValueError, match=r"image_shape must be \(3, H, W\)"):
        make_encoder(image_shape=(64, 64, 3))


def test_random_trunk_warns():
    with pytest.warns(UserWarning, match="no trunk_weights.*random init"):
        FrozenTrunkEncoder((3, 64, 64))
