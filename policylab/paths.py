"""Where the Hydra configs are: `config/` of a checkout (an editable install or PYTHONPATH), else
the copy a wheel ships as `policylab/config/` (see setup.py)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    for candidate in (PACKAGE_DIR.parent / "config", PACKAGE_DIR / "config"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no Hydra configs (train.yaml) next to {PACKAGE_DIR} or in it: reinstall policylab")
