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
one is discarded. Seeds already in the store (`meta/episode_seeds`) are skipped, so re-running
a command only adds what is missing.

Per step the store gets every observation key of the env, *before* the step's action (rgb
images `(N, H, W, 3)` uint8, exactly the env's frames; low-dim keys float32), `action` (the
executed, noisy action, float32), `reward` and `terminal` (uint8, 1 at the last step: a demo ends
at success, the task's termination; the RL samplers read it). A store written before `terminal`
existed is appended to without it, so its episodes keep one layout.
"""

from __future__ import annotations

import dataclasses
import time

import gymnasium as gym
import hydra
import numpy as np
import tqdm
from omegaconf import OmegaConf

from policylab.common.config import CONFIG_DIR, compose
from policylab.data.replay_buffer import ReplayBuffer
from policylab.rl.episodes import to_store

SEEDS_KEY = "episode_seeds"


@dataclasses.dataclass
class DemoConfig:
    """Command-line options of the generic generator (all `key=value`)."""

    task: str
    n: int
    out: str | None = None            # default: the task's dataset.zarr_path
    seed: int = 0                     # first episode seed
    images: bool | None = None        # record camera images (default: the task's demo.env_kwargs)
    action_noise: float | None = None  # override the expert's action noise
    max_steps: int | None = None      # override demo.max_steps
    max_attempts: int | None = None   # default 2n + 10


def load_task_config(task: str):
    """The composed, resolved `task` group of `config/task/<task>.yaml`."""
    if not (CONFIG_DIR / "task" / f"{task}.yaml").exists():
        known = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))
        raise SystemExit(f"unknown task {task!r}; known tasks: {known}")
    cfg = compose([f"task={task}"])
    return OmegaConf.create(OmegaConf.to_container(cfg.task, resolve=True))


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


def build(cfg: DemoConfig, task_cfg):
    """The env and expert the task config describes, with the command-line overrides."""
    if "demo" not in task_cfg:
        raise SystemExit(f"task {cfg.task!r} has no `demo` entry: it has no scripted expert")
    demo = task_cfg.demo
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
    """Write cfg.n successful episodes; returns counts, success rate and speed."""
    task_cfg = load_task_config(cfg.task)
    env, expert = build(cfg, task_cfg)
    out = cfg.out or task_cfg.dataset.zarr_path
    max_steps = cfg.max_steps or int(task_cfg.demo.max_steps)
    buffer = ReplayBuffer.create_from_path(out, mode="a")
    done_seeds = [int(s) for s in buffer.meta[SEEDS_KEY][:]] if SEEDS_KEY in buffer.meta else []
    if len(done_seeds) != buffer.n_episodes:
        raise SystemExit(f"{out}: {buffer.n_episodes} episodes but {len(done_seeds)} seeds in "
                         f"meta/{SEEDS_KEY}; refusing to append")
    max_attempts = cfg.max_attempts or 2 * cfg.n + 10
    n_ok = n_tried = n_steps = 0
    seed = cfg.seed
    start = time.perf_counter()
    try:
        with tqdm.tqdm(total=cfg.n, desc=f"{cfg.task} expert episodes") as pbar:
            while n_ok < cfg.n and n_tried < max_attempts:
                if seed not in done_seeds:
                    episode = run_episode(env, expert, seed, max_steps)
                    n_tried += 1
                    if episode is not None:
                        if buffer.n_episodes and "terminal" not in buffer:
                            del episode["terminal"]
                        compressors = {k: "image" if v.ndim == 4 else "disk" for k, v in episode.items()}
                        chunks = {k: (1, *v.shape[1:]) for k, v in episode.items() if v.ndim == 4}
                        buffer.add_episode(episode, chunks=chunks, compressors=compressors)
                        done_seeds.append(seed)
                        buffer.update_meta({SEEDS_KEY: np.array(done_seeds, dtype=np.int64)})
                        n_ok += 1
                        n_steps += len(episode["action"])
                        pbar.update(1)
                    pbar.set_postfix(success=f"{n_ok}/{n_tried}")
                seed += 1
    finally:
        env.close()
    minutes = (time.perf_counter() - start) / 60
    return {"out": str(out), "saved": n_ok, "attempts": n_tried,
            "success_rate": n_ok / max(n_tried, 1),
            "episodes_per_minute": n_tried / max(minutes, 1e-9), "saved_steps": n_steps,
            "n_episodes": buffer.n_episodes, "n_steps": buffer.n_steps}
