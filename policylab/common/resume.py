"""Resume a run by its folder, and keep a refused start from touching the run's record.

`python train.py --resume <run dir> [key=value ...]` reads the overrides the run started with
(`<run dir>/.hydra/overrides.yaml`), so none has to be typed again. Further overrides may change
only what cannot change a shape or what the checkpoint holds: how long the run goes, its budget,
its cadences, logging, the device and data-loading workers (`RESUMABLE`). The composed config is
compared with the one the run recorded (`.hydra/config.yaml`, unresolved on both sides: nothing
from the folder is resolved); any other key that differs (an override, or a YAML in the repo
edited since) refuses the start with the keys' diff, old -> new, before anything is written.
Resumed the long way (`training.resume=true hydra.run.dir=<run>`), a checkpoint that does not
load into a run whose config differs from the checkpoint's is the same diff, not the loader's
hundreds of lines of size mismatches (`explain_config_mismatch`).

Hydra writes its record of a start (`config.yaml`, `overrides.yaml`, `hydra.yaml`) before the
start is accepted; train.py points it at `.hydra-pending-<pid>/` and the workspace moves that over
`.hydra/` once the run holds its directory and has loaded its checkpoint (`commit_hydra_record`),
so a refused or failed start leaves the run's `.hydra/` as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

HYDRA_DIR = ".hydra"
PENDING_PREFIX = ".hydra-pending-"
# Key prefixes a resume may change: run length, budgets, cadences, logging, device, loader workers.
RESUMABLE = (
    "training.resume", "training.num_epochs", "training.num_steps", "training.max_train_steps",
    "training.max_train_minutes", "training.max_env_steps", "training.rollout_every", "training.val_every",
    "training.sample_every", "training.checkpoint_every", "training.eval_every", "training.eval_at_end",
    "training.log_every", "training.max_val_steps", "training.dist_timeout_minutes", "training.device",
    "training.torch_threads", "logging.", "dataloader.num_workers", "dataloader.pin_memory",
    "dataloader.persistent_workers", "val_dataloader.num_workers", "val_dataloader.pin_memory",
    "val_dataloader.persistent_workers",
)
_ABSENT = "<absent>"
log = logging.getLogger(__name__)
# In an overrides.yaml from elsewhere: a resolver other than ${calc:} could read the environment or run code.
_RESOLVER = re.compile(r"\$\{\s*(?!calc\s*:)[\w.]+\s*:")


class ResumeRefused(ValueError):
    """A resume whose config differs from the checkpoint's where it may not; the message has the diff."""


def resumable(key: str) -> bool:
    return any(key == p or key.startswith(p if p.endswith(".") else p + ".") for p in RESUMABLE)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": leaf} of a config, interpolations left as written; lists are leaves."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    if not isinstance(cfg, Mapping) or (prefix and not cfg):
        return {prefix: cfg}
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        out |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def config_diff(old: Any, new: Any) -> dict[str, tuple[Any, Any]]:
    """{key: (old value, new value)} for every leaf that differs (`<absent>` where a side lacks it)."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(a.keys() | b.keys())
            if a.get(k, _ABSENT) != b.get(k, _ABSENT)}


def format_diff(diff: Mapping[str, tuple[Any, Any]], limit: int = 40) -> str:
    """One line per key, `  key: old -> new`, refused keys first (marked), at most `limit` lines."""
    keys = sorted(diff, key=lambda k: (resumable(k), k))
    lines = [f"  {k}: {diff[k][0]!r} -> {diff[k][1]!r}" + ("" if resumable(k) else "   (refused)")
             for k in keys[:limit]]
    if len(keys) > limit:
        lines.append(f"  ... and {len(keys) - limit} more keys")
    return "\n".join(lines)


def refused_keys(old: Any, new: Any) -> dict[str, tuple[Any, Any]]:
    """The diff of `old` and `new`, if any key in it is not resumable; else {}."""
    diff = config_diff(old, new)
    return diff if any(not resumable(k) for k in diff) else {}


def read_run_overrides(run_dir: Path) -> list[str]:
    """The overrides `run_dir` was started with, checked: nothing in them may reach Hydra's own
    keys, set a `_target_`-like key, or use a resolver other than `${calc:}` (the file may come from elsewhere)."""
    path = run_dir / HYDRA_DIR / "overrides.yaml"
    if not path.is_file():
        raise ResumeRefused(f"--resume {run_dir}: no {HYDRA_DIR}/overrides.yaml there; is it a train.py run "
                            f"directory? (resume it the long way: <its overrides> training.resume=true "
                            f"hydra.run.dir={run_dir})")
    try:  # plain YAML: OmegaConf would resolve the `${...}` this checks before it is checked
        saved = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ResumeRefused(f"{path} is not YAML: {err}") from None
    if not isinstance(saved, list) or not all(isinstance(o, str) for o in saved):
        raise ResumeRefused(f"{path} is not a list of overrides")
    for override in saved:
        key = _override_key(override)
        if key.startswith("hydra") or any(part.startswith("_") for part in key.split(".")) or "_target_" in override \
                or _RESOLVER.search(override):
            raise ResumeRefused(f"{path}: override {override!r} is not one train.py resumes from a file "
                                f"(Hydra's own keys, _target_-like keys and resolvers other than calc are refused)")
    return list(saved)


def _override_key(override: str) -> str:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        [parsed] = OverridesParser.create().parse_overrides([override])
    except HydraException as err:
        raise ResumeRefused(f"cannot parse override {override!r}: {err}") from None
    return parsed.key_or_group


def merge_overrides(saved: Sequence[str], extra: Sequence[str]) -> list[str]:
    """`saved` with each `extra` replacing the saved override of the same key (else appended)."""
    extra_keys = {_override_key(o) for o in extra}
    return [o for o in saved if _override_key(o) not in extra_keys] + list(extra)


def resume_overrides(run_dir: str | Path, extra: Sequence[str],
                     compose: Callable[[list[str]], DictConfig]) -> list[str]:
    """The overrides that resume `run_dir` (its own, `extra` on top, `training.resume=true`), after
    checking that the config they compose differs from the run's recorded `.hydra/config.yaml`
    only in resumable keys.

    compose: overrides -> the config `train.py <overrides>` would run (unresolved).
    """
    run_dir = Path(run_dir)
    for override in extra:
        if _override_key(override).startswith("hydra"):
            raise ResumeRefused(f"--resume {run_dir}: {override!r} changes Hydra's settings; the run directory "
                                f"is the one given to --resume")
    overrides = merge_overrides(read_run_overrides(run_dir), [*extra, "training.resume=true"])
    recorded = run_dir / HYDRA_DIR / "config.yaml"
    if recorded.is_file():
        diff = refused_keys(yaml.safe_load(recorded.read_text()), compose(overrides))
        if diff:
            raise ResumeRefused(
                f"--resume {run_dir}: the config differs from its checkpoint's where a resume may not change it "
                f"(old -> new):\n{format_diff(diff)}\nA resume may change only the run's length, budgets, cadences, "
                f"logging, device and loader workers (RESUMABLE in policylab/common/resume.py); to train with a "
                f"changed config, start a new run.")
    return [*overrides, f"hydra.run.dir={run_dir}"]


def mismatch_message(checkpoint: Path, ckpt_cfg: Any, cfg: Any, error: Exception) -> str:
    """Why a checkpoint did not load into this run, when their configs differ: the keys' diff
    first, the loader's error shortened to its first line."""
    diff = config_diff(ckpt_cfg, cfg)
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    return (f"cannot resume from {checkpoint}: this run's config differs from the checkpoint's (old -> new):\n"
            f"{format_diff(diff)}\nResume with the run's own config: python train.py --resume <run dir> "
            f"(or repeat the run's overrides). The loader said: {first}")


def pending_record_dir() -> str:
    """The `hydra.output_subdir` train.py gives Hydra: this process's pending record."""
    return f"{PENDING_PREFIX}{os.getpid()}"


def _pending(run_dir: Path) -> Path | None:
    """This process's pending record in `run_dir`, if Hydra wrote one."""
    try:
        from hydra.core.hydra_config import HydraConfig

        subdir = HydraConfig.get().output_subdir
    except ValueError:  # not inside a Hydra app (tests, the ray sweep)
        return None
    if subdir != pending_record_dir():
        return None
    path = Path(run_dir) / subdir
    return path if path.is_dir() else None


def commit_hydra_record(run_dir: str | Path) -> None:
    """Move this start's pending Hydra record over `<run_dir>/.hydra` (the start was accepted)."""
    pending = _pending(Path(run_dir))
    if pending is None:
        return
    record = Path(run_dir) / HYDRA_DIR
    old = record.with_name(f"{HYDRA_DIR}-old-{os.getpid()}")
    if record.is_dir() and not record.is_symlink():
        record.rename(old)
    elif record.is_symlink() or record.exists():
        record.unlink()
    pending.rename(record)
    if old.is_dir():
        shutil.rmtree(old)


def discard_hydra_record(run_dir: str | Path) -> None:
    """Remove this start's pending record (the start was refused or failed); `.hydra` stays as it was."""
    pending = _pending(Path(run_dir))
    if pending is not None:
        shutil.rmtree(pending)


@contextlib.contextmanager
def explain_config_mismatch(checkpoint: str | Path, cfg: Any):
    """Around loading `checkpoint` into a run built from `cfg`: a load that fails where the configs
    differ becomes a ResumeRefused with the keys' diff (not hundreds of lines of size mismatches);
    a load that works despite a difference outside RESUMABLE logs that difference."""
    from policylab.common.checkpoint import load_config

    checkpoint = Path(checkpoint)
    ckpt_cfg = load_config(checkpoint)
    try:
        yield
    except (RuntimeError, KeyError, ValueError) as err:  # CheckpointError is a RuntimeError or ValueError
        if config_diff(ckpt_cfg, cfg):
            raise ResumeRefused(mismatch_message(checkpoint, ckpt_cfg, cfg, err)) from None
        raise
    diff = refused_keys(ckpt_cfg, cfg)
    if diff:
        log.warning("resuming from %s with a config that differs from the checkpoint's (old -> new):\n%s",
                    checkpoint, format_diff(diff))
