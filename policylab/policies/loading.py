"""Rebuild a policy from a checkpoint directory: the one place a checkpoint's config becomes objects."""

from __future__ import annotations

from pathlib import Path

import torch

from policylab.common.checkpoint import (
    CONFIG,
    EMA_MODEL,
    MODEL,
    CheckpointError,
    find_checkpoint_dir,
    load_config,
    load_weights,
)
from policylab.common.safe_config import UnsafeConfigError, instantiate_trusted


def load_policy(ckpt_dir: str | Path, device: str | torch.device = "cpu", use_ema: bool = True):
    """Rebuild any policylab policy from a checkpoint directory alone; its config may only name
    allow-listed targets (`policylab.common.safe_config`), else UnsafeConfigError."""
    ckpt_dir = find_checkpoint_dir(ckpt_dir)
    cfg = load_config(ckpt_dir)
    if "policy" not in cfg or "_target_" not in cfg.policy:
        raise CheckpointError(f"{ckpt_dir / CONFIG} has no policy._target_")
    try:  # the config came from elsewhere: build only allow-listed targets (safe_config.py)
        policy = instantiate_trusted(cfg.policy, "policy")
    except UnsafeConfigError as err:
        raise UnsafeConfigError(f"{ckpt_dir / CONFIG}: {err}") from None
    weights = ckpt_dir / (EMA_MODEL if use_ema and (ckpt_dir / EMA_MODEL).exists() else MODEL)
    load_weights(policy, weights)
    return policy.to(device).eval()
