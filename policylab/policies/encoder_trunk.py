"""The SFT policy's own image encoder as the critic's frozen trunk (issue 23, trunk source (b)).

    critic image encoder = FrozenTrunkEncoder(trunk=PolicyImageTrunk(checkpoint=<SFT run>))

The trunk is the part of the policy's observation encoder that sees one camera and nothing else:
for an Octo encoder (`policy/obs_encoder=octo_*`) that camera's tokenizer stem, SmallStem16 (four
weight-standardized 3x3 stride-2 convs with GroupNorm and ReLU, then the 1x1 `embedding` conv),
taken before its tokens are flattened: `(B, 3, H, W)` in [0, 1] -> `(B, out_dim, H/16, W/16)`.
Octo stacks a goal image on the channels; without a goal (the ConRFT setting) it is zeros, as
here. The transformer after the stems mixes cameras, proprio and time, so it is not a per-camera
trunk; its readout is what the actor reads (and stores as `embedding`), not the critic.

Weights come from the checkpoint alone (its `config.yaml` rebuilds the policy with allow-listed
targets; EMA weights when the checkpoint has them, as `load_policy`), so the critic rebuilds the
same trunk in any process, and its identity (a hash of the weights) changes if the checkpoint does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from policylab.policies.loading import load_policy


class PolicyImageTrunk(nn.Module):
    """One camera's image trunk of the policy at `checkpoint`: `(B, 3, H, W)` in [0, 1] -> `(B, C, h, w)`.

    Args:
        checkpoint: a policylab checkpoint directory (an SFT run's `checkpoints/latest`, or an RL
            checkpoint whose actor encoder stayed frozen: the same weights).
        key: the rgb obs key; it must be one of the policy's cameras.
        image_shape: (3, H, W) of the frames it is given.
    Attributes: out_channels, source (names it in the trunk identity).
    """

    def __init__(self, checkpoint: str | os.PathLike, key: str, image_shape: Sequence[int]):
        super().__init__()
        if checkpoint is None:
            raise ValueError("the critic's trunk=sft (critic_trunk=sft) takes the image encoder of the SFT policy: "
                             "it needs policy.init, the checkpoint the RL stage starts from")
        policy = load_policy(checkpoint, use_ema=True)
        self.stem, self.camera_size = octo_camera_stem(policy.obs_encoder, key, where=str(checkpoint))
        camera = next(cam for cam, obs_key in policy.obs_encoder.camera_keys.items() if obs_key == key)
        self.out_channels = self.stem.embedding.out_channels
        self.source = f"sft({camera})"  # the weights hash in the identity tells checkpoints apart

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return octo_stem_features(self.stem, self.camera_size, images)


def octo_camera_stem(encoder: nn.Module, key: str, where: str = "the policy") -> tuple[nn.Module, tuple[int, int]]:
    """The Octo stem reading rgb obs `key` in `encoder` (an `OctoObsEncoder`), and its input (H, W)."""
    camera_keys = getattr(encoder, "camera_keys", None)
    if camera_keys is None or not hasattr(encoder, "model"):
        raise ValueError(f"{where}: trunk=sft takes the image stem of an Octo observation encoder "
                         f"(policy/obs_encoder=octo_*); this policy's encoder is {type(encoder).__name__}")
    cameras = {obs_key: cam for cam, obs_key in camera_keys.items()}
    if key not in cameras:
        raise ValueError(f"{where}: the policy has no camera for obs key {key!r} (its cameras read {sorted(cameras)})")
    camera = cameras[key]
    return encoder.model.observation_tokenizers[camera].stem, tuple(encoder.cfg.cameras[camera])


def octo_stem_features(stem: nn.Module, camera_size: tuple[int, int], images: torch.Tensor) -> torch.Tensor:
    """`(B, 3, H, W)` frames in [0, 1] (or uint8) -> the stem's `(B, C, h, w)` before tokenization."""
    # [0, 1], what the policy's encoder feeds its stems whatever its own input range
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images
    if tuple(x.shape[-2:]) != camera_size:
        x = F.interpolate(x, size=camera_size, mode="bilinear", antialias=True, align_corners=False)
    x = torch.cat([x, torch.zeros_like(x)], dim=1) * 2.0 - 1.0  # no goal image: zeros, as Octo
    for conv, norm in zip(stem.convs, stem.norms):
        x = F.relu(norm(conv(x)))
    return stem.embedding(x)
