"""Checkpoints: tensors and text only, written atomically.

    checkpoints/<name>/
      config.yaml             the resolved Hydra config (rebuilds the policy)
      model.safetensors       policy weights, normalizer buffers included
      ema_model.safetensors   the EMA policy, when EMA is on
      training_state.pt       optimizer, LR scheduler, EMA step, counters, RNG states:
                              plain tensors and numbers, loadable with weights_only=True
      <name>.safetensors      extra modules by name (e.g. critic, target_critic), when given
      normalizer.json         the normalizer stats, for humans
      checksums.json          sha256 of every file above; verified when a file is loaded

A checkpoint is written into a hidden directory next to its final place; then the name is pointed
at it by atomically replacing a symlink (`latest -> .latest.<id>`), so a crash at any moment leaves
either the old or the new checkpoint under the name, never a half-written one or none.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_model

import policylab.common.config  # noqa: F401  (registers ${calc:}) before configs are resolved
from policylab.common.safe_config import UnsafeConfigError, instantiate_trusted

CONFIG, MODEL, EMA_MODEL, TRAINING_STATE, NORMALIZER, CHECKSUMS = (
    "config.yaml", "model.safetensors", "ema_model.safetensors", "training_state.pt", "normalizer.json",
    "checksums.json")
_MODULE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing files or holds unreadable ones."""


def save_checkpoint(ckpt_dir: str | Path, cfg: DictConfig, policy: torch.nn.Module,
                    ema_policy: torch.nn.Module | None = None, training_state: Mapping | None = None,
                    modules: Mapping[str, torch.nn.Module] | None = None) -> Path:
    """Write a checkpoint atomically; `modules` become `<name>.safetensors` (load them with `load_modules`).

    `training_state` is a free dict of tensors, numbers, strings and nested lists/dicts of them (e.g.
    several optimizers' state dicts), so that it loads with `weights_only=True`.
    """
    ckpt_dir = Path(ckpt_dir)
    modules = dict(modules or {})
    for name in modules:
        _module_file(name)  # refuse bad names before anything is written
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir.parent / f".{ckpt_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        (tmp / CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
        save_model(policy, str(tmp / MODEL))
        if ema_policy is not None:
            save_model(ema_policy, str(tmp / EMA_MODEL))
        if training_state is not None:
            torch.save(dict(training_state), tmp / TRAINING_STATE)
        for name, module in modules.items():
            save_model(module, str(tmp / _module_file(name)))
        if hasattr(policy, "normalizer"):
            (tmp / NORMALIZER).write_text(policy.normalizer.to_json())
        sums = {f.name: _sha256(f) for f in sorted(tmp.iterdir())}
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2))
        _fsync_dir(tmp)
        _replace_dir(tmp, ckpt_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ckpt_dir


def _module_file(name: str) -> str:
    reserved = {Path(f).stem for f in (CONFIG, MODEL, EMA_MODEL, TRAINING_STATE, NORMALIZER, CHECKSUMS)}
    if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name) or name in reserved:
        raise ValueError(f"checkpoint module name {name!r} must be letters, digits, '_' or '-' and not one of "
                         f"{sorted(reserved)}")
    return f"{name}.safetensors"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_warned_unverified: set[Path] = set()


def verify_file(path: str | Path) -> Path:
    """Check `path` against the sha256 in its directory's checksums.json; raise CheckpointError naming it.

    Checkpoints written before checksums existed have no checksums.json: they load with one warning.
    """
    path = Path(path)
    index = path.parent / CHECKSUMS
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {path.name}")
    if not index.is_file():
        if path.parent not in _warned_unverified:
            _warned_unverified.add(path.parent)
            warnings.warn(f"{path.parent} has no {CHECKSUMS} (written by an older policylab?): its files are "
                          f"loaded without verification", stacklevel=3)
        return path
    try:
        sums = json.loads(index.read_text())
    except (ValueError, OSError) as err:
        raise CheckpointError(f"cannot read {index}: {err}") from err
    if path.name not in sums:
        raise CheckpointError(f"{path} is not listed in {index}; it was not written with this checkpoint")
    if _sha256(path) != sums[path.name]:
        raise CheckpointError(f"{path} is corrupt: its sha256 does not match {index} (the file was modified or "
                              f"damaged after it was written)")
    return path


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _replace_dir(src: Path, dst: Path) -> None:
    """Make `dst` name the complete directory `src`, atomically (a symlink swap)."""
    target = dst.parent / f".{dst.name}.{uuid.uuid4().hex[:8]}"
    os.replace(src, target)
    old_target = dst.resolve() if dst.is_symlink() else None
    if dst.exists() and not dst.is_symlink():  # a plain directory (copied checkpoints): move it aside
        aside = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, aside)
        old_target = aside
    link = dst.parent / f".{dst.name}.link-{uuid.uuid4().hex[:8]}"
    os.symlink(target.name, link)
    os.replace(link, dst)
    if old_target is not None and old_target != target.resolve():
        shutil.rmtree(old_target, ignore_errors=True)


def remove_checkpoint(ckpt_dir: str | Path) -> None:
    """Delete a checkpoint name and the directory it points to."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_symlink():
        target = ckpt_dir.resolve()
        ckpt_dir.unlink()
        shutil.rmtree(target, ignore_errors=True)
    elif ckpt_dir.exists():
        shutil.rmtree(ckpt_dir, ignore_errors=True)


def load_config(ckpt_dir: str | Path) -> DictConfig:
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / CONFIG).is_file():
        raise CheckpointError(f"{ckpt_dir} is not a policylab checkpoint: no {CONFIG}")
    return OmegaConf.load(verify_file(ckpt_dir / CONFIG))


def load_weights(module: torch.nn.Module, path: str | Path) -> None:
    """Load a `.safetensors` file (verified against its checkpoint's checksums.json) into `module`."""
    path = Path(path)
    verify_file(path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"cannot read {path}: {err}") from err
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointError(f"{path} does not fit {type(module).__name__}: {err}") from err
    # save_model stores a tensor shared by several names (tied weights, a shared trunk) under one of
    # them; the other names were filled through it.
    own = module.state_dict(keep_vars=True)
    loaded_ptrs = {(own[k].data_ptr(), own[k].shape) for k in state if k in own}
    missing = [k for k in missing if (own[k].data_ptr(), own[k].shape) not in loaded_ptrs]
    # Buffers that a module rebuilds itself (e.g. masks) may be absent; parameters may not.
    missing = [k for k in missing if k in dict(module.named_parameters())]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit {type(module).__name__}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")


def load_policy(ckpt_dir: str | Path, device: str | torch.device = "cpu", use_ema: bool = True):
    """Rebuild any policylab policy from a checkpoint directory alone; its config may only name
    allow-listed targets (`policylab.common.safe_config`), else UnsafeConfigError."""
    ckpt_dir = Path(ckpt_dir)
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


def load_modules(ckpt_dir: str | Path, modules: Mapping[str, torch.nn.Module]) -> None:
    """Load the extra modules saved with `save_checkpoint(..., modules=...)` into `modules`, by name."""
    ckpt_dir = Path(ckpt_dir)
    for name, module in modules.items():
        path = ckpt_dir / _module_file(name)
        if not path.is_file():
            raise CheckpointError(f"{ckpt_dir} has no {path.name} (module {name!r} was not saved with it)")
        load_weights(module, path)


def load_training_state(ckpt_dir: str | Path) -> dict:
    path = Path(ckpt_dir) / TRAINING_STATE
    if not path.exists():
        raise CheckpointError(f"{ckpt_dir} has no {TRAINING_STATE}; cannot resume from it")
    verify_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read {path} (corrupt, or holds pickled objects): {err}") from err


def get_rng_state() -> dict:
    """Python, NumPy and torch RNG states as tensors and plain lists (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
             "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TopKCheckpointManager:
    """Keeps the k best checkpoints by a monitored metric; names them from `format_str`."""

    def __init__(self, save_dir: str | Path, monitor_key: str, mode: str = "max", k: int = 5,
                 format_str: str = "epoch={epoch:04d}-{monitor_key}={value:.3f}"):
        if mode not in ("max", "min"):
            raise ValueError(f"topk mode must be 'max' or 'min', got {mode!r}")
        self.save_dir, self.monitor_key, self.mode, self.k, self.format_str = Path(save_dir), monitor_key, mode, k, format_str
        self.index_path = self.save_dir / "topk.json"
        self.entries: dict[str, float] = json.loads(self.index_path.read_text()) if self.index_path.exists() else {}

    def get_ckpt_path(self, metrics: Mapping) -> Path | None:
        """Where to save for these metrics, or None when the checkpoint does not make the top k."""
        if self.k <= 0 or self.monitor_key not in metrics:
            return None
        value = float(metrics[self.monitor_key])
        if math.isnan(value):
            return None
        name = self.format_str.format(epoch=int(metrics.get("epoch", 0)), monitor_key=self.monitor_key.replace("/", "_"),
                                      value=value)
        ranked = sorted({**self.entries, name: value}.items(), key=lambda kv: kv[1], reverse=self.mode == "max")
        keep = dict(ranked[: self.k])
        if name not in keep:
            return None
        for dropped in set(self.entries) - set(keep):
            remove_checkpoint(self.save_dir / dropped)
        self.entries = keep
        self.save_dir.mkdir(parents=True, exist_ok=True)
        self.index_path.write_text(json.dumps(self.entries, indent=2))
        return self.save_dir / name
