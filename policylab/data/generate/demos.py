"""Scripted-expert demonstrations for any task whose config has a `demo` entry.

    python -m policylab.data.generate task=pick_cube_lowdim n=100 out=data/pick_cube/demos.zarr

The task config (`config/task/<name>.yaml`) says everything task-specific:

    env_runner.env_id / env_kwargs     the env (the same one the policy is evaluated in)
    demo.expert                        a `_target_` for a `policylab.envs.experts.Expert`
    demo.env_kwargs                    extra env kwargs for recording (e.g. image_obs: true, so
                                       one store serves the low-dim and image variants)
    demo.max_steps                     time limit of one expert episode
    dataset.zarr_path                  the default `out`

Each attempt runs the expert on one seed (`seed`, `seed + 1`, ...). An episode that reaches
`info["is_success"]` within max_steps is appended to the zarr ReplayBuffer atomically; a failed
one is discarded. `n` is the number of episodes the store should hold (`mode=top_up`, the
default: re-running a command only adds what is missing) or, with `mode=append`, how many to
add; seeds already in the store (`meta/episode_seeds`) are skipped either way, and each episode
is committed together with its seed (`common.py`).

Per step the store gets every observation key of the env, *before* the step's action (rgb
images `(N, H, W, 3)` uint8, exactly the env's frames; low-dim keys float32), `action` (the
executed, noisy action, float32), `reward` and `terminal` (uint8, 1 at the last step: a demo ends
at success, the task's termination; the RL samplers read it). A store written before `terminal`
existed is appended to without it, so its episodes keep one layout.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import hydra
import numpy as np
from omegaconf import OmegaConf

from policylab.common.config import load_task_config
from policylab.data.generate.common import (
    SEEDS_KEY,
    collect,
    episodes_to_add,
    open_demo_store,
    seed_row,
)
from policylab.rl.episodes import to_store

__all__ = ["SEEDS_KEY", "DemoConfig", "generate", "load_task_config", "run_episode"]


@dataclasses.dataclass
class DemoConfig:
    """Command-line options of the generic generator (all `key=value`)."""

    task: str
    n: int                            # episodes the store should hold (mode=top_up) or to add (append)
    mode: str = "top_up"              # top_up | append (see policylab.data.generate.common)
    out: str | None = None            # default: the task's dataset.zarr_path
    seed: int = 0                     # first episode seed
    images: bool | None = None        # record camera images (default: the task's demo.env_kwargs)
    action_noise: float | None = None  # override the expert's action noise
    max_steps: int | None = None      # override demo.max_steps
    max_attempts: int | None = None   # default 2 * (episodes to add) + 10


def run_episode(env: gym.Env, expert, seed: int, max_steps: int) -> dict | None:
    """One expert episode; the recorded steps {key: (L, ...)} if it succeeded, else None."""
    obs, _ = env.reset(seed=seed)
    expert.reset(seed)
    steps = []
    for _ in range(max_steps):
        action = expert.act(env)
        row = to_store(obs, env.observation_space)
        obs, reward, terminated, truncated, info = env.step(action)
        row.update(action=np.asarray(action, dtype=np.float32), reward=np.float32(reward))
        steps.append(row)
        if info.get("is_success", False):
            episode = {key: np.stack([s[key] for s in steps]) for key in steps[0]}
            episode["terminal"] = np.zeros(len(steps), dtype=np.uint8)
            episode["terminal"][-1] = 1
            return episode
        if terminated or truncated:
            return None
    return None


def _demo(cfg: DemoConfig, task_cfg):
    if "demo" not in task_cfg:
        raise SystemExit(f"task {cfg.task!r} has no `demo` entry: it has no scripted expert")
    return task_cfg.demo


def build(cfg: DemoConfig, task_cfg):
    """The env and expert the task config describes, with the command-line overrides."""
    demo = _demo(cfg, task_cfg)
    env_kwargs = {**OmegaConf.to_container(task_cfg.env_runner.get("env_kwargs") or {}),
                  **OmegaConf.to_container(demo.get("env_kwargs") or {})}
    if cfg.images is not None:
        env_kwargs["image_obs"] = cfg.images
    expert_cfg = OmegaConf.to_container(demo.expert)
    if cfg.action_noise is not None:
        expert_cfg["action_noise"] = cfg.action_noise
    env = gym.make(task_cfg.env_runner.env_id, **env_kwargs).unwrapped
    return env, hydra.utils.instantiate(expert_cfg)


def generate(cfg: DemoConfig) -> dict:
    """Add episodes to the store (`common.py`: n, mode); returns counts, success rate and speed."""
    task_cfg = load_task_config(cfg.task)
    out = cfg.out or task_cfg.dataset.zarr_path
    max_steps = cfg.max_steps or int(_demo(cfg, task_cfg).max_steps)
    buffer, done_seeds = open_demo_store(out)
    n = episodes_to_add(cfg.n, cfg.mode, buffer.n_episodes)
    env, expert = build(cfg, task_cfg) if n else (None, None)

    def add(episode: dict, seed: int) -> None:
        if buffer.n_episodes and "terminal" not in buffer:
            del episode["terminal"]
        compressors = {k: "image" if v.ndim == 4 else "disk" for k, v in episode.items()}
        chunks = {k: (1, *v.shape[1:]) for k, v in episode.items() if v.ndim == 4}
        buffer.add_episode(episode, chunks=chunks, compressors=compressors, episode_meta=seed_row(seed))

    try:
        stats = collect(buffer, lambda seed: run_episode(env, expert, seed, max_steps), add, cfg.seed, n,
                        cfg.max_attempts, done_seeds, f"{cfg.task} expert episodes")
    finally:
        buffer.close()
        if env is not None:
            env.close()
    return {"out": str(out), **stats}
