"""Octo's diffusion action head network (`heads_action/diffusion_model`, a ScoreActor).

Network only: it predicts the noise for a noisy flattened action chunk given the readout embedding
and the diffusion step. The DDPM schedule, loss and sampling belong to a policy. Kept so a converted
checkpoint can carry Octo's head and so parameter counts match Octo's published 27M / 93M.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from policylab.models.octo.config import ActionHeadConfig

# Flax nn.Dense inside MLPResNetBlock expands by 4, as in a transformer MLP.
RESNET_EXPANSION = 4


class FourierFeatures(nn.Module):
    """Learnable Fourier features: ``[cos(2 pi t W^T), sin(2 pi t W^T)]``, cos first."""

    def __init__(self, out_dim: int, in_dim: int = 1):
        super().__init__()
        self.kernel = nn.Parameter(torch.zeros(out_dim // 2, in_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        f = 2 * math.pi * t @ self.kernel.T
        return torch.cat([f.cos(), f.sin()], dim=-1)


class ResidualMLPBlock(nn.Module):
    """``x + Dense(swish(Dense_4x(LN(x))))`` (Octo's MLPResNetBlock with layer norm, no dropout)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, RESNET_EXPANSION * dim)
        self.fc2 = nn.Linear(RESNET_EXPANSION * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.silu(self.fc1(self.norm(x))))


class OctoDiffusionHeadNet(nn.Module):
    """eps-prediction network of Octo's diffusion head.

    forward: embedding ``(B, D)``, noisy actions ``(B, Ta * Da)``, step ``(B, 1)`` float
    -> predicted noise ``(B, Ta * Da)``.
    """

    def __init__(self, embed_dim: int, cfg: ActionHeadConfig, eps: float):
        super().__init__()
        self.action_size = cfg.action_dim * cfg.action_horizon
        self.time_features = FourierFeatures(cfg.time_dim)
        self.cond_encoder = nn.Sequential(
            nn.Linear(cfg.time_dim, 2 * cfg.time_dim), nn.SiLU(), nn.Linear(2 * cfg.time_dim, cfg.time_dim)
        )
        self.input = nn.Linear(cfg.time_dim + embed_dim + self.action_size, cfg.hidden_dim)
        self.blocks = nn.ModuleList(ResidualMLPBlock(cfg.hidden_dim, eps) for _ in range(cfg.num_blocks))
        self.output = nn.Linear(cfg.hidden_dim, self.action_size)

    def forward(self, embedding: torch.Tensor, noisy_actions: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        cond = self.cond_encoder(self.time_features(step))
        x = self.input(torch.cat([cond, embedding, noisy_actions], dim=-1))
        for block in self.blocks:
            x = block(x)
        return self.output(F.silu(x))
