"""Run logging: one JSON line per record in `logs.jsonl`, mirrored to wandb (offline by default)."""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from policylab.common.locking import atomic_write_text

WANDB_MODES = ("offline", "online", "disabled")
WANDB_ID_FILE = "wandb_run_id.txt"
VIDEO_SUFFIXES = (".mp4", ".gif", ".webm")


def _jsonable(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLogger:
    """Appends to `<output_dir>/logs.jsonl` and to wandb; one JSON object per line, each with its
    `global_step`.

    A fresh run (`resume=False`) starts the file anew. A resumed run appends; with
    `resume_from_step` (the global_step of the checkpoint it resumed from) it first drops the lines
    logged after that step, which the resumed run will log again, so no step appears twice. A torn
    last line (the process died mid-write) is dropped either way.
    """

    def __init__(self, output_dir: str | Path, mode: str = "offline", project: str = "policylab",
                 name: str | None = None, config: Mapping | None = None, resume: bool = False,
                 enabled: bool = True, resume_from_step: int | None = None):
        if mode not in WANDB_MODES:
            raise ValueError(f"logging.mode must be one of {WANDB_MODES}, got {mode!r}")
        resume = resume or resume_from_step is not None
        self.enabled = enabled
        self.path = Path(output_dir) / "logs.jsonl"
        self.run = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists():
            _truncate_log(self.path, resume_from_step)
        self._file = open(self.path, "a" if resume else "w")  # noqa: SIM115 - open for the run, closed in close()
        if mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(project=project, name=name, dir=str(output_dir), mode=mode,
                                  config=dict(config or {}), id=_wandb_run_id(Path(output_dir), resume),
                                  resume="allow")

    def log(self, record: Mapping, step: int) -> None:
        if not self.enabled:
            return
        record = {k: _jsonable(v) for k, v in record.items()}
        self._file.write(json.dumps({"global_step": step, **record}) + "\n")
        self._file.flush()
        if self.run is not None:
            self.run.log(_wandb_record(record), step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.run is not None:
            self.run.finish()


def _wandb_run_id(output_dir: Path, resume: bool) -> str:
    """The run directory's wandb id: kept in `wandb_run_id.txt`, so a resumed run continues the same
    wandb run; a fresh run takes a new id."""
    path = output_dir / WANDB_ID_FILE
    if resume and path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)  # wandb ids: 8 lowercase alphanumerics
    atomic_write_text(path, run_id + "\n")
    return run_id


def _wandb_record(record: Mapping) -> dict:
    """Numbers as they are; a video file path (`*video*` keys: rollout videos) as a `wandb.Video`."""
    import wandb

    out = {}
    for key, value in record.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
        elif "video" in key and isinstance(value, str) and value.endswith(VIDEO_SUFFIXES) and Path(value).is_file():
            out[key] = wandb.Video(value, format=Path(value).suffix[1:])
    return out


def _truncate_log(path: Path, last_step: int | None) -> None:
    """Keep the lines of `path` with global_step <= `last_step` (all when None) and no torn last
    line; replaced atomically, and only when something changes."""
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    keep = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if i == len(lines) - 1 and not line.endswith("\n"):
                break  # torn by a crash mid-write
            raise ValueError(f"{path}, line {i + 1}: not JSON ({line[:80]!r}); was it written by two runs "
                             f"at once?") from None
        if last_step is None or not isinstance(record, dict) or record.get("global_step", 0) <= last_step:
            keep.append(line if line.endswith("\n") else line + "\n")
    if "".join(keep) != text:
        atomic_write_text(path, "".join(keep))


def read_logs(path: str | Path) -> list[dict]:
    """The records of a logs.jsonl; a torn last line (a crash mid-write) is skipped."""
    lines = Path(path).read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}, line {i + 1}: not JSON ({line[:80]!r})") from None
    return records
