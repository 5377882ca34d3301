"""Observation encoder over any number of cameras and low-dim keys, driven by `shape_meta`."""

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from policylab.common.shape_meta import ShapeMeta
from policylab.models.encoders.crop import ImageCrop
from policylab.models.encoders.resnet import PathLike, ResNetImageEncoder

# Per-channel RGB statistics of ImageNet, which pretrained torchvision weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

HW = tuple[int, int]
PerKey = HW | Mapping[str, HW] | None


class Resize(nn.Module):
    """Bilinear, antialiased resize (what torchvision's `Resize` does on tensors):
    `(B, C, H, W)` -> `(B, C, *size)`."""

    def __init__(self, size: HW):
        super().__init__()
        self.size = tuple(size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.interpolate(images, size=self.size, mode="bilinear", align_corners=False,
                             antialias=True)


class Normalize(nn.Module):
    """Per-channel `(x - mean) / std` on `(B, C, H, W)`."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        # Constants of the encoder's definition, not learned state: kept out of checkpoints.
        self.register_buffer("mean", torch.tensor(mean).reshape(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(-1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


def _for_key(value: PerKey, key: str) -> HW | None:
    if isinstance(value, Mapping):
        return tuple(value[key])
    return None if value is None else tuple(value)


class MultiImageObsEncoder(nn.Module):
    """`{key: (B, *shape)}` -> `(B, D)`, D = `output_dim()`.

    `shape_meta`: a `ShapeMeta` (or the dict it parses); each obs key has a `shape` and a `type`.
    Images are float `(B, C, H, W)` in [0, 1]; each goes through resize -> crop -> ImageNet
    normalization (`imagenet_norm`) or a map to [-1, 1] -> a ResNet encoder (one per camera, or one shared by all cameras
    when `share_rgb_model`). The output concatenates the camera features in sorted key order,
    then the flattened low-dim keys in sorted key order. Policies fold `To` into `B`.

    `resize_shape` and `crop_shape` are an `(h, w)` for every camera or a dict per key. Cropping
    is random per image in training with `random_crop`, and a center crop otherwise, always
    (see `crop.py`). `pool`, `num_keypoints`, `feature_dim` and `feature_activation`: see
    `ResNetImageEncoder`.
    `pretrained_weights` is a local torchvision-format file loaded into every camera's ResNet.
    """

    def __init__(
        self,
        shape_meta: ShapeMeta | Mapping,
        rgb_model_name: str = "resnet18",
        pretrained_weights: PathLike | None = None,
        resize_shape: PerKey = None,
        crop_shape: PerKey = None,
        random_crop: bool = True,
        use_group_norm: bool = True,
        share_rgb_model: bool = False,
        imagenet_norm: bool = False,
        pool: str = "spatial_softmax",
        num_keypoints: int = 32,
        feature_dim: int = 64,
        feature_activation: str | None = None,
    ):
        super().__init__()
        shape_meta = ShapeMeta.parse(shape_meta)
        self.rgb_keys = sorted(shape_meta.rgb_keys)
        self.low_dim_keys = sorted(shape_meta.low_dim_keys)
        self.key_shape_map = {key: spec.shape for key, spec in shape_meta.obs.items()}
        self.share_rgb_model = share_rgb_model
        self.shape_meta = shape_meta

        self.key_transform_map = nn.ModuleDict({
            key: self._make_transform(key, resize_shape, crop_shape, random_crop, imagenet_norm)
            for key in self.rgb_keys
        })

        def make_model() -> ResNetImageEncoder:
            return ResNetImageEncoder(rgb_model_name, weights=pretrained_weights,
                                      use_group_norm=use_group_norm, pool=pool,
                                      num_keypoints=num_keypoints, feature_dim=feature_dim,
                                      feature_activation=feature_activation)

        model_keys = ["rgb"] if share_rgb_model and self.rgb_keys else self.rgb_keys
        self.key_model_map = nn.ModuleDict({key: make_model() for key in model_keys})
        if share_rgb_model:
            self._check_shared_shapes(resize_shape, crop_shape)

    def _make_transform(self, key: str, resize_shape: PerKey, crop_shape: PerKey,
                        random_crop: bool, imagenet_norm: bool) -> nn.Sequential:
        size = self.key_shape_map[key][1:]
        resize, crop = _for_key(resize_shape, key), _for_key(crop_shape, key)
        steps = []
        if resize is not None:
            steps.append(Resize(resize))
            size = resize
        if crop is not None:
            steps.append(ImageCrop(size, crop, random_crop=random_crop))
        # Images arrive in [0, 1]: pretrained weights want ImageNet statistics, a network trained
        # from scratch gets [-1, 1] (what Diffusion Policy's image normalizer produced).
        steps.append(Normalize(IMAGENET_MEAN, IMAGENET_STD) if imagenet_norm else Normalize((0.5,), (0.5,)))
        return nn.Sequential(*steps)

    def _check_shared_shapes(self, resize_shape: PerKey, crop_shape: PerKey) -> None:
        # A shared model encodes all cameras as one batch, so they must end at one size.
        final = {}
        for key in self.rgb_keys:
            final[key] = (_for_key(crop_shape, key) or _for_key(resize_shape, key)
                          or self.key_shape_map[key][1:])
        if len(set(final.values())) > 1:
            raise ValueError(f"share_rgb_model needs one image size after resize/crop, got {final}")

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        batch_size = self._check_obs(obs)
        images = [self.key_transform_map[key](obs[key]) for key in self.rgb_keys]
        features = []
        if self.share_rgb_model and images:
            shared = self.key_model_map["rgb"](torch.cat(images, dim=0))  # (N*B, Df)
            # (N*B, Df) -> (B, N*Df): the same layout as concatenating per-camera features.
            features.append(shared.reshape(len(images), batch_size, -1).transpose(0, 1)
                            .reshape(batch_size, -1))
        else:
            features += [self.key_model_map[key](img) for key, img in zip(self.rgb_keys, images)]
        features += [obs[key].reshape(batch_size, -1) for key in self.low_dim_keys]
        return torch.cat(features, dim=-1)

    def _check_obs(self, obs: Mapping[str, torch.Tensor]) -> int:
        """Checks every key against `shape_meta` and returns the common batch size B."""
        missing = [key for key in self.key_shape_map if key not in obs]
        if missing:
            raise KeyError(f"observation keys {missing} are missing")
        batch_sizes = {obs[key].shape[0] for key in self.key_shape_map}
        if len(batch_sizes) != 1:
            raise ValueError(f"all observation keys need the same batch size, got {batch_sizes}")
        for key, shape in self.key_shape_map.items():
            if tuple(obs[key].shape[1:]) != shape:
                raise ValueError(f"obs[{key!r}] must be (B, *{shape}), got {tuple(obs[key].shape)}")
        return batch_sizes.pop()

    @torch.no_grad()
    def output_dim(self) -> int:
        """D, measured by encoding one all-zero observation in eval mode."""
        reference = next(self.parameters(), torch.empty(0))
        dummy = {key: torch.zeros((1, *shape), dtype=reference.dtype, device=reference.device)
                 for key, shape in self.key_shape_map.items()}
        was_training = self.training
        self.eval()
        try:
            return self.forward(dummy).shape[-1]
        finally:
            self.train(was_training)
