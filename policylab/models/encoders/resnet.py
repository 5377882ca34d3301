"""ResNet-18/34/50 written out, plus the pooling heads that turn its feature map into a vector.

The architecture and the state_dict keys are torchvision's (`conv1`, `bn1`, `layer1.0.conv1`,
`layer2.0.downsample.1.running_var`, `fc.weight`, ...), so a torchvision weights file on disk
loads with `load_state_dict`, without torchvision installed. Nothing is ever downloaded.
"""

import os
from collections.abc import Callable

import torch
from torch import nn

PathLike = str | os.PathLike

# Diffusion Policy (and robomimic) use GroupNorm with one group per 16 channels.
CHANNELS_PER_GROUP = 16
# Channels out of the stem and of each of the four stages, before the block expansion.
STEM_CHANNELS = 64
STAGE_CHANNELS = (64, 128, 256, 512)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 convs with a residual (ResNet-50). The stride sits on the 3x3 conv,
    as in torchvision ("ResNet v1.5")."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet. `num_classes=None` leaves out `fc`.

    `forward_features`: `(B, 3, H, W)` -> `(B, C, ceil(H/32), ceil(W/32))`, C = 512 * expansion.
    `forward`: the same, average-pooled to `(B, C)`, then `fc` when present.
    """

    def __init__(self, block: type[nn.Module], layers: tuple[int, int, int, int],
                 num_classes: int | None = None):
        super().__init__()
        self.inplanes = STEM_CHANNELS
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, STAGE_CHANNELS[0], layers[0], stride=1)
        self.layer2 = self._make_layer(block, STAGE_CHANNELS[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, STAGE_CHANNELS[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, STAGE_CHANNELS[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.out_channels = STAGE_CHANNELS[3] * block.expansion
        self.fc = nn.Linear(self.out_channels, num_classes) if num_classes is not None else None
        self._init_weights()

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int,
                    stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # torchvision's init; its Linear keeps PyTorch's default.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.forward_features(x)), 1)
        return x if self.fc is None else self.fc(x)


def replace_batchnorm_with_groupnorm(module: nn.Module,
                                     channels_per_group: int = CHANNELS_PER_GROUP) -> nn.Module:
    """Swap every BatchNorm2d(C) for a fresh GroupNorm(C // channels_per_group, C), in place.

    GroupNorm keeps train and eval identical and has no running statistics, which is what an
    EMA copy and small, correlated robot batches need. As in Diffusion Policy, pretrained BN
    statistics and affine parameters are dropped, not carried over.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            channels = child.num_features
            setattr(module, name, nn.GroupNorm(channels // channels_per_group, channels))
        else:
            replace_batchnorm_with_groupnorm(child, channels_per_group)
    return module


def load_weights_file(path: PathLike) -> dict[str, torch.Tensor]:
    """A state_dict from a local `.safetensors` file or a torch file (e.g. torchvision's `.pth`),
    loaded without unpickling code."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _build(block: type[nn.Module], layers: tuple[int, int, int, int], weights: PathLike | None,
           use_group_norm: bool, num_classes: int | None) -> ResNet:
    model = ResNet(block, layers, num_classes=num_classes)
    if weights is not None:
        state = load_weights_file(weights)
        if model.fc is None:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        model.load_state_dict(state)
    if use_group_norm:
        replace_batchnorm_with_groupnorm(model)
    return model


def resnet18(weights: PathLike | None = None, use_group_norm: bool = False,
             num_classes: int | None = None) -> ResNet:
    """ResNet-18 (11,689,512 parameters with a 1000-way fc, 11,176,512 without)."""
    return _build(BasicBlock, (2, 2, 2, 2), weights, use_group_norm, num_classes)


def resnet34(weights: PathLike | None = None, use_group_norm: bool = False,
             num_classes: int | None = None) -> ResNet:
    """ResNet-34 (21,797,672 parameters with a 1000-way fc)."""
    return _build(BasicBlock, (3, 4, 6, 3), weights, use_group_norm, num_classes)


def resnet50(weights: PathLike | None = None, use_group_norm: bool = False,
             num_classes: int | None = None) -> ResNet:
    """ResNet-50 (25,557,032 parameters with a 1000-way fc)."""
    return _build(Bottleneck, (3, 4, 6, 3), weights, use_group_norm, num_classes)


RESNETS: dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
}


class SpatialSoftmax(nn.Module):
    """Keypoints from a feature map (robomimic's SpatialSoftmax, arXiv:1509.06113).

    A 1x1 conv maps `(B, C, h, w)` to `num_kp` heatmaps; each becomes, through a softmax over
    pixels, the expected (x, y) position in [-1, 1]. Output `(B, num_kp, 2)`, x first.
    """

    def __init__(self, in_channels: int, num_kp: int = 32, temperature: float = 1.0,
                 learnable_temperature: bool = False):
        super().__init__()
        self.nets = nn.Conv2d(in_channels, num_kp, kernel_size=1)
        self.num_kp = num_kp
        temperature = torch.tensor([float(temperature)])
        if learnable_temperature:
            self.temperature = nn.Parameter(temperature)
        else:
            self.register_buffer("temperature", temperature)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        heatmaps = self.nets(feature)
        B, K, h, w = heatmaps.shape
        attention = torch.softmax(heatmaps.reshape(B, K, h * w) / self.temperature, dim=-1)
        # The grid follows the feature map's size, so one module serves any image size.
        pos_y, pos_x = torch.meshgrid(
            torch.linspace(-1.0, 1.0, h, device=feature.device, dtype=attention.dtype),
            torch.linspace(-1.0, 1.0, w, device=feature.device, dtype=attention.dtype),
            indexing="ij",
        )
        expected_x = (attention * pos_x.reshape(1, 1, -1)).sum(-1)
        expected_y = (attention * pos_y.reshape(1, 1, -1)).sum(-1)
        return torch.stack([expected_x, expected_y], dim=-1)


class ResNetImageEncoder(nn.Module):
    """ResNet trunk + pooling: image `(B, 3, H, W)` -> feature `(B, output_dim)`.

    - `pool="spatial_softmax"` (the Diffusion Policy paper's encoder, via robomimic):
      SpatialSoftmax(num_keypoints) -> flatten -> Linear to `feature_dim`.
    - `pool="avg"` (DP's `MultiImageObsEncoder`): global average pooling, `output_dim` = the
      trunk's channels (512 for ResNet-18/34, 2048 for ResNet-50); `feature_dim` is unused.
    `feature_activation="relu"` ends with a ReLU, as robomimic's `ObservationEncoder` does after
    every camera's features (so DP's hybrid image policy has one); None (default) ends linear.
    """

    def __init__(self, name: str = "resnet18", weights: PathLike | None = None,
                 use_group_norm: bool = True, pool: str = "spatial_softmax",
                 num_keypoints: int = 32, feature_dim: int = 64, feature_activation: str | None = None):
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown ResNet {name!r}; choose from {sorted(RESNETS)}")
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose from {sorted(POOLS)}")
        self.backbone = RESNETS[name](weights=weights, use_group_norm=use_group_norm)
        self.pool, self.output_dim = POOLS[pool](self.backbone.out_channels, num_keypoints,
                                                 feature_dim)
        if feature_activation not in FEATURE_ACTIVATIONS:
            raise ValueError(f"unknown feature_activation {feature_activation!r}; choose from "
                             f"{sorted(FEATURE_ACTIVATIONS, key=str)}")
        if feature_activation is not None:
            # Appended to the pool, so the pool's parameter names do not move.
            self.pool.append(FEATURE_ACTIVATIONS[feature_activation]())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.pool(self.backbone.forward_features(image))


def _spatial_softmax_pool(channels: int, num_keypoints: int,
                          feature_dim: int) -> tuple[nn.Module, int]:
    pool = nn.Sequential(
        SpatialSoftmax(channels, num_kp=num_keypoints),
        nn.Flatten(start_dim=1),
        nn.Linear(2 * num_keypoints, feature_dim),
    )
    return pool, feature_dim


def _avg_pool(channels: int, num_keypoints: int, feature_dim: int) -> tuple[nn.Module, int]:
    return nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(start_dim=1)), channels


FEATURE_ACTIVATIONS: dict[str | None, type[nn.Module] | None] = {None: None, "relu": nn.ReLU}

POOLS: dict[str, Callable[[int, int, int], tuple[nn.Module, int]]] = {
    "spatial_softmax": _spatial_softmax_pool,
    "avg": _avg_pool,
}
