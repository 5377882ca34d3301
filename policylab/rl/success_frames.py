"""Labelled success frames for the reward classifier: the store, and a generator for sim tasks.

    python -m policylab.rl.success_frames task=pick_cube_image n=80 out=data/pick_cube/success_frames.zarr

Store layout (a zarr `ReplayBuffer`, one episode per recording, appended atomically)::

    <image key> (N, H, W, 3) uint8    the camera frames, as demo stores hold them
    <low-dim key> (N, D) float32      optional (e.g. gripper), for classifiers that read them
    success (N,) uint8                1 where the frame shows the task done

On a robot the label is a key held while recording (`policylab.robot_apps.success_recording`). In
sim it is the env's own success test on the frame's state: the scripted expert runs to success,
holds the result for a while (positives), then lets go (negatives that look close to success);
a share of episodes closes the gripper on nothing and lifts the empty hand (hard negatives:
arm up, fingers closed, no object).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import gymnasium as gym
import numpy as np

from policylab.common.overrides import parse_overrides
from policylab.data.replay_buffer import ReplayBuffer
from policylab.rl.episodes import to_store

SUCCESS = "success"
SEEDS_KEY = "episode_seeds"


def add_frames(buffer: ReplayBuffer, episode: Mapping[str, np.ndarray], seed: int | None = None) -> None:
    """Append one recording `{key: (L, ...)}` with `success (L,)` 0/1; atomic (the store's episode_ends last).

    seed: the episode's seed, committed with it (`meta/episode_seeds`), so a kill leaves both or neither.
    """
    if SUCCESS not in episode:
        raise KeyError(f"a success-frame episode needs {SUCCESS!r}; it has {sorted(episode)}")
    labels = np.asarray(episode[SUCCESS])
    if labels.ndim != 1 or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{SUCCESS!r} must be (L,) 0/1 flags, got shape {labels.shape}")
    data = {key: np.asarray(value) for key, value in episode.items()}
    data[SUCCESS] = labels.astype(np.uint8)
    images = [key for key, value in data.items() if value.ndim == 4]
    buffer.add_episode(data, chunks={key: (1, *data[key].shape[1:]) for key in images},
                       compressors={key: "image" if key in images else "disk" for key in data},
                       episode_meta=None if seed is None else {SEEDS_KEY: np.int64(seed)})


@dataclasses.dataclass
class FramesConfig:
    """Command-line options (all `key=value`; hold_steps=[6,16])."""

    task: str
    n: int                              # episodes to record
    out: str
    seed: int = 0
    hold_steps: tuple[int, int] = (6, 16)   # steps kept after success (positives), drawn per episode
    release_steps: int = 10             # steps with the gripper open after holding (negatives)
    empty_grasp_fraction: float = 0.25  # episodes that lift the closed, empty hand
    max_steps: int = 80                 # time limit of the expert phase


def _actions(env, expert, rng: np.random.Generator, cfg: FramesConfig, succeeded: Callable[[], bool]):
    """The episode's actions, decided step by step from the env's state (a generator).

    `succeeded()`: the env's own success test after the last step (`info["is_success"]`), so the
    task's threshold is read from the env, not repeated here.
    """
    hold = int(rng.integers(*cfg.hold_steps))
    if rng.random() < cfg.empty_grasp_fraction:
        angle = rng.uniform(0, 2 * np.pi)
        beside = env.cube_pos + np.array([0.07 * np.cos(angle), 0.07 * np.sin(angle), 0.0])
        for _ in range(cfg.max_steps):  # down next to the cube, fingers open
            error = beside - env.ee_pos
            if np.linalg.norm(error) < 0.01:
                break
            yield np.concatenate([np.clip(error / env.ee_step, -1, 1), [-1.0]])
        for _ in range(hold + 6):  # close on nothing and lift the empty hand
            yield np.array([0.0, 0.0, 1.0, 1.0])
        return
    for _ in range(cfg.max_steps):
        if succeeded():
            break
        yield np.asarray(expert.act(env))
    for _ in range(hold):
        yield np.asarray(expert.act(env))
    for _ in range(cfg.release_steps):
        yield np.array([0.0, 0.0, 0.0, -1.0])


def _label_run(env, expert, rng: np.random.Generator, cfg: FramesConfig, seed: int) -> dict[str, np.ndarray]:
    """One recording of every env observation key plus `success` (the env's test on that frame)."""
    obs, _ = env.reset(seed=seed)
    expert.reset(seed)
    rows, success = [], [False]  # the last step's success, read by the action generator too
    for action in _actions(env, expert, rng, cfg, lambda: success[0]):
        rows.append({**to_store(obs, env.observation_space), SUCCESS: np.uint8(success[0])})
        obs, _, _, _, info = env.step(action)
        success[0] = bool(info.get("is_success", False))
    rows.append({**to_store(obs, env.observation_space), SUCCESS: np.uint8(success[0])})
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def generate(cfg: FramesConfig) -> dict:
    """Record `cfg.n` labelled episodes with the task's scripted expert; returns counts."""
    import hydra

    from policylab.common.config import load_task_config

    task_cfg = load_task_config(cfg.task)
    env_kwargs = {**dict(task_cfg.env_runner.get("env_kwargs") or {}), "image_obs": True}
    env = gym.make(task_cfg.env_runner.env_id, **env_kwargs).unwrapped
    expert = hydra.utils.instantiate(task_cfg.demo.expert)
    buffer = ReplayBuffer.create_from_path(cfg.out, mode="a")
    seeds = [int(s) for s in buffer.episode_meta(SEEDS_KEY)] if SEEDS_KEY in buffer.meta else []
    start = time.perf_counter()
    try:
        for seed in range(cfg.seed, cfg.seed + cfg.n):
            if seed in seeds:
                continue
            episode = _label_run(env, expert, np.random.default_rng(seed), cfg, seed)
            add_frames(buffer, episode, seed)
            seeds.append(seed)
    finally:
        env.close()
    labels = buffer[SUCCESS][:]
    return {"out": cfg.out, "episodes": buffer.n_episodes, "frames": len(labels),
            "positives": int(labels.sum()), "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_overrides(FramesConfig, sys.argv[1:] if argv is None else argv,
                          prog="python -m policylab.rl.success_frames", usage=__doc__)
    cfg.hold_steps = tuple(cfg.hold_steps)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    stats = generate(cfg)
    print(f"{stats['episodes']} episodes, {stats['frames']} frames ({stats['positives']} success) in "
          f"{stats['out']}; {stats['seconds']:.0f} s")
    return stats


if __name__ == "__main__":
    main()
