"""ConRFT's / HIL-SERL's critic image encoder: a frozen ResNet-v1 trunk and a trained head.

    images (B, 3, H, W) in [0, 1]
      -> ImageNet mean/std -> ResNet-v1 trunk (frozen, eval mode, no gradient)  -> (B, 512, h, w)
      -> SpatialLearnedEmbeddings (num_features maps) -> (B, 512 * num_features)
      -> Dropout(0.1) -> Dense(256) -> LayerNorm -> tanh                         -> (B, 256)

The trunk is SERL's `ResNetEncoder` (serl_launcher/vision/resnet_v1.py) as its
`resnetv1-10-frozen` config builds it with `pre_pooling=True`, which ConRFT's critic uses
(`encoder_type="resnet-pretrained"`): no conv bias, GroupNorm with 4 groups (eps 1e-5) after every
conv, a 7x7 stride-2 stem padded by 3, a 3x3 stride-2 max-pool, and basic blocks whose 3x3 convs
pad as flax's "SAME" does. SAME puts the odd pixel of padding at the end (bottom/right), where
torch's symmetric `padding=1` would shift a stride-2 layer's sampling grid by one pixel; so the
padding is explicit here, which keeps the converted ImageNet weights (serl_weights.py) exact.
SERL stops the gradient at the trunk's output; here the trunk also runs under no_grad and stays in
eval mode whatever mode the parent is put in.

`trunk_features` and `head` are separate, as SERL's `encode=False` allows, so trunk features can be
computed once per frame and cached. SERL resizes images to 128x128 (bilinear) inside the encoder;
here the caller supplies images of `image_shape` (the head's spatial kernel is sized for it).
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from policylab.models.conrft_mlp import LAYER_NORM_EPS

# The torchvision ImageNet statistics SERL normalizes with (RGB order).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUM_GROUPS = 4  # SERL's MyGroupNorm(num_groups=4)
GROUP_NORM_EPS = 1e-5
STEM_FILTERS = 64
# Blocks per stage: ResNet-10 is SERL's `resnetv1-10-frozen`, ResNet-18 its `resnetv1-18-frozen`.
TRUNK_STAGE_SIZES: dict[str, tuple[int, ...]] = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2)}
# flax's variance-scaling initializers draw from a normal truncated at 2 std, rescaled by this
# constant (the std of a unit normal truncated to [-2, 2]) so the variance is the nominal one.
_TRUNCATED_NORMAL_STD = 0.87962566103423978


def _variance_scaling_(tensor: torch.Tensor, fan_in: int, scale: float) -> torch.Tensor:
    """flax's `variance_scaling(scale, "fan_in", "truncated_normal")`, in place."""
    std = math.sqrt(scale / fan_in) / _TRUNCATED_NORMAL_STD
    if tensor.is_meta:
        return tensor
    # Normal draws, those beyond 2 std drawn again: the truncated normal exactly, and ~30x faster
    # than nn.init.trunc_normal_'s inverse-CDF on a ResNet's 5M weights (1 s -> 0.03 s).
    with torch.no_grad():
        tensor.normal_(0.0, std)
        while (bad := tensor.abs() > 2 * std).any():
            tensor[bad] = torch.empty(int(bad.sum()), dtype=tensor.dtype, device=tensor.device).normal_(0.0, std)
    return tensor


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """flax/XLA "SAME" padding of one spatial dim: (before, after); the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A bias-free conv padded as flax's `padding="SAME"` (asymmetric when the total is odd).

    Initialized as SERL's convs (`kaiming_normal`: truncated normal, variance 2 / fan_in).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=False)
        _variance_scaling_(self.weight, in_channels * kernel_size ** 2, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = same_padding(x.shape[-2], k, s)
        left, right = same_padding(x.shape[-1], k, s)
        return super().forward(F.pad(x, (left, right, top, bottom)))


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NUM_GROUPS, channels, eps=GROUP_NORM_EPS)


class ResNetV1Block(nn.Module):
    """SERL's `ResNetBlock`: conv3x3(stride) -> GN -> relu -> conv3x3 -> GN, plus the input (through
    a 1x1 stride conv + GN when the shape changes), then relu. `(B, Cin, H, W) -> (B, C, H/s, W/s)`."""

    def __init__(self, in_channels: int, filters: int, stride: int):
        super().__init__()
        self.conv_0 = SameConv2d(in_channels, filters, 3, stride)
        self.norm_0 = _group_norm(filters)
        self.conv_1 = SameConv2d(filters, filters, 3)
        self.norm_1 = _group_norm(filters)
        self.conv_proj = self.norm_proj = None
        if stride != 1 or in_channels != filters:
            self.conv_proj = SameConv2d(in_channels, filters, 1, stride)
            self.norm_proj = _group_norm(filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm_1(self.conv_1(F.relu(self.norm_0(self.conv_0(x)))))
        residual = x if self.conv_proj is None else self.norm_proj(self.conv_proj(x))
        return F.relu(residual + y)


class ResNetV1Trunk(nn.Module):
    """SERL's `ResNetEncoder` up to `pre_pooling`: `(B, 3, H, W)` in [0, 1] (or uint8 in [0, 255])
    -> `(B, C, ceil(H/32), ceil(W/32))`, C = 64 * 2**(stages-1) = 512.

    State-dict keys follow the flax names: `conv_init`, `norm_init`, `blocks.{i}` for
    `ResNetBlock_{i}` with `conv_0`/`conv_1`/`norm_0`/`norm_1` for `Conv_*`/`MyGroupNorm_*` and
    `conv_proj`/`norm_proj`. The ImageNet statistics are non-persistent buffers, not weights.
    """

    def __init__(self, stage_sizes: Sequence[int] = TRUNK_STAGE_SIZES["resnet10"],
                 num_filters: int = STEM_FILTERS):
        super().__init__()
        self.stage_sizes = tuple(stage_sizes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # Explicit (3, 3) padding in flax, not SAME: torch's symmetric padding is the same thing.
        self.conv_init = nn.Conv2d(3, num_filters, 7, stride=2, padding=3, bias=False)
        _variance_scaling_(self.conv_init.weight, 3 * 7 * 7, 2.0)
        self.norm_init = _group_norm(num_filters)
        blocks, channels = [], num_filters
        for stage, size in enumerate(self.stage_sizes):
            filters = num_filters * 2 ** stage
            for j in range(size):
                blocks.append(ResNetV1Block(channels, filters, 2 if stage > 0 and j == 0 else 1))
                channels = filters
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        x = (x - self.mean) / self.std
        x = F.relu(self.norm_init(self.conv_init(x)))
        # flax's max_pool with "SAME" pads with -inf, after the odd pixel as for the convs.
        top, bottom = same_padding(x.shape[-2], 3, 2)
        left, right = same_padding(x.shape[-1], 3, 2)
        x = F.max_pool2d(F.pad(x, (left, right, top, bottom), value=float("-inf")), 3, stride=2)
        return self.blocks(x)


class SpatialLearnedEmbeddings(nn.Module):
    """SERL's `SpatialLearnedEmbeddings`: every channel gets `num_features` learned (h, w) weight
    maps; `out[b, c * F + f] = sum_{y, x} feature[b, c, y, x] * kernel[y, x, c, f]`.

    `(B, C, h, w) -> (B, C * num_features)`. The kernel keeps flax's (h, w, C, F) layout and its
    `lecun_normal` init (truncated normal, variance 1 / (h * w * C)).
    """

    def __init__(self, channels: int, height: int, width: int, num_features: int = 8):
        super().__init__()
        self.kernel = nn.Parameter(torch.empty(height, width, channels, num_features))
        _variance_scaling_(self.kernel, height * width * channels, 1.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("bcyx,yxcf->bcf", features, self.kernel)
        return out.reshape(features.shape[0], -1)


class FrozenTrunkEncoder(nn.Module):
    """The critic's image encoder of ConRFT: `(B, 3, H, W)` in [0, 1] -> `(B, feature_dim)`.

    image_shape: (3, H, W) of the images it is given; sizes the head's spatial kernel. Or
        `shape_meta` with exactly one rgb key (what `CriticObsEncoder` passes), which also names
        the camera for a trunk built per camera.
    trunk: "resnet10" (ConRFT's) or "resnet18"; or a factory `trunk(key=, image_shape=) -> module`
        mapping `(B, 3, H, W)` in [0, 1] to `(B, C, h, w)`, with a `source` string (e.g. `policylab.policies.encoder_trunk.PolicyImageTrunk`: the SFT
        policy's own image encoder).
    trunk_weights: for resnet10/resnet18, a SERL/ConRFT `.pkl` or a `.safetensors` of the trunk
        (serl_weights.py); None leaves the trunk at a random init (fixed seed, so every process
        builds the same one), with a warning.
    num_features, dropout, feature_dim: ConRFT's 8, 0.1 and 256.
    save_trunk: keep the trunk's weights in `state_dict` (a self-contained classifier checkpoint).
        False (the critic): the trunk is rebuilt from `trunk`/`trunk_weights`, so a changed weights
        file changes `identity` and cached features of the old trunk are refused.
    """

    def __init__(self, image_shape: Sequence[int] | None = None, trunk: str | Callable = "resnet10",
                 trunk_weights: str | os.PathLike | None = None, num_features: int = 8,
                 dropout: float = 0.1, feature_dim: int = 256, shape_meta: Mapping | None = None,
                 save_trunk: bool = True):
        super().__init__()
        key, image_shape = _image_key_and_shape(image_shape, shape_meta)
        if len(image_shape) != 3 or image_shape[0] != 3:
            raise ValueError(f"image_shape must be (3, H, W), got {tuple(image_shape)}")
        self.image_shape = tuple(int(s) for s in image_shape)
        with torch.random.fork_rng(devices=[]):  # a random trunk is the same in every process
            torch.manual_seed(0)
            trunk, source = _build_trunk(trunk, trunk_weights, key, self.image_shape)
        trunk.requires_grad_(False).eval()
        self.save_trunk = save_trunk
        if save_trunk:
            self.trunk = trunk
        else:  # not a submodule: out of state_dict, parameters() (optimizer, Polyak) and train()
            object.__setattr__(self, "trunk", trunk)
        self.identity = f"{source}:{trunk_hash(trunk)}"
        with torch.no_grad():  # (C, h, w) of whatever trunk, from one probe frame
            self.feature_shape = tuple(trunk(torch.zeros(1, *self.image_shape)).shape[1:])
        self.stride = self.image_shape[1] / self.feature_shape[1]  # input pixels per feature cell
        channels, height, width = self.feature_shape
        self.spatial = SpatialLearnedEmbeddings(channels, height, width, num_features)
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(channels * num_features, feature_dim)
        _variance_scaling_(self.dense.weight, channels * num_features, 1.0)  # flax Dense's lecun_normal
        nn.init.zeros_(self.dense.bias)
        self.norm = nn.LayerNorm(feature_dim, eps=LAYER_NORM_EPS)
        self.feature_dim = feature_dim

    def output_dim(self) -> int:
        return self.feature_dim

    def train(self, mode: bool = True) -> FrozenTrunkEncoder:
        super().train(mode)
        self.trunk.train(False)  # frozen: eval mode whatever the parent's mode
        return self

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if not self.save_trunk:  # .to(device) moves the unregistered trunk too
            self.trunk._apply(fn)
        return self

    def trunk_features(self, images: torch.Tensor) -> torch.Tensor:
        """`(B, 3, H, W)` in [0, 1] (or uint8) -> detached `(B, C, h, w)` = `feature_shape`."""
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images must be (B, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(images.shape)}")
        with torch.no_grad():
            return self.trunk(images).detach()

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Trunk features `(B, C, h, w)` (fresh or cached) -> `(B, feature_dim)` in (-1, 1)."""
        if tuple(features.shape[1:]) != self.feature_shape:
            raise ValueError(f"trunk features must be (B, {', '.join(map(str, self.feature_shape))}), "
                             f"got {tuple(features.shape)}")
        x = self.dropout(self.spatial(features))
        return torch.tanh(self.norm(self.dense(x)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk_features(images))


def _image_key_and_shape(image_shape, shape_meta) -> tuple[str | None, Sequence[int]]:
    if shape_meta is None:
        if image_shape is None:
            raise ValueError("FrozenTrunkEncoder needs image_shape or shape_meta")
        return None, image_shape
    from policylab.common.shape_meta import ShapeMeta

    meta = ShapeMeta.parse(shape_meta)
    if len(meta.rgb_keys) != 1:
        raise ValueError(f"FrozenTrunkEncoder encodes one camera; shape_meta has rgb keys {meta.rgb_keys}")
    key = meta.rgb_keys[0]
    return key, meta.obs[key].shape


def _build_trunk(trunk, weights, key, image_shape) -> tuple[nn.Module, str]:
    """(the trunk module, its source name); a name loads `weights` (or warns), a factory is called."""
    if callable(trunk):
        module = trunk(key=key, image_shape=image_shape)
        return module, module.source
    if trunk not in TRUNK_STAGE_SIZES:
        raise ValueError(f"unknown trunk {trunk!r}; choose from {sorted(TRUNK_STAGE_SIZES)} or a trunk factory")
    module = ResNetV1Trunk(TRUNK_STAGE_SIZES[trunk])
    if weights is None:
        warnings.warn(f"FrozenTrunkEncoder: no trunk_weights, so the frozen {trunk} trunk keeps its random "
                      "init and its features carry no pretrained information", stacklevel=3)
        return module, f"{trunk}(random)"
    from policylab.models.encoders.serl_weights import load_trunk_weights

    load_trunk_weights(module, weights)
    return module, f"{trunk}({os.path.basename(str(weights))})"


def trunk_hash(module: nn.Module) -> str:
    """First 16 hex digits of a sha256 over the module's state (names, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


