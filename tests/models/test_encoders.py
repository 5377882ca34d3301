import pytest
import torch
from torch import nn

from policylab.models.encoders.crop import ImageCrop, center_crop, random_crop
from policylab.models.encoders.multi_image import MultiImageObsEncoder
from policylab.models.encoders.resnet import (
    ResNetImageEncoder,
    SpatialSoftmax,
    resnet18,
    resnet34,
    resnet50,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "factory, with_fc, n_keys",
    # Parameter counts and state_dict sizes of torchvision.models.resnet{18,34,50}().
    [(resnet18, 11_689_512, 122), (resnet34, 21_797_672, 218), (resnet50, 25_557_032, 320)],
)
def test_resnet_param_counts_match_torchvision(factory, with_fc, n_keys):
    with torch.device("meta"):
        model = factory(num_classes=1000)
        assert n_params(model) == with_fc
        assert len(model.state_dict()) == n_keys
        headless = factory()
    assert n_params(headless) == with_fc - (model.fc.in_features * 1000 + 1000)
    assert not any(k.startswith("fc.") for k in headless.state_dict())


def test_resnet18_state_dict_keys_follow_torchvision_naming():
    state = resnet18(num_classes=1000).state_dict()
    shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_mean": (64,),
        "bn1.num_batches_tracked": (),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.1.bn2.running_var": (64,),
        "layer2.0.conv1.weight": (128, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.running_var": (128,),
        "layer4.1.conv2.weight": (512, 512, 3, 3),
        "layer4.1.bn2.num_batches_tracked": (),
        "fc.weight": (1000, 512),
        "fc.bias": (1000,),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    # Every key is one of torchvision's patterns: stem, layerS.B.{conv,bn}N, downsample, fc.
    stems = {k.split(".")[0] for k in state}
    assert stems == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"}


def test_resnet50_bottleneck_keys():
    with torch.device("meta"):
        state = resnet50().state_dict()
    assert tuple(state["layer1.0.conv3.weight"].shape) == (256, 64, 1, 1)
    assert tuple(state["layer1.0.downsample.0.weight"].shape) == (256, 64, 1, 1)
    assert tuple(state["layer2.0.conv2.weight"].shape) == (128, 128, 3, 3)  # stride on the 3x3


def test_local_weights_file_loads_and_fc_is_dropped(tmp_path):
    source = resnet18(num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)  # the format of torchvision's weight files
    loaded = resnet18(weights=path)
    assert loaded.fc is None
    torch.testing.assert_close(loaded.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    torch.testing.assert_close(loaded.bn1.running_var, source.bn1.running_var)


def test_group_norm_replaces_every_batchnorm():
    model = resnet18(use_group_norm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 20  # stem + 2 per block x 8 blocks + 3 downsamples
    assert all(m.num_groups == m.num_channels // 16 for m in norms)
    assert isinstance(model.layer2[0].downsample[1], nn.GroupNorm)
    # No running statistics: train and eval compute the same function.
    image = torch.rand(2, 3, 32, 32)
    out_train = model.train()(image)
    torch.testing.assert_close(out_train, model.eval()(image))


def test_spatial_softmax_finds_the_peak():
    pool = SpatialSoftmax(in_channels=1, num_kp=1, temperature=0.01)
    with torch.no_grad():
        pool.nets.weight.fill_(1.0)
        pool.nets.bias.zero_()
    feature = torch.zeros(1, 1, 5, 9)
    feature[0, 0, 4, 0] = 10.0  # bottom-left corner
    torch.testing.assert_close(pool(feature), torch.tensor([[[-1.0, 1.0]]]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("pool, dim", [("spatial_softmax", 64), ("avg", 512)])
def test_image_encoder_pools(pool, dim):
    encoder = ResNetImageEncoder("resnet18", pool=pool)
    assert encoder.output_dim == dim
    assert encoder(torch.rand(2, 3, 40, 40)).shape == (2, dim)


def test_center_crop_is_exact():
    images = torch.arange(2 * 1 * 6 * 8, dtype=torch.float32).reshape(2, 1, 6, 8)
    torch.testing.assert_close(center_crop(images, (2, 4)), images[:, :, 2:4, 2:6])


def test_random_crop_windows_are_valid_and_varied():
    images = torch.arange(10 * 10, dtype=torch.float32).reshape(1, 1, 10, 10).expand(200, 2, 10, 10)
    crops = random_crop(images, (4, 4), generator=torch.Generator().manual_seed(0))
    assert crops.shape == (200, 2, 4, 4)
    tops, lefts = crops[:, 0, 0, 0] // 10, crops[:, 0, 0, 0] % 10
    # Each crop is a contiguous window of its image, channels aligned.
    window = torch.arange(4)[:, None] * 10 + torch.arange(4)
    expected = (tops * 10 + lefts)[:, None, None] + window
    torch.testing.assert_close(crops[:, 0], expected)
    torch.testing.assert_close(crops[:, 1], crops[:, 0])
    # Every offset 0..6 occurs, including the last one (robomimic never samples it).
    assert set(tops.long().tolist()) == set(range(7))
    assert set(lefts.long().tolist()) == set(range(7))


def test_crop_module_train_vs_eval():
    images = torch.rand(16, 3, 12, 12)
    crop = ImageCrop((12, 12), (8, 8), random_crop=True)
    expected_center = images[:, :, 2:10, 2:10]
    assert not torch.equal(crop.train()(images), expected_center)
    assert torch.equal(crop.eval()(images), expected_center)
    # random_crop=False center-crops in training too (DP applied no crop at all here).
    fixed = ImageCrop((12, 12), (8, 8), random_crop=False).train()
    assert torch.equal(fixed(images), expected_center)


SHAPE_META = {
    "obs": {
        "wrist": {"shape": [3, 24, 24], "type": "rgb"},
        "agent_pos": {"shape": [2], "type": "low_dim"},
        "image": {"shape": [3, 24, 24], "type": "rgb"},
    },
    "action": {"shape": [2]},
}


def make_obs(batch: int = 2) -> dict:
    return {"image": torch.rand(batch, 3, 24, 24), "wrist": torch.rand(batch, 3, 24, 24),
            "agent_pos": torch.rand(batch, 2)}


def test_multi_image_encoder_per_camera():
    encoder = MultiImageObsEncoder(SHAPE_META, crop_shape=(20, 20))
    assert encoder.rgb_keys == ["image", "wrist"]
    assert encoder.low_dim_keys == ["agent_pos"]
    assert set(encoder.key_model_map) == {"image", "wrist"}
    assert encoder.output_dim() == 64 * 2 + 2
    obs = make_obs()
    out = encoder(obs)
    assert out.shape == (2, 130)
    # Layout: [image features, wrist features, agent_pos].
    torch.testing.assert_close(out[:, -2:], obs["agent_pos"])
    encoder.eval()
    image_only = encoder.key_model_map["image"](encoder.key_transform_map["image"](obs["image"]))
    torch.testing.assert_close(encoder(obs)[:, :64], image_only)


def test_multi_image_encoder_shared_model():
    encoder = MultiImageObsEncoder(SHAPE_META, share_rgb_model=True, pool="avg",
                                   crop_shape=(20, 20)).eval()
    assert set(encoder.key_model_map) == {"rgb"}
    per_camera = MultiImageObsEncoder(SHAPE_META, pool="avg", crop_shape=(20, 20))
    assert n_params(per_camera) == 2 * n_params(encoder)
    obs = make_obs()
    out = encoder(obs)
    assert out.shape == (2, 512 * 2 + 2)
    assert encoder.output_dim() == 1026
    model = encoder.key_model_map["rgb"]
    wrist = model(encoder.key_transform_map["wrist"](obs["wrist"]))
    torch.testing.assert_close(out[:, 512:1024], wrist, atol=1e-5, rtol=1e-5)


def test_multi_image_encoder_transforms():
    encoder = MultiImageObsEncoder(
        SHAPE_META, resize_shape={"image": (32, 32), "wrist": (24, 24)}, crop_shape=(16, 16),
        random_crop=False, imagenet_norm=True,
    ).train()
    images = torch.rand(2, 3, 24, 24)
    # With random_crop=False the crop is a center crop even in training mode.
    wrist = encoder.key_transform_map["wrist"](images)
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    torch.testing.assert_close(wrist, (images[:, :, 4:20, 4:20] - mean) / std)
    assert encoder.key_transform_map["image"](images).shape == (2, 3, 16, 16)
    assert "mean" not in " ".join(encoder.state_dict())


def test_multi_image_encoder_checks_shapes():
    encoder = MultiImageObsEncoder(SHAPE_META, pool="avg")
    obs = make_obs()
    obs["agent_pos"] = torch.rand(2, 3)
    with pytest.raises(ValueError, match="agent_pos"):
        encoder(obs)
    with pytest.raises(ValueError, match="share_rgb_model"):
        MultiImageObsEncoder(SHAPE_META, share_rgb_model=True,
                             crop_shape={"image": (20, 20), "wrist": (16, 16)})


def test_spatial_softmax_encoder_param_count_matches_dp_hybrid_camera():
    # DP-C image (robomimic VisualCore): ResNet-18 trunk 11,176,512 + 1x1 conv 512->32 16,416
    # + Linear 64->64 4,160 per camera (reference §2.2).
    with torch.device("meta"):
        encoder = ResNetImageEncoder("resnet18", use_group_norm=True, pool="spatial_softmax")
    assert n_params(encoder) == 11_197_088


def test_pusht_image_feature_dim():
    shape_meta = {"obs": {"image": {"shape": [3, 96, 96], "type": "rgb"},
                          "agent_pos": {"shape": [2], "type": "low_dim"}},
                  "action": {"shape": [2]}}
    encoder = MultiImageObsEncoder(shape_meta, crop_shape=(84, 84))
    assert encoder.output_dim() == 66  # global_cond_dim = 66 x To 2 = 132, as in DP
