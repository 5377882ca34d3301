"""Shared test helpers: a PushT-layout store, composing the real Hydra config, running train.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


def descendants_named(root: int, name: str) -> list[int]:
    """Processes below `root` (e.g. the ray raylet and workers a learner started) whose command starts with `name`."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True, check=True).stdout
    rows = [line.split(maxsplit=2) for line in out.splitlines()[1:]]
    parent = {int(pid): int(ppid) for pid, ppid, *_ in rows}

    def below(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 1)
            if pid == root:
                return True
        return False

    return [int(pid) for pid, _, *args in rows if args and name in args[0] and below(int(pid))]


class TrainProcess:
    """`train.py overrides` in a process group of its own (ray's raylet and workers included),
    for tests that kill processes; its output goes to `log_path` (an unread pipe would fill up and
    block it). `episodes()` reads the RL run's logs.jsonl."""

    def __init__(self, overrides: list[str], log_path: Path, env_extra: dict | None = None):
        env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", **(env_extra or {})}
        self.run_dir = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")))
        self.log_path, self._output = log_path, open(log_path, "w")  # noqa: SIM115 (closed by kill)
        self.process = subprocess.Popen([sys.executable, str(REPO / "train.py"), *overrides], cwd=REPO, env=env,
                                        stdout=self._output, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.process.pid

    def _logs(self) -> list[dict]:
        from policylab.common.logging import read_logs

        path = self.run_dir / "logs.jsonl"
        return read_logs(path) if path.exists() else []

    def episodes(self, after_restart: bool = False) -> int:
        """Episodes logged so far (`after_restart`: those logged once an actor had been restarted)."""
        return sum("episode/success" in r and (not after_restart or r["actor_restarts"] >= 1) for r in self._logs())

    def wait_for(self, condition, what: str, timeout: float = 240) -> None:
        """Poll `condition()` every 0.2 s; fail naming `what` (with the log's tail) on timeout or exit."""
        deadline = time.monotonic() + timeout
        while not condition():
            tail = self.log_path.read_text()[-3000:]
            assert self.process.poll() is None, f"train.py exited early: {tail}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {tail}"
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the whole group (no clean-up runs, as a crash), then wait for it."""
        if self.process.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self._output.close()
