"""Rebuild a policy from a checkpoint directory: the one place a checkpoint's config becomes objects."""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path

import hydra
import torch
from omegaconf.errors import InterpolationResolutionError

from policylab.common.checkpoint import (
    CONFIG,
    EMA_MODEL,
    MODEL,
    CheckpointError,
    find_checkpoint_dir,
    load_config,
    load_weights,
)
from policylab.common.config import ConfigLimitError
from policylab.common.safe_config import UnsafeConfigError, check_config, walk_config

# A checkpoint may load others (a distilled student's teacher, an encoder through
# BasePolicy.from_checkpoint); real chains are 2-3 deep.
MAX_NESTED_CHECKPOINTS = 8
_loading: ContextVar[tuple[str, ...]] = ContextVar("policylab_loading_checkpoints", default=())


class CheckpointRecursionError(CheckpointError):
    """A checkpoint names itself, or one that is loading it, as a checkpoint to load."""


def load_policy(ckpt_dir: str | Path, device: str | torch.device = "cpu", use_ema: bool = True):
    """Rebuild any policylab policy from a checkpoint directory alone; its config may only name
    allow-listed targets (`policylab.common.safe_config`), else UnsafeConfigError; a checkpoint that
    loads itself (as its teacher or encoder, directly or through others) is a CheckpointRecursionError."""
    ckpt_dir = find_checkpoint_dir(ckpt_dir)
    chain = (*_loading.get(), os.path.realpath(ckpt_dir))
    if len(chain) > MAX_NESTED_CHECKPOINTS:
        raise CheckpointRecursionError(f"{ckpt_dir}: more than {MAX_NESTED_CHECKPOINTS} checkpoints load each other "
                                       f"({' -> '.join(chain[:3])} -> ...)")
    cfg = load_config(ckpt_dir)
    if "policy" not in cfg or "_target_" not in cfg.policy:
        raise CheckpointError(f"{ckpt_dir / CONFIG} has no policy._target_")
    try:  # the config came from elsewhere: build only allow-listed targets (safe_config.py)
        tree = check_config(cfg.policy, "policy")
    except (UnsafeConfigError, ConfigLimitError) as err:
        raise type(err)(f"{ckpt_dir / CONFIG}: {err}") from None
    except InterpolationResolutionError as err:  # e.g. a ${calc:} beyond its bounds, an unknown name
        raise CheckpointError(f"{ckpt_dir / CONFIG}: {err}") from None
    _refuse_loading_itself(tree, ckpt_dir, chain)
    token = _loading.set(chain)
    try:
        policy = hydra.utils.instantiate(tree)
    except Exception as err:
        cause = _cause(err, CheckpointRecursionError)
        if cause is not None:  # raise it as it is, not wrapped once per checkpoint level by hydra
            raise cause from None
        raise
    finally:
        _loading.reset(token)
    weights = ckpt_dir / (EMA_MODEL if use_ema and (ckpt_dir / EMA_MODEL).exists() else MODEL)
    load_weights(policy, weights)
    return policy.to(device).eval()


def _refuse_loading_itself(tree, ckpt_dir: Path, chain: tuple[str, ...]) -> None:
    """Refuse a path in the policy config `tree` that is this checkpoint or one loading it."""
    for key, value in walk_config(tree, "policy"):
        if isinstance(value, str) and 0 < len(value) < 4096 and os.path.isdir(value) and \
                os.path.realpath(find_checkpoint_dir(value)) in chain:
            raise CheckpointRecursionError(
                f"{ckpt_dir / CONFIG}: {key} = {value!r} is this checkpoint or one loading it; a checkpoint may "
                f"not load itself (as its teacher or encoder)")


def _cause(err: BaseException | None, kind: type) -> BaseException | None:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
