"""Observation tokenizers: images (SmallStem16 with early goal fusion) and proprio.

Flax conventions kept so released weights reproduce Octo's outputs: weight-standardised convs
(population std, eps added to the std), GroupNorm with eps 1e-6, tokens in row-major (h, w) order.
Language tokens come from a separate text encoder (`text.py`); projections and position embeddings
belong to `OctoModel`, as in Octo.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from policylab.models.octo.config import StemConfig

# Flax's StdConv: w <- (w - mean) / (std + eps) per output channel, eps on the std.
WEIGHT_STD_EPS = 1e-5
STEM_KERNEL, STEM_STRIDE, STEM_PADDING = 3, 2, 1


class StdConv2d(nn.Conv2d):
    """Conv2d whose stored (raw) weight is standardised per output channel at every call."""

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        std = w.std(dim=(1, 2, 3), keepdim=True, correction=0)
        return (w - mean) / (std + WEIGHT_STD_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)


class SmallStem16(nn.Module):
    """Four [StdConv 3x3/2 -> GroupNorm -> ReLU] then a 1x1 conv `embedding`: /16 spatially.

    Input ``(N, C_in, H, W)`` already scaled to [-1, 1]; output tokens ``(N, H/16 * W/16, out_dim)``.
    """

    def __init__(self, in_channels: int, cfg: StemConfig, eps: float):
        super().__init__()
        widths = (in_channels, *cfg.widths)
        self.convs = nn.ModuleList(
            StdConv2d(c_in, c_out, STEM_KERNEL, stride=STEM_STRIDE, padding=STEM_PADDING)
            for c_in, c_out in itertools.pairwise(widths)
        )
        self.norms = nn.ModuleList(nn.GroupNorm(cfg.norm_groups, c, eps=eps) for c in cfg.widths)
        self.embedding = nn.Conv2d(cfg.widths[-1], cfg.out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(x)))
        return self.embedding(x).flatten(2).transpose(1, 2)


class ImageTokenizer(nn.Module):
    """One camera: observation window stacked with the goal image on channels, through a stem.

    Octo stacks obs then goal (6 channels for RGB). A missing goal is an all-zero image, i.e.
    -1 after scaling, which is what Octo feeds for language-only tasks.
    """

    def __init__(self, channels: int, cfg: StemConfig, eps: float):
        super().__init__()
        self.channels = channels
        self.stem = SmallStem16(2 * channels, cfg, eps)

    def forward(self, images: torch.Tensor, goal: torch.Tensor | None = None) -> torch.Tensor:
        """images ``(B, To, C, H, W)`` in [0, 1], goal ``(B, C, H, W)`` in [0, 1] or None
        -> tokens ``(B, To, n, out_dim)``."""
        b, t = images.shape[:2]
        if goal is None:
            goal = images.new_zeros(b, *images.shape[2:])
        stacked = torch.cat([images, goal[:, None].expand(-1, t, -1, -1, -1)], dim=2)
        # Octo scales uint8 pixels by x / 127.5 - 1; for x01 = x / 255 that is 2 * x01 - 1.
        tokens = self.stem(stacked.flatten(0, 1) * 2.0 - 1.0)
        return tokens.unflatten(0, (b, t))


def proprio_tokens(proprio: torch.Tensor) -> torch.Tensor:
    """Octo's non-discretised `LowdimObsTokenizer`: one 1-feature token per dimension.

    ``(B, To, P)`` -> ``(B, To, P, 1)``; the model's projection lifts each to D.
    """
    return proprio[..., None]
