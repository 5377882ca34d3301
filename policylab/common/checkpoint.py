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
      checksums.json.hmac     HMAC-SHA256 of checksums.json, when a checkpoint key is configured

What the checksums promise: a file changed after it was written (a flipped bit, a truncated copy,
files mixed from two checkpoints) is an error naming it. They do not protect against someone who can
write the folder: they can rewrite checksums.json as well. For that, configure a secret key
(`POLICYLAB_CHECKPOINT_KEY`, or `POLICYLAB_CHECKPOINT_KEY_FILE` naming a file that holds it): every
save then signs checksums.json, and every load refuses a checkpoint whose signature is missing or
does not match, or that has no checksums.json. A signature proves the folder was written by someone
holding the key; it does not hide the contents, nor tell a newer signed checkpoint from an older one
(or its name). Whatever the signature says, a checkpoint's config only builds allow-listed targets.

Each name is a plain directory (`cp -r`, `rsync` and `tar` copy it as it is). It is written into a
hidden `.<name>.tmp-<id>` beside its place, then swapped in with two renames: the old directory to
`.<name>.old-<id>`, the new one to `<name>`; then the old one is removed. A kill at any moment leaves
the old or the new complete checkpoint: between the two renames only `.<name>.old-<id>` holds it,
so readers fall back to it (`find_checkpoint_dir`) and the next run's start renames it back
(`clean_orphans`). Runs written by older versions, where `<name>` is a symlink to `.<name>.<id>`,
load unchanged; their next save replaces the symlink by a directory.

Nothing outside the checkpoint folder is removed: names read from files (topk.json keys, symlink
targets) must be plain names in the folder, and only directories this module wrote are deleted (a
symlink is unlinked; what it points to is left alone unless it is an old `.<name>.<id>` sibling).
"""

from __future__ import annotations

import hashlib
import hmac
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

from policylab.common.config import ConfigLimitError, load_bounded_yaml
from policylab.common.locking import atomic_write_text
from policylab.common.safe_config import check_resolution_cost

CONFIG, MODEL, EMA_MODEL, TRAINING_STATE, NORMALIZER, CHECKSUMS = (
    "config.yaml", "model.safetensors", "ema_model.safetensors", "training_state.pt", "normalizer.json",
    "checksums.json")
TOPK_INDEX = "topk.json"
SIGNATURE = CHECKSUMS + ".hmac"
KEY_ENV, KEY_FILE_ENV = "POLICYLAB_CHECKPOINT_KEY", "POLICYLAB_CHECKPOINT_KEY_FILE"
MIN_KEY_BYTES = 16
# Names save_checkpoint and atomic_write_text give their temporary and superseded entries.
_SCRATCH = re.compile(r"\..+\.(?:(?:tmp|link|old)-)?[0-9a-f]{8}")
_ASIDE = re.compile(r"\.(.+)\.old-[0-9a-f]{8}")
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
    key = checkpoint_key()  # an unreadable key file fails before anything is written
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
        if key is not None:
            (tmp / SIGNATURE).write_text(_signature(key, (tmp / CHECKSUMS).read_bytes()))
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


def checkpoint_key() -> bytes | None:
    """The secret that signs and verifies checkpoints: `POLICYLAB_CHECKPOINT_KEY` (the key) or
    `POLICYLAB_CHECKPOINT_KEY_FILE` (a file holding it), at least MIN_KEY_BYTES; None when unset."""
    key_file, value = os.environ.get(KEY_FILE_ENV), os.environ.get(KEY_ENV)  # empty = unset
    if key_file and value:
        raise CheckpointError(f"both {KEY_ENV} and {KEY_FILE_ENV} are set; set one")
    if key_file:
        try:
            value = Path(key_file).read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise CheckpointError(f"cannot read the checkpoint key file {KEY_FILE_ENV}={key_file}: {err}") from err
    elif not value:
        return None
    name = KEY_FILE_ENV if key_file else KEY_ENV
    key = value.strip().encode()
    if len(key) < MIN_KEY_BYTES:
        raise CheckpointError(f"the checkpoint key from {name} is {len(key)} bytes; use at least {MIN_KEY_BYTES} "
                              f"(e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
    return key


def _signature(key: bytes, manifest: bytes) -> str:
    return hmac.new(key, manifest, hashlib.sha256).hexdigest()


def sign_checkpoint(ckpt_dir: str | Path) -> Path:
    """Sign an existing checkpoint with the configured key (e.g. one written before a key was set),
    after checking every file against its checksums.json. Returns the signature file."""
    ckpt_dir, key = Path(ckpt_dir), checkpoint_key()
    if key is None:
        raise CheckpointError(f"set {KEY_ENV} or {KEY_FILE_ENV} to sign {ckpt_dir}")
    index = ckpt_dir / CHECKSUMS
    if not index.is_file():
        raise CheckpointError(f"{ckpt_dir} has no {CHECKSUMS}: nothing to sign")
    manifest = index.read_bytes()
    for name, digest in _parse_sums(index, manifest).items():
        if not is_plain_name(name) or _sha256(ckpt_dir / name) != digest:
            raise CheckpointError(f"{ckpt_dir / name} does not match {index}; refusing to sign")
    atomic_write_text(ckpt_dir / SIGNATURE, _signature(key, manifest))
    return ckpt_dir / SIGNATURE


def _parse_sums(index: Path, manifest: bytes) -> dict[str, str]:
    try:
        sums = json.loads(manifest)
    except ValueError as err:
        raise CheckpointError(f"cannot read {index}: {err}") from err
    if not isinstance(sums, dict):
        raise CheckpointError(f"cannot read {index}: not a {{file: sha256}} mapping")
    return sums


def _read_sums(ckpt_dir: Path) -> dict[str, str] | None:
    """checksums.json of `ckpt_dir`, its signature checked when a key is configured; None (with one
    warning) for an old unsigned checkpoint without one when no key is configured."""
    index, key = ckpt_dir / CHECKSUMS, checkpoint_key()
    if not index.is_file():
        if key is not None:
            raise CheckpointError(f"{ckpt_dir} has no {CHECKSUMS} and a checkpoint key is configured ({KEY_ENV} / "
                                  f"{KEY_FILE_ENV}): refusing a checkpoint that cannot be verified")
        if ckpt_dir not in _warned_unverified:
            _warned_unverified.add(ckpt_dir)
            warnings.warn(f"{ckpt_dir} has no {CHECKSUMS} (written by an older policylab?): its files are "
                          f"loaded without verification", stacklevel=4)
        return None
    try:
        manifest = index.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read {index}: {err}") from err
    if key is not None:
        signature = ckpt_dir / SIGNATURE
        if not signature.is_file():
            raise CheckpointError(f"{ckpt_dir} is not signed (no {SIGNATURE}) and a checkpoint key is configured; "
                                  f"if you trust it, sign it with policylab.common.checkpoint.sign_checkpoint")
        if not hmac.compare_digest(signature.read_text().strip(), _signature(key, manifest)):
            raise CheckpointError(f"{signature} does not match {CHECKSUMS} under the configured key: the folder "
                                  f"was changed by someone without the key, or signed with another key")
    return _parse_sums(index, manifest)


def verify_file(path: str | Path) -> Path:
    """Check `path` against the sha256 in its directory's checksums.json (whose signature is checked
    when a checkpoint key is configured); raise CheckpointError naming it.

    Checkpoints written before checksums existed have no checksums.json: without a key they load
    with one warning; with a key they are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {path.name}")
    sums = _read_sums(path.parent)
    if sums is None:
        return path
    if path.name not in sums:
        raise CheckpointError(f"{path} is not listed in {path.parent / CHECKSUMS}; it was not written with this "
                              f"checkpoint")
    if _sha256(path) != sums[path.name]:
        raise CheckpointError(f"{path} is corrupt: its sha256 does not match {path.parent / CHECKSUMS} (the file "
                              f"was modified or damaged after it was written)")
    return path


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _fsync_parent(path: Path) -> None:
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _replace_dir(src: Path, dst: Path) -> None:
    """Make `dst` the complete directory `src` with two renames (old `dst` aside, `src` in), then
    remove the old one. Whatever `dst` was (a directory, an old-style symlink) is renamed itself,
    never followed."""
    aside = None
    if dst.is_symlink() or dst.exists():
        aside = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, aside)
    os.replace(src, dst)
    _fsync_parent(dst)
    if aside is not None:
        _discard(aside, dst.name)


def _discard(path: Path, name: str) -> None:
    """Remove `path`, an entry of a checkpoint folder that held checkpoint `name`. A symlink is
    unlinked; its target is removed too only when it is the `.<name>.<id>` sibling directory that
    older versions wrote for `name` (never a folder it points to elsewhere)."""
    if path.is_symlink():
        target = os.readlink(path)
        path.unlink()
        if re.fullmatch(rf"\.{re.escape(name)}\.[0-9a-f]{{8}}", target):
            sibling = path.parent / target
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def remove_checkpoint(ckpt_dir: str | Path) -> None:
    """Delete the checkpoint `ckpt_dir`: its directory, or, for an old-style symlink, the link and
    its hidden `.<name>.<id>` sibling (never a folder the link points to elsewhere)."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_symlink() or ckpt_dir.exists():
        _discard(ckpt_dir, ckpt_dir.name)


def is_plain_name(name: object) -> bool:
    """True when `name` is one visible entry of a folder: no separator, not `.`/`..`, not hidden,
    not absolute. Names read from files must pass it before they become paths."""
    return (isinstance(name, str) and name not in ("", ".", "..") and not name.startswith(".")
            and not any(sep and sep in name for sep in ("/", "\\", os.sep, os.altsep, "\0")))


def find_checkpoint_dir(ckpt_dir: str | Path) -> Path:
    """`ckpt_dir`, or, when a save was killed between its two renames, the complete previous
    checkpoint it left as `.<name>.old-<id>` (the newest one); read-only: nothing is renamed."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.exists() or not ckpt_dir.parent.is_dir():
        return ckpt_dir
    aside = _asides(ckpt_dir.parent).get(ckpt_dir.name, [])
    return aside[-1] if aside else ckpt_dir


def _asides(ckpt_root: Path) -> dict[str, list[Path]]:
    """{name: its `.<name>.old-<id>` entries holding a config, oldest first}."""
    found: dict[str, list[Path]] = {}
    for path in ckpt_root.iterdir():
        match = _ASIDE.fullmatch(path.name)
        if match and (path / CONFIG).is_file():
            found.setdefault(match.group(1), []).append(path)
    return {name: sorted(paths, key=lambda p: (p / CONFIG).stat().st_mtime_ns) for name, paths in found.items()}


def recover_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Rename back what a save killed between its two renames left aside: `.<name>.old-<id>` ->
    `<name>` when `<name>` is missing (the newest one). Returns the recovered names. Call it only
    while holding the run directory's lock (`RunDirLock`)."""
    ckpt_root = Path(ckpt_root)
    if not ckpt_root.is_dir():
        return []
    recovered = []
    for name, paths in _asides(ckpt_root).items():
        dst = ckpt_root / name
        if is_plain_name(name) and not dst.exists() and not dst.is_symlink():
            os.replace(paths[-1], dst)
            recovered.append(dst)
    return recovered


def clean_orphans(ckpt_root: str | Path) -> list[Path]:
    """Recover checkpoints a killed save left aside (`recover_checkpoints`), then remove what killed
    checkpoint writes leave in `ckpt_root`; returns the removed paths.

    That is: `.<name>.tmp-*` directories (a save in progress), `.<name>.old-*` entries (a swap in
    progress whose new checkpoint is in place), old versions' `.<name>.link-*` symlinks and
    `.<name>.<id>` directories that no name links to any more, and `.topk.json.tmp-*` files. Call it
    only while holding the run directory's lock (`RunDirLock`): a concurrent writer's scratch
    directories look the same. Only entries of `ckpt_root` are removed; links are not followed.
    """
    ckpt_root = Path(ckpt_root)
    if not ckpt_root.is_dir():
        return []
    recover_checkpoints(ckpt_root)
    entries = sorted(ckpt_root.iterdir())
    live = {os.readlink(p) for p in entries if p.is_symlink() and not p.name.startswith(".")}
    removed = []
    for path in entries:
        if not _SCRATCH.fullmatch(path.name) or (not path.is_symlink() and path.name in live):
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
    ckpt_dir = find_checkpoint_dir(ckpt_dir)
    if not (ckpt_dir / CONFIG).is_file():
        raise CheckpointError(f"{ckpt_dir} is not a policylab checkpoint: no {CONFIG}")
    path = verify_file(ckpt_dir / CONFIG)
    cfg = load_bounded_yaml(path)  # a config from elsewhere: bounded size, aliases, lists
    try:
        check_resolution_cost(OmegaConf.to_container(cfg, resolve=False))
    except ConfigLimitError as err:
        raise ConfigLimitError(f"{path}: {err}") from None
    return cfg


def load_weights(module: torch.nn.Module, path: str | Path) -> None:
    """Load a `.safetensors` file (verified against its checkpoint's checksums.json) into `module`."""
    path = find_checkpoint_dir(Path(path).parent) / Path(path).name
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
    ckpt_dir = find_checkpoint_dir(ckpt_dir)
    for name, module in modules.items():
        path = ckpt_dir / _module_file(name)
        if not path.is_file():
            raise CheckpointError(f"{ckpt_dir} has no {path.name} (module {name!r} was not saved with it)")
        load_weights(module, path)


def load_training_state(ckpt_dir: str | Path) -> dict:
    path = find_checkpoint_dir(ckpt_dir) / TRAINING_STATE
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
            return self._confined({str(k): float(v) for k, v in entries.items()})
        except (ValueError, OSError) as err:
            entries = self._entries_from_names(err)
            warnings.warn(f"{self.index_path} is unreadable ({err}); rebuilt it from the checkpoint directory "
                          f"names: {sorted(entries)}", stacklevel=3)
            atomic_write_text(self.index_path, json.dumps(entries, indent=2))
            return entries

    def _confined(self, entries: dict[str, float]) -> dict[str, float]:
        """The entries naming a checkpoint folder in save_dir. Keys that are paths (`../x`, absolute),
        hidden or reserved names are dropped with a warning naming them: they are never removed."""
        bad = [k for k in entries if not is_plain_name(k) or k in ("latest", TOPK_INDEX)]
        if bad:
            warnings.warn(f"{self.index_path}: ignoring entries that do not name a checkpoint folder in "
                          f"{self.save_dir}: {bad}", stacklevel=4)
        return {k: v for k, v in entries.items() if k not in bad}

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
        name = self.format_str.format(epoch=int(metrics.get("epoch", 0)), step=int(metrics.get("step", 0)), monitor_key=self.monitor_key.replace("/", "_"),
                                      value=value)
        if not is_plain_name(name) or name in ("latest", TOPK_INDEX):
            raise ValueError(f"checkpoint.topk.format_str {self.format_str!r} gives {name!r}, not a plain folder name")
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
