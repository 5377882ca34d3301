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
from policylab.common.locking import atomic_write_text

CONFIG, MODEL, EMA_MODEL, TRAINING_STATE, NORMALIZER, CHECKSUMS = (
    "config.yaml", "model.safetensors", "ema_model.safetensors", "training_state.pt", "normalizer.json",
    "checksums.json")
TOPK_INDEX = "topk.json"
# Names save_checkpoint and atomic_write_text give their temporary and superseded entries.
_SCRATCH = re.compile(r"\..+\.(?:(?:tmp|link|old)-)?[0-9a-f]{8}")
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


def clean_orphans(ckpt_root: str | Path) -> list[Path]:
    """Remove what killed checkpoint writes leave in `ckpt_root`; returns the removed paths.

    That is: `.<name>.tmp-*` directories (a save in progress), `.<name>.link-*` symlinks and
    `.<name>.old-*` directories (a swap in progress), `.<name>.<id>` directories that no name
    points to any more, and `.topk.json.tmp-*` files. Call it only while holding the run directory's
    lock (`RunDirLock`): a concurrent writer's scratch directories look the same.
    """
    ckpt_root = Path(ckpt_root)
    if not ckpt_root.is_dir():
        return []
    live = {p.resolve() for p in ckpt_root.iterdir() if p.is_symlink() and not p.name.startswith(".")}
    removed = []
    for path in sorted(ckpt_root.iterdir()):
        if not _SCRATCH.fullmatch(path.name) or (not path.is_symlink() and path.resolve() in live):
            continue
        if path.is_symlink() or path.is_file():  # a hidden symlink is always a swap in progress
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def find_resume_checkpoint(ckpt_root: str | Path, resume: bool | str) -> Path | None:
    """The checkpoint `training.resume` asks for: False -> None (a fresh run); True -> `<ckpt_root>/latest`,
    a CheckpointError naming the directory when there is none (it silently started fresh before);
    "auto" -> `latest` when it exists, else None (resume if possible, quietly)."""
    latest = Path(ckpt_root) / "latest"
    if resume is False or resume is None:
        return None
    if resume == "auto":
        return latest if (latest / CONFIG).is_file() else None
    if resume is True:
        if not (latest / CONFIG).is_file():
            raise CheckpointError(f"training.resume=true but {latest} holds no checkpoint; point hydra.run.dir at "
                                  f"the run to resume, or use training.resume=auto to start fresh when there is none")
        return latest
    raise ValueError(f"training.resume must be true, false or 'auto', got {resume!r}")


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
        self.index_path = self.save_dir / TOPK_INDEX
        self.entries: dict[str, float] = self._read_index()

    def _read_index(self) -> dict[str, float]:
        """topk.json; when it is torn or unreadable, the index rebuilt from the checkpoint names."""
        if not self.index_path.exists():
            return {}
        try:
            entries = json.loads(self.index_path.read_text())
            if not isinstance(entries, dict) or not all(isinstance(v, (int, float)) for v in entries.values()):
                raise ValueError("not a {name: value} mapping")
            return {str(k): float(v) for k, v in entries.items()}
        except (ValueError, OSError) as err:
            entries = self._entries_from_names(err)
            warnings.warn(f"{self.index_path} is unreadable ({err}); rebuilt it from the checkpoint directory "
                          f"names: {sorted(entries)}", stacklevel=3)
            atomic_write_text(self.index_path, json.dumps(entries, indent=2))
            return entries

    def _entries_from_names(self, err: Exception) -> dict[str, float]:
        """{name: value} for the checkpoints in save_dir whose names `format_str` made (the value is in the
        name, to its printed precision)."""
        key = re.escape(self.monitor_key.replace("/", "_"))
        # Turn the format string into a pattern: every field matches anything, `{value...}` is captured.
        pattern, pos = "", 0
        for match in re.finditer(r"\{(\w+)[^}]*\}", self.format_str):
            pattern += re.escape(self.format_str[pos:match.start()])
            field = match.group(1)
            pattern += {"value": r"(?P<value>[-+0-9.eE]+|nan|inf|-inf)", "monitor_key": key}.get(field, r".+?")
            pos = match.end()
        pattern = re.compile(pattern + re.escape(self.format_str[pos:]))
        entries = {}
        for path in sorted(self.save_dir.iterdir()) if self.save_dir.is_dir() else []:
            match = pattern.fullmatch(path.name)
            if match and not path.name.startswith(".") and (path / CONFIG).is_file():
                entries[path.name] = float(match.group("value"))
        if not entries and any(p.is_dir() and not p.name.startswith(".") and p.name != "latest"
                               for p in (self.save_dir.iterdir() if self.save_dir.is_dir() else [])):
            raise CheckpointError(f"{self.index_path} is unreadable ({err}) and no checkpoint name in "
                                  f"{self.save_dir} matches {self.format_str!r}; delete {self.index_path.name} "
                                  f"to start a new index")
        return entries

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
        atomic_write_text(self.index_path, json.dumps(self.entries, indent=2))
        return self.save_dir / name
