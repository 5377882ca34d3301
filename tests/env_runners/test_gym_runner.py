"""GymEnvRunner: metrics, seeds, uneven chunks, videos, sync == async."""

from typing import ClassVar

import av
import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import policylab.envs.pusht  # noqa: F401  (registers the PushT ids)
from policylab.env_runners.gym_runner import GymEnvRunner

TO, TA, MAX_STEPS = 2, 8, 16


class HoldPolicy:
    """Commands the agent to stay where it is: (B, Ta, 2) copies of the last agent_pos."""

    device = torch.device("cpu")

    def __init__(self):
        self.calls = 0

    def predict_action(self, obs):
        assert obs["keypoint"].shape[1:] == (TO, 18)
        assert obs["keypoint"].dtype == torch.float32
        self.calls += 1
        return {"action": obs["agent_pos"][:, -1:].repeat(1, TA, 1)}


class SeedParityEnv(gym.Env):
    """Even seeds succeed after 3 steps (reward 1); odd seeds never do (reward 0.5)."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self):
        self.observation_space = spaces.Dict({"x": spaces.Box(-np.inf, np.inf, (1,), np.float32)})
        self.action_space = spaces.Box(-1, 1, (1,), np.float32)
        self.render_mode = "rgb_array"

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed_, self.t = seed, 0
        return {"x": np.array([seed], np.float32)}, {}

    def step(self, action):
        self.t += 1
        win = self.seed_ % 2 == 0 and self.t >= 3
        reward = 1.0 if win else 0.5
        return {"x": np.array([self.seed_], np.float32)}, reward, win, False, {"is_success": win}

    def render(self):
        return np.zeros((8, 8, 3), np.uint8)


gym.register("policylab_test/SeedParity-v0", entry_point=SeedParityEnv)


class ZeroPolicy:
    device = "cpu"

    def predict_action(self, obs):
        return {"action": torch.zeros(obs["x"].shape[0], 1, 1)}


def _pusht_runner(tmp_path, vector_env):
    return GymEnvRunner(
        output_dir=str(tmp_path), env_id="policylab.envs.pusht:policylab/PushTKeypoints-v0",
        env_kwargs={"legacy": True}, n_obs_steps=TO, n_action_steps=TA, max_steps=MAX_STEPS,
        n_train=1, n_test=3, train_start_seed=0, test_start_seed=100000, n_envs=2,
        n_train_vis=1, n_test_vis=1, fps=10, vector_env=vector_env)


def _check_pusht_metrics(log):
    test_seeds = [100000, 100001, 100002]
    per_seed = [log[f"test/sim_max_reward_{s}"] for s in test_seeds]
    assert log["test/mean_score"] == pytest.approx(np.mean(per_seed))
    assert log["train/mean_score"] == log["train/sim_max_reward_0"]
    assert log["test/success_rate"] == 0.0
    assert log["train/success_rate"] == 0.0
    assert all(0.0 <= r < 1.0 for r in per_seed)
    assert {k for k in log if "video" in k} == {"train/sim_video_0", "test/sim_video_100000"}
    with av.open(log["test/sim_video_100000"]) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 1 + MAX_STEPS
    assert frames[0].shape == (288, 288, 3)  # PushT's 96x96 render, 3x (video_min_side 256)


def test_sync_runner_metrics_and_videos(tmp_path):
    runner = _pusht_runner(tmp_path, "sync")
    policy = HoldPolicy()
    try:
        log = runner.run(policy)
    finally:
        runner.close()
    _check_pusht_metrics(log)
    # each split in its own chunks of 2 envs (1 train; 2 + 1 test), MAX_STEPS / TA policy calls each
    assert policy.calls == 3 * MAX_STEPS // TA


def test_async_runner_matches_sync(tmp_path):
    sync = _pusht_runner(tmp_path / "sync", "sync")
    asyn = _pusht_runner(tmp_path / "async", "async")
    try:
        log_sync, log_async = sync.run(HoldPolicy()), asyn.run(HoldPolicy())
    finally:
        sync.close()
        asyn.close()
    _check_pusht_metrics(log_async)
    scores = {k: v for k, v in log_sync.items() if "video" not in k}
    assert scores == {k: v for k, v in log_async.items() if "video" not in k}


def test_success_rate_and_uneven_chunks(tmp_path):
    runner = GymEnvRunner(
        str(tmp_path), "policylab_test/SeedParity-v0", n_obs_steps=1, n_action_steps=1,
        max_steps=5, n_train=2, n_test=5, train_start_seed=10, test_start_seed=20, n_envs=3,
        n_train_vis=0, n_test_vis=0, vector_env="sync")
    log = runner.run(ZeroPolicy())
    runner.close()
    # test seeds 20..24: 20, 22, 24 succeed
    assert log["test/success_rate"] == pytest.approx(3 / 5)
    assert log["test/mean_score"] == pytest.approx((3 * 1.0 + 2 * 0.5) / 5)
    assert log["train/success_rate"] == pytest.approx(1 / 2)
    assert sorted(k for k in log if "sim_max_reward" in k) == sorted(
        [f"train/sim_max_reward_{s}" for s in (10, 11)]
        + [f"test/sim_max_reward_{s}" for s in range(20, 25)])
    assert not any("video" in k for k in log)


def test_nan_action_raises(tmp_path):
    class NanPolicy:
        def predict_action(self, obs):
            return {"action": torch.full((obs["x"].shape[0], 1, 1), float("nan"))}

    runner = GymEnvRunner(str(tmp_path), "policylab_test/SeedParity-v0", n_obs_steps=1,
                          n_action_steps=1, max_steps=2, n_train=0, n_test=1, n_envs=1,
                          n_test_vis=0, vector_env="sync")
    with pytest.raises(RuntimeError, match="NaN"):
        runner.run(NanPolicy())
    runner.close()


def test_video_upscaled_by_an_integer_factor_and_observations_untouched(tmp_path):
    """Video frames are the render enlarged 3x pixel for pixel; the policy still sees 96x96 images."""
    seen = []

    class ImageHold:
        device = torch.device("cpu")

        def predict_action(self, obs):
            seen.append(tuple(obs["image"].shape[2:]))
            return {"action": obs["agent_pos"][:, -1:].repeat(1, TA, 1)}

    logs = {}
    for side in (256, 0):
        runner = GymEnvRunner(
            output_dir=str(tmp_path / str(side)), env_id="policylab.envs.pusht:policylab/PushTImage-v0",
            env_kwargs={"legacy": True}, n_obs_steps=TO, n_action_steps=TA, max_steps=TA, n_train=0,
            n_test=1, n_envs=1, n_test_vis=1, vector_env="sync", video_min_side=side)
        logs[side] = runner.run(ImageHold())
        runner.close()
    frames = {}
    for side, log in logs.items():
        with av.open(log["test/sim_video_100000"]) as container:
            frames[side] = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    assert frames[0].shape == (96, 96, 3) and frames[256].shape == (288, 288, 3)
    assert set(seen) == {(3, 96, 96)}
    # the same picture: each 3x3 block of the large frame is one pixel of the small (up to H.264 error)
    assert np.abs(frames[256][1::3, 1::3] - frames[0]).mean() < 6


def test_one_progress_bar_per_evaluation_left_on_screen(tmp_path, capsys):
    runner = GymEnvRunner(
        str(tmp_path), "policylab_test/SeedParity-v0", n_obs_steps=1, n_action_steps=1,
        max_steps=5, n_train=0, n_test=5, test_start_seed=20, n_envs=2,
        n_test_vis=0, vector_env="sync", tqdm_interval_sec=0)
    runner.run(ZeroPolicy())
    runner.close()
    err = capsys.readouterr().err
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    # 3 chunks of 2 envs x 5 steps, counted to the end although even seeds finish after 3 steps
    assert "Eval policylab_test/SeedParity-v0" in final and "100%" in final and "15/15" in final
    assert "episodes=5/5" in final and "mean_score=0.800" in final
    assert err.count("| 0/15 ") == 1  # one bar, not one per chunk
