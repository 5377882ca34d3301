"""Run logging: one JSON line per record in `logs.jsonl`, mirrored to wandb (offline by default)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

WANDB_MODES = ("offline", "online", "disabled")


def _jsonable(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLogger:
    """Appends to `<output_dir>/logs.jsonl` (resumed runs keep appending) and to wandb."""

    def __init__(self, output_dir: str | Path, mode: str = "offline", project: str = "policylab",
                 name: str | None = None, config: Mapping | None = None, resume: bool = False,
                 enabled: bool = True):
        if mode not in WANDB_MODES:
            raise ValueError(f"logging.mode must be one of {WANDB_MODES}, got {mode!r}")
        self.enabled = enabled
        self.path = Path(output_dir) / "logs.jsonl"
        self.run = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a" if resume else "w")  # noqa: SIM115 - open for the run, closed in close()
        if mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(project=project, name=name, dir=str(output_dir), mode=mode,
                                  config=dict(config or {}), resume="allow" if resume else None)

    def log(self, record: Mapping, step: int) -> None:
        if not self.enabled:
            return
        record = {k: _jsonable(v) for k, v in record.items()}
        self._file.write(json.dumps({"global_step": step, **record}) + "\n")
        self._file.flush()
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.run is not None:
            self.run.finish()


def read_logs(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
