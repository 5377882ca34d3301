"""Shared test helpers: a PushT-layout store, composing the real Hydra config, running train.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from policylab.common.config import compose
from tests.data.zarr_v2_fixtures import pusht_like_arrays, write_v2_store

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "config"
EPISODE_LENGTHS = [30, 40, 35, 30, 25]


def make_pusht_store(path: Path, lengths=EPISODE_LENGTHS, seed: int = 0) -> Path:
    """A store with Diffusion Policy's PushT keys and layout (random content in valid ranges)."""
    arrays = pusht_like_arrays(lengths, seed=seed, image_size=96)
    return write_v2_store(path, arrays, np.cumsum(lengths), chunks={"img": (1, 96, 96, 3)})


def compose_config(overrides: list[str]):
    return compose(overrides, config_dir=CONFIG_DIR)


def conrft_config(stage: str = "offline", **overrides):
    """A ConRFT stage's `ConRFTConfig` as `conrft=paper` sets it (config/conrft/paper.yaml), with `overrides`."""
    from omegaconf import OmegaConf

    from policylab.rl.conrft import ConRFTConfig

    cfg = compose_config(["workspace=rl_offline", "task=pick_cube_lowdim", "conrft=paper"]).conrft
    values = {**OmegaConf.to_container(cfg.common, resolve=True), **OmegaConf.to_container(cfg[stage])}
    return ConRFTConfig(**{**values, **overrides})


def run_train(overrides: list[str], timeout: float = 300, env_extra: dict | None = None,
              **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", **(env_extra or {})}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *overrides], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, **popen)


def tiny(store, run_dir, *extra) -> list[str]:
    """train.py overrides for a seconds-long run on `store` writing to `run_dir`."""
    return ["debug=tiny", f"task.dataset.zarr_path={store}", f"hydra.run.dir={run_dir}", "logging.mode=disabled",
            "task.dataset.val_ratio=0.2", *extra]


# What an RL run in a subprocess needs: headless MuJoCo and a local ray without auth.
RL_ENV = {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "RAY_AUTH_MODE": "disabled"}


def task_overrides(task: str, store, run_dir, *extra) -> list[str]:
    """`task` on the store at `store`, every episode for training, run in `run_dir`, no wandb."""
    return [f"task={task}", f"task.dataset.zarr_path={store}", "task.dataset.val_ratio=0",
            f"hydra.run.dir={run_dir}", "logging.mode=disabled", *extra]
