"""Q-function ensembles for actor-critic fine-tuning (ConRFT's `Critic` + `ensemblize`).

    CriticEnsemble(obs {key: (B, To, ...)}, action (B, Da')) -> Q (E, B)

The observation encoder is the critic's own (ConRFT's critic never uses the actor's Octo):

    low-dim keys, the whole window flattened (B, To*Do) -> Dense(proprio_dim) -> LayerNorm -> tanh
    each rgb key, last frame (B, C, H, W) -> image encoder -> Dense(image_dim) -> LayerNorm -> tanh
    or, with ConRFT's frozen-trunk encoder (`FrozenTrunkEncoder`, its head is the projection):
    each rgb key, last frame -> frozen trunk -> (B, C', h, w) -> spatial embeddings, Dense, LN, tanh

A frozen trunk's features can be computed once per frame and cached (`cache_trunk`): the obs then
carry `trunk_<key>` (B, C', h, w) instead of the images, and the random shift moves the feature
maps (`feature_shift_px` input pixels, resampled bilinearly: a fraction of a feature cell).

and is shared by the members. Each of the E members is an MLP over [features, action]:
[Dense -> LayerNorm -> tanh] x hidden_dims, then a Dense(1) per member, or one Dense(1) shared by
all (`shared_head`, what ConRFT's flax code does: its head sits outside the vmap). The members run
as one batched matmul per layer, so E costs about one member's time on a CPU.
Kernels are xavier-uniform, biases zero, LayerNorm eps 1e-6, as in flax.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from policylab.common.shape_meta import ShapeMeta
from policylab.models.conrft_mlp import LAYER_NORM_EPS, _dense_ln_tanh

TRUNK_PREFIX = "trunk_"  # obs / store key of an rgb key's cached frozen-trunk features
STEM_PREFIX = "stem_"  # ... of its frozen stem maps for an actor's image head (policies/image_head.py)


def trunk_key(rgb_key: str) -> str:
    return f"{TRUNK_PREFIX}{rgb_key}"


def stem_key(rgb_key: str) -> str:
    return f"{STEM_PREFIX}{rgb_key}"


class EnsembleLinear(nn.Module):
    """E independent Dense layers applied to (E, B, in) in one batched matmul."""

    def __init__(self, ensemble_size: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, out_features))
        bound = math.sqrt(6 / (in_features + out_features))  # xavier-uniform per member
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last dim with a separate scale and offset per member: (E, B, D)."""

    def __init__(self, ensemble_size: int, features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, features))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.layer_norm(x, x.shape[-1:], eps=LAYER_NORM_EPS)
        return x * self.weight + self.bias


class CriticObsEncoder(nn.Module):
    """Observation window -> critic features (B, Df), as ConRFT's critic encodes.

    shape_meta: the task's; `type: rgb` keys go through `image_encoder`, the rest are low-dim.
    image_encoder: a partial taking `shape_meta` restricted to one rgb key (e.g. the multi-image
        ResNet encoder with GroupNorm, or ConRFT's `FrozenTrunkEncoder`) and giving (B, D) for
        (B, C, H, W) frames; needed only when there are rgb keys.
    cache_trunk: with a frozen-trunk image encoder, its features are computed once per frame and
        stored (`trunk_key(key)` in the obs); False: the learner runs the trunk on every batch,
        after the image shift (ConRFT's own order, affordable on a GPU).
    feature_shift_px: the random shift of cached feature maps in training, in input pixels
        (`shift_feature_maps`).
    """

    def __init__(self, shape_meta: ShapeMeta | Mapping, n_obs_steps: int, proprio_dim: int = 64, image_dim: int = 256,
                 image_encoder: Callable | None = None, cache_trunk: bool = True, feature_shift_px: int = 0):
        super().__init__()
        shape_meta = ShapeMeta.parse(shape_meta)
        self.rgb_keys = sorted(shape_meta.rgb_keys)
        self.low_dim_keys = sorted(shape_meta.low_dim_keys)
        self.n_obs_steps = n_obs_steps
        self.feature_shift_px = int(feature_shift_px)
        self.output_dim = 0
        if self.low_dim_keys:
            low_dim = sum(math.prod(shape_meta.obs[k].shape) for k in self.low_dim_keys) * n_obs_steps
            self.proprio = _dense_ln_tanh(low_dim, proprio_dim)
            self.output_dim += proprio_dim
        if self.rgb_keys and image_encoder is None:
            raise ValueError(f"rgb keys {self.rgb_keys} need critic.obs_encoder.image_encoder")
        self.image_encoders = nn.ModuleDict()
        self.image_projections = nn.ModuleDict()
        self.frozen_keys = []  # rgb keys whose encoder is a frozen trunk + head (`trunk_features`, `head`)
        for key in self.rgb_keys:
            encoder = image_encoder(shape_meta=shape_meta.select([key]))
            self.image_encoders[key] = encoder
            if hasattr(encoder, "trunk_features"):  # its own head ends in Dense, LN, tanh: no projection
                self.frozen_keys.append(key)
                self.image_projections[key] = nn.Identity()
                self.output_dim += encoder.output_dim()
            else:
                self.image_projections[key] = _dense_ln_tanh(encoder.output_dim(), image_dim)
                self.output_dim += image_dim
        self.cached_keys = list(self.frozen_keys) if cache_trunk else []

    def trunk_identity(self) -> dict[str, str]:
        """{rgb key: identity of its frozen trunk} for the keys whose trunk features are cached."""
        return {key: self.image_encoders[key].identity for key in self.cached_keys}

    def trunk_features(self, key: str, frames: torch.Tensor) -> torch.Tensor:
        """Frames (N, 3, H, W) in [0, 1] of camera `key` -> its frozen trunk's (N, C', h, w)."""
        return self.image_encoders[key].trunk_features(frames)

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Normalized obs {key: (B, To', ...)} (rgb in [0, 1]) -> (B, Df); the last To steps are used.

        `trunk_<key>` (B, C', h, w) in obs, the cached trunk features of the last frame, stand in
        for rgb `key`."""
        features = []
        if self.low_dim_keys:
            window = [obs[k][:, -self.n_obs_steps:].flatten(1) for k in self.low_dim_keys]
            features.append(self.proprio(torch.cat(window, dim=-1)))
        for key in self.rgb_keys:
            encoder = self.image_encoders[key]
            cached = obs.get(trunk_key(key))
            if cached is not None:
                if self.training and self.feature_shift_px > 0:
                    cached = shift_feature_maps(cached, self.feature_shift_px, encoder.stride)
                encoded = encoder.head(cached)
            elif key in self.frozen_keys:
                encoded = encoder(obs[key][:, -1])
            else:
                encoded = encoder({key: obs[key][:, -1]})
            features.append(self.image_projections[key](encoded))
        return torch.cat(features, dim=-1)


def shift_feature_maps(features: torch.Tensor, pad_px: int, stride: float) -> torch.Tensor:
    """DrQ's random shift moved to a frozen trunk's feature maps: (B, C, h, w) -> the same, each
    sample translated by whole input pixels drawn from [-pad_px, pad_px] per axis, i.e. by
    d / stride feature cells, resampled bilinearly with the border value repeated (as the image
    shift's edge padding). A conv trunk is nearly shift-equivariant at its stride, so this
    approximates shifting the image before the trunk, without running the trunk."""
    b, _, h, w = features.shape
    cells = torch.randint(-pad_px, pad_px + 1, (b, 2), device=features.device).to(features.dtype) / stride
    theta = torch.zeros(b, 2, 3, device=features.device, dtype=features.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2], theta[:, 1, 2] = 2 * cells[:, 0] / w, 2 * cells[:, 1] / h
    grid = nn.functional.affine_grid(theta, list(features.shape), align_corners=False)
    return nn.functional.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)


class CriticEnsemble(nn.Module):
    """E Q-functions over a shared observation encoder.

    obs_encoder: a partial of `CriticObsEncoder` (filled with shape_meta and n_obs_steps).
    action_dim: Da' = Ta * Da, the flattened executed chunk the critic scores.
    """

    def __init__(self, shape_meta: Mapping, n_obs_steps: int, action_dim: int, obs_encoder: Callable,
                 hidden_dims: Sequence[int] = (256, 256), ensemble_size: int = 2, shared_head: bool = False):
        super().__init__()
        self.encoder = obs_encoder(shape_meta=shape_meta, n_obs_steps=n_obs_steps)
        self.ensemble_size, self.action_dim, self.shared_head = ensemble_size, action_dim, shared_head
        layers, width = [], self.encoder.output_dim + action_dim
        for hidden in hidden_dims:
            layers += [EnsembleLinear(ensemble_size, width, hidden), EnsembleLayerNorm(ensemble_size, hidden),
                       nn.Tanh()]
            width = hidden
        self.trunk = nn.Sequential(*layers)
        self.head = EnsembleLinear(1 if shared_head else ensemble_size, width, 1)

    def encode(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(obs)

    def q_from_features(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """features (B, Df), action (B, Da') or (B, N, Da') -> Q (E, B) or (E, B, N)."""
        if action.shape[-1] != self.action_dim:
            raise ValueError(f"critic scores actions of dim {self.action_dim}, got {tuple(action.shape)}")
        if action.dim() == 3:  # N candidate actions per state: fold them into the batch
            b, n = action.shape[:2]
            q = self.q_from_features(features.repeat_interleave(n, dim=0), action.reshape(b * n, -1))
            return q.reshape(self.ensemble_size, b, n)
        x = torch.cat([features, action], dim=-1).expand(self.ensemble_size, -1, -1)
        hidden = self.trunk(x)
        if self.shared_head:
            return (hidden @ self.head.weight[0] + self.head.bias[0]).squeeze(-1)
        return self.head(hidden).squeeze(-1)

    def forward(self, obs: Mapping[str, torch.Tensor], action: torch.Tensor) -> torch.Tensor:
        """obs {key: (B, To, ...)}, action (B, Da') -> Q (E, B)."""
        return self.q_from_features(self.encode(obs), action)
