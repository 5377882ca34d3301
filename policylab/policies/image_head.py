"""A trained head on the frozen Octo encoder's camera stems: what lets a frozen-encoder actor learn to see.

ConRFT's actor reads one frozen feature vector, the readout of an Octo pre-trained on 800k
trajectories. policylab's image presets train their Octo from scratch on the 10 SFT demos, and its
frozen readout (32-d for octo-tiny) is what the actor can ever know of the scene: Stage II's new
episodes, with the cube in places the demos never had it, cannot teach it anything new. This head
gives the actor a second path, as ConRFT gives its critic: each camera's frozen stem feature map
(the SFT Octo's SmallStem16, before tokenization, `policies/encoder_trunk.py`) through a trained
SpatialLearnedEmbeddings -> Dense -> LayerNorm -> tanh. The actor's condition becomes

    cond = [obs_encoder(window) (frozen, stored as `embedding`), head(stem maps of the last frame)]

The learner reads the stem maps cached with the transitions: the critic's own with
`critic_trunk=sft` (the same stems), else stored beside the critic's as `stem_<key>`; it runs no
conv net for the head either. Acting, the policy computes
them with its own stems (0.6 ms a frame). The RL workspace adds the head to an SFT actor with
zero weights where the backbone reads it (`widen_state_dict`), so Stage II starts from exactly the
SFT policy.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from policylab.common.shape_meta import ShapeMeta
from policylab.models.critic import stem_key
from policylab.models.encoders.frozen_resnet import (
    LAYER_NORM_EPS,
    SpatialLearnedEmbeddings,
    _variance_scaling_,
)
from policylab.policies.encoder_trunk import octo_camera_stem, octo_stem_features


class StemImageHead(nn.Module):
    """`{rgb key: (B, C, h, w) stem maps}` -> `(B, n_cameras * feature_dim)` in (-1, 1).

    obs_encoder: the policy's Octo observation encoder; its stems are read, never trained, and
        are not submodules here (they stay the encoder's parameters, once in the state dict).
    shape_meta: the policy's; every rgb key gets a head.
    num_features, feature_dim, dropout: as the critic's head (ConRFT: 8, 256, 0.1); the actor's
        default is narrower (64 a camera), beside a 40-d frozen embedding.
    """

    def __init__(self, obs_encoder: nn.Module, shape_meta: ShapeMeta | Mapping, num_features: int = 8,
                 feature_dim: int = 64, dropout: float = 0.0):
        super().__init__()
        meta = ShapeMeta.parse(shape_meta)
        self.keys = list(meta.rgb_keys)
        if not self.keys:
            raise ValueError("policy.image_head needs rgb observations; this task has none")
        stems = {key: octo_camera_stem(obs_encoder, key, where="policy.image_head") for key in self.keys}
        object.__setattr__(self, "_stems", stems)  # the encoder's modules: not registered twice
        self.feature_shapes = {}
        self.spatial, self.dense, self.norm = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        for key in self.keys:
            _, height, width = meta.obs[key].shape
            with torch.no_grad():
                shape = tuple(self.maps(key, torch.zeros(1, 3, height, width)).shape[1:])
            self.feature_shapes[key] = shape
            channels = shape[0]
            self.spatial[key] = SpatialLearnedEmbeddings(*shape, num_features)
            self.dense[key] = nn.Linear(channels * num_features, feature_dim)
            _variance_scaling_(self.dense[key].weight, channels * num_features, 1.0)
            nn.init.zeros_(self.dense[key].bias)
            self.norm[key] = nn.LayerNorm(feature_dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.feature_dim = feature_dim

    def output_dim(self) -> int:
        return len(self.keys) * self.feature_dim

    @torch.no_grad()
    def maps(self, key: str, frames: torch.Tensor) -> torch.Tensor:
        """Frames `(B, 3, H, W)` in [0, 1] of camera `key` -> its frozen stem's `(B, C, h, w)`."""
        stem, camera_size = self._stems[key]
        return octo_stem_features(stem, camera_size, frames)

    def forward(self, nobs: Mapping[str, torch.Tensor], last: int) -> torch.Tensor:
        """Normalized obs -> `(B, output_dim())`: the stored `stem_<key>` maps when the batch has
        them (the learner's), else the stems on frame `last` of each camera's window `(B, To, 3, H, W)`."""
        out = []
        for key in self.keys:
            cached = nobs.get(stem_key(key))
            features = cached.float() if cached is not None else self.maps(key, nobs[key][:, last])
            if tuple(features.shape[1:]) != self.feature_shapes[key]:
                raise ValueError(f"stem maps of {key!r} must be (B, {', '.join(map(str, self.feature_shapes[key]))}), "
                                 f"got {tuple(features.shape)}")
            x = self.dropout(self.spatial[key](features))
            out.append(torch.tanh(self.norm[key](self.dense[key](x))))
        return torch.cat(out, dim=-1)


def widen_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (a policy's without the head) fitted to `model` (the same policy with it).

    A weight whose input width grew (the layers reading the condition, whose last entries are now
    the head's) keeps its old columns and gets zeros for the new ones, so the widened policy
    computes exactly what the old one did; the head's own parameters keep `model`'s init. Any other
    mismatch is an error naming the key.
    """
    target = model.state_dict()
    out = {}
    for key, value in target.items():
        if key not in state:
            if ".image_head." in f".{key}":
                out[key] = value
                continue
            raise KeyError(f"{key} is missing from the weights being widened")
        old = state[key]
        if old.shape == value.shape:
            out[key] = old
        elif old.dim() == 2 and old.shape[0] == value.shape[0] and old.shape[1] < value.shape[1]:
            wide = torch.zeros_like(value)
            wide[:, :old.shape[1]] = old
            out[key] = wide
        else:
            raise ValueError(f"{key}: cannot widen {tuple(old.shape)} to {tuple(value.shape)}")
    return out
