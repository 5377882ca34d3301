"""A vectorized gymnasium runner: DP's PushT runner made task-agnostic.

Every episode is one seed: train seeds `train_start_seed + i` (i < n_train), then test seeds
`test_start_seed + i` (i < n_test). Each split's seeds are run in chunks of `n_envs` parallel
envs, each `MultiStepWrapper(VideoRecordingWrapper(gym.make(env_id, **env_kwargs)))`; a split's
last chunk is padded with repeats of its last seed, whose results are dropped. An episode's score
is its max inner reward (DP's `sim_max_reward`); it succeeded if any inner step's info says
`is_success` (or, for envs without that key, if its max reward reached `success_reward`).

The policy's sampling noise is seeded from the episode seed: each env gets a `torch.Generator`
seeded with its episode's seed at reset, and `predict_action(obs, generator=[one per env])` draws
row b's noise from generator b alone: an episode's noise depends on its seed only (not on the
chunk it ran in, earlier runs or torch's global generator). Two evaluations of one checkpoint on
the same seeds with the same `n_envs` therefore give identical scores. Across different `n_envs`
they agree to float rounding only: a network's output for one row moves by ~1e-7 (relative) with
the batch around it (CPU matmul kernels are blocked by batch size), and a few chaotic episodes
amplify that (450 PushT seeds: the mean moved by ~2e-4). Chunking each split on its own keeps the
test episodes' chunks the same whatever `n_train` is. Policies whose `predict_action` takes no
`generator` (stand-ins, remote clients) are called without one.
"""

import functools
import inspect
import os
import sys
from collections.abc import Callable

import cv2
import gymnasium as gym
import numpy as np
import torch
import tqdm
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv
from gymnasium.vector.vector_env import AutoresetMode

from policylab.common.obs import to_policy_obs
from policylab.env_runners.base import EnvRunner
from policylab.envs.wrappers import MultiStepWrapper, VideoRecordingWrapper

SPLITS = ("train", "test")


class UpscaledRender(gym.Wrapper):
    """`render()` frames (H, W, 3) enlarged by the integer factor that brings their shorter side to at
    least `min_side` (nearest neighbour: the env's own pixels, only larger), for watchable videos.

    Observations are untouched: envs build image observations without going through this
    wrapper's `render()`, so a 96x96 policy input stays 96x96 while its video is 288x288.
    """

    def __init__(self, env: gym.Env, min_side: int):
        super().__init__(env)
        self.min_side = min_side

    def render(self):
        frame = self.env.render()
        if frame is None:
            return frame
        factor = -(-self.min_side // min(frame.shape[:2]))
        if factor <= 1:
            return frame
        return cv2.resize(frame, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)


def make_env(env_id: str, env_kwargs: dict, n_obs_steps: int, n_action_steps: int,
             max_steps: int, fps: int, crf: int, steps_per_render: int,
             reward_agg_method: str, video_min_side: int = 0) -> gym.Env:
    """Build one wrapped env; module-level so that it pickles into worker processes.

    env_id may be "module:id" (gymnasium imports the module first, e.g.
    "policylab.envs.pusht:policylab/PushT-v0"), which is what spawned workers need.
    """
    env = gym.make(env_id, **(env_kwargs or {}))
    if video_min_side:
        env = UpscaledRender(env, video_min_side)
    env = VideoRecordingWrapper(env, fps=fps, steps_per_render=steps_per_render, crf=crf)
    return MultiStepWrapper(env, n_obs_steps, n_action_steps, max_episode_steps=max_steps,
                            reward_agg_method=reward_agg_method)


class _SyncVectorEnv(SyncVectorEnv):
    """SyncVectorEnv that, like AsyncVectorEnv's worker, lets finished sub-envs be stepped.

    With autoreset disabled, gymnasium's sync version asserts that a finished env is reset
    first; ours are `MultiStepWrapper`s, whose steps after the end are no-ops.
    """

    def step(self, actions):
        self._autoreset_envs[:] = False
        return super().step(actions)


class GymEnvRunner(EnvRunner):
    """Evaluate a policy on seeded episodes of a gymnasium env, with videos.

    Args:
        output_dir: run directory; videos go to `<output_dir>/media/`.
        env_id, env_kwargs: what `gymnasium.make` gets.
        n_obs_steps, n_action_steps: To and Ta of the policy.
        max_steps: time limit in inner env steps.
        n_train, n_test: number of episodes per split; train_start_seed, test_start_seed: seeds.
        n_envs: parallel envs; None = min(n_train + n_test, CPU count).
        n_train_vis, n_test_vis: the first k episodes of each split are recorded.
        fps, crf, steps_per_render: video settings.
        video_min_side: frames whose shorter side is smaller are enlarged by an integer factor
            (nearest neighbour) before encoding: 96x96 renders become 288x288 videos (0: as rendered).
        vector_env: "async" (one process per env) or "sync" (in process; tests, debugging).
        reward_agg_method: see `MultiStepWrapper` (does not change scores).
        success_reward: success threshold on the max reward, for envs without `is_success`.
        context: multiprocessing start method for "async" (None = platform default).
        tqdm_interval_sec: progress-bar refresh interval (one bar per `run`, over all its episodes).
        device: where observations go when the policy has no `device` attribute.
    """

    def __init__(self, output_dir: str, env_id: str, env_kwargs: dict | None = None,
                 n_obs_steps: int = 2, n_action_steps: int = 8, max_steps: int = 300,
                 n_train: int = 6, n_test: int = 50, train_start_seed: int = 0,
                 test_start_seed: int = 100000, n_envs: int | None = None,
                 n_train_vis: int = 2, n_test_vis: int = 4, fps: int = 10, crf: int = 22,
                 steps_per_render: int = 1, vector_env: str = "async",
                 reward_agg_method: str = "max", success_reward: float = 1.0,
                 context: str | None = None, tqdm_interval_sec: float = 1.0,
                 device: str = "cpu", video_min_side: int = 256):
        super().__init__(output_dir)
        if vector_env not in ("async", "sync"):
            raise ValueError(f"vector_env must be 'async' or 'sync', got {vector_env!r}")
        self.env_id = env_id
        self.n_action_steps, self.max_steps = n_action_steps, max_steps
        self.episodes = [(split, start + i, i < n_vis) for split, n, start, n_vis in (
            ("train", n_train, train_start_seed, n_train_vis),
            ("test", n_test, test_start_seed, n_test_vis)) for i in range(n)]
        self.n_envs = n_envs or min(len(self.episodes), os.cpu_count() or 1)
        self.success_reward = success_reward
        self.tqdm_interval_sec = tqdm_interval_sec
        self.device = device
        self._env_fn = functools.partial(
            make_env, env_id, dict(env_kwargs or {}), n_obs_steps, n_action_steps, max_steps,
            fps, crf, steps_per_render, reward_agg_method, video_min_side)
        self._vector_env, self._context = vector_env, context
        self._env = None
        self._n_runs = 0

    def _get_env(self):
        if self._env is None:
            fns = [self._env_fn] * self.n_envs
            # No autoreset: finished envs idle (MultiStepWrapper no-ops) until the chunk ends.
            if self._vector_env == "sync":
                self._env = _SyncVectorEnv(fns, autoreset_mode=AutoresetMode.DISABLED)
            else:
                self._env = AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.DISABLED,
                                           context=self._context)
        return self._env

    def run(self, policy, observe: Callable[[list[int], dict], None] | None = None) -> dict:
        """Roll `policy` out on every episode; `observe(seeds, obs)`, when given, is called before each
        policy call with the episodes still running: their seeds and their rows of the policy's input
        `{key: (n, To, ...)}` (what on-policy distillation records)."""
        env = self._get_env()
        results = []
        chunks = []  # each split in its own chunks: a test episode's batch neighbours never depend on n_train
        for split in SPLITS:
            part = [e for e in self.episodes if e[0] == split]
            chunks += [part[i:i + self.n_envs] for i in range(0, len(part), self.n_envs)]
        n_chunks = len(chunks)
        # One bar for the whole evaluation, in inner env steps (n_chunks x max_steps), kept on screen
        # when done with the score: a bar per chunk showed 0% and vanished. Into a log file (no
        # terminal) it writes a line every 30 s at most, not one per refresh.
        interval = self.tqdm_interval_sec if sys.stderr.isatty() else max(self.tqdm_interval_sec, 30.0)
        with tqdm.tqdm(total=n_chunks * self.max_steps, desc=f"Eval {self.env_id}", unit="step",
                       mininterval=interval) as pbar:
            for c, chunk in enumerate(chunks):
                padded = chunk + [chunk[-1][:2] + (False,)] * (self.n_envs - len(chunk))
                results += self._run_chunk(env, policy, padded, pbar, len(chunk), observe)[:len(chunk)]
                pbar.update((c + 1) * self.max_steps - pbar.n)  # a chunk that ended early
                pbar.set_postfix(episodes=f"{len(results)}/{len(self.episodes)}",
                                 mean_score=f"{np.mean([r[2] for r in results]):.3f}")
        self._n_runs += 1
        return self._metrics(results)

    def _run_chunk(self, env, policy, episodes: list, pbar: tqdm.tqdm, n_real: int | None = None,
                   observe: Callable | None = None) -> list:
        """Roll out one episode per env (the first `n_real` are real, the rest padding); returns
        (split, seed, max_reward, success, video)."""
        seeds = [seed for _, seed, _ in episodes]
        env.set_attr("video_path", [self._video_path(s, seed) if vis else None
                                    for s, seed, vis in episodes])
        obs, _ = env.reset(seed=seeds)
        if hasattr(policy, "reset"):
            policy.reset()
        generators = [torch.Generator().manual_seed(seed) for seed in seeds] if _takes_generator(policy) else None
        running = np.arange(self.n_envs) < (self.n_envs if n_real is None else n_real)
        end = pbar.n + self.max_steps
        while running.any():  # padding envs repeat the last real episode: not waited for
            if observe is not None:
                rows = np.flatnonzero(running)
                observe([seeds[i] for i in rows], to_policy_obs({k: v[rows] for k, v in obs.items()}))
            obs, _, terminated, truncated, _ = env.step(self._act(policy, obs, generators))
            running &= ~(np.asarray(terminated) | np.asarray(truncated))
            pbar.update(min(self.n_action_steps, end - pbar.n))
        rewards = env.call("get_rewards")
        infos = env.call("get_infos")
        videos = env.call("finish_video")
        return [(split, seed, max(r, default=0.0), self._success(r, i), v)
                for (split, seed, _), r, i, v in zip(episodes, rewards, infos, videos)]

    def _act(self, policy, obs: dict, generators: list[torch.Generator] | None = None) -> np.ndarray:
        """obs {key: (B, To, ...)} numpy -> actions (B, Ta, Da) numpy; `generators`: one per env."""
        device = getattr(policy, "device", self.device)
        obs_t = to_policy_obs(obs, device=device)
        with torch.no_grad():
            kwargs = {} if generators is None else {"generator": generators}
            action = policy.predict_action(obs_t, **kwargs)["action"]
        action = action.detach().to("cpu", torch.float64).numpy()
        if not np.all(np.isfinite(action)):
            raise RuntimeError("policy returned a NaN or Inf action")
        return action

    def _success(self, rewards: list, infos: list) -> bool:
        if infos and "is_success" in infos[-1]:
            return any(bool(info["is_success"]) for info in infos)
        return max(rewards, default=0.0) >= self.success_reward

    def _video_path(self, split: str, seed: int) -> str:
        name = f"run{self._n_runs:04d}_{split}_{seed}.mp4"
        return os.path.join(self.output_dir, "media", name)

    @staticmethod
    def _metrics(results: list) -> dict:
        log = {}
        for split in SPLITS:
            rows = [r for r in results if r[0] == split]
            for _, seed, max_reward, _, video in rows:
                log[f"{split}/sim_max_reward_{seed}"] = float(max_reward)
                if video is not None:
                    log[f"{split}/sim_video_{seed}"] = video
            if rows:
                log[f"{split}/mean_score"] = float(np.mean([r[2] for r in rows]))
                log[f"{split}/success_rate"] = float(np.mean([r[3] for r in rows]))
        return log

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


def _takes_generator(policy) -> bool:
    """Whether `policy.predict_action` accepts `generator=` (every policylab policy does)."""
    try:
        params = inspect.signature(policy.predict_action).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
