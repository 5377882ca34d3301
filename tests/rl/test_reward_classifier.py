"""The reward classifier: frames from the sim generator, train.py workspace=reward_classifier
(checkpoint, held-out metrics), the reward wrapper in the Stage II actor env, demo conversion."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from policylab.common.logging import read_logs
from policylab.data.generate.demos import load_task_config
from policylab.data.replay_buffer import ReplayBuffer
from policylab.rl.actor import make_actor_env
from policylab.rl.reward_classifier import (
    ClassifierReward,
    RewardClassifier,
    binary_metrics,
    frames_to_tensor,
    load_reward_classifier,
)
from policylab.rl.success_frames import FramesConfig, generate
from policylab.robot_apps.rl_demos import convert_episode
from policylab.workspaces.reward_classifier import split_episodes
from tests.helpers import RL_ENV, run_train


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    out = tmp_path_factory.mktemp("frames") / "frames.zarr"
    stats = generate(FramesConfig(task="pick_cube_image", n=4, out=str(out), empty_grasp_fraction=0.25))
    return out, stats


def test_sim_frames_are_labelled_by_the_envs_success(frames):
    out, stats = frames
    store = ReplayBuffer.create_from_path(str(out), mode="r")
    assert store.n_episodes == 4 and stats["frames"] == store.n_steps
    labels, z = store["success"][:], store["cube_pos"][:, 2]
    ends = store.episode_ends[:]
    rest = np.repeat(z[np.r_[0, ends[:-1]]], np.diff(np.r_[0, ends]))
    np.testing.assert_array_equal(labels.astype(bool), z - rest > 0.1)  # gym-hil's sparse test, frame by frame
    assert 0 < labels.sum() < len(labels) / 2 and store["front"].shape[1:] == (96, 96, 3)
    generate(FramesConfig(task="pick_cube_image", n=4, out=str(out)))  # same seeds: nothing added
    assert ReplayBuffer.create_from_path(str(out), mode="r").n_episodes == 4


def test_metrics_and_split_by_hand():
    m = binary_metrics(np.array([0.9, 0.8, 0.2, 0.6, 0.1]), np.array([1, 1, 1, 0, 0]), threshold=0.5)
    assert m["accuracy"] == pytest.approx(0.6) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["n_positive"] == 3
    train, val = split_episodes(10, 0.2, seed=0)
    assert len(val) == 2 and not set(train) & set(val) and len(train) + len(val) == 10
    with pytest.raises(ValueError, match="at least 2"):
        split_episodes(1, 0.2, 0)


def test_frame_formats():
    hwc = np.full((4, 6, 3), 255, np.uint8)
    torch.testing.assert_close(frames_to_tensor(hwc), torch.ones(1, 3, 4, 6))
    torch.testing.assert_close(frames_to_tensor(np.stack([hwc * 0, hwc])), torch.ones(1, 3, 4, 6))  # last of To
    torch.testing.assert_close(frames_to_tensor(np.full((3, 4, 6), 0.5, np.float32)), torch.full((1, 3, 4, 6), 0.5))
    with pytest.raises(ValueError, match="camera frame"):
        frames_to_tensor(np.zeros((4, 6)))
    with pytest.raises(ValueError, match="rgb"):
        RewardClassifier({"gripper": {"shape": [1], "type": "low_dim"}})


@pytest.fixture(scope="module")
def trained(frames, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("classifier")
    result = run_train(["workspace=reward_classifier", "task=pick_cube_success",
                        f"task.reward_classifier.zarr_path={frames[0]}", f"hydra.run.dir={run_dir}",
                        "logging.mode=disabled", "training.num_steps=4", "training.batch_size=8",
                        "training.eval_every=2", "training.checkpoint_every=2", "training.log_every=1",
                        "data.val_ratio=0.5", "classifier.hidden_dim=16", "task.reward_classifier.resize_shape=[32,32]",
                        "task.reward_classifier.crop_shape=[28,28]"], env_extra=RL_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_training_checkpoints_and_reports_held_out_metrics(trained):
    logs = read_logs(trained / "logs.jsonl")
    evals = [r for r in logs if "val/accuracy" in r]
    assert evals and all(0 <= r["val/accuracy"] <= 1 and "val/recall" in r and "val/precision" in r for r in evals)
    assert [r["global_step"] for r in logs if "train/loss" in r] == [1, 2, 3, 4]
    ckpt = trained / "checkpoints" / "latest"
    assert (ckpt / "model.safetensors").is_file() and json.loads((ckpt / "checksums.json").read_text())
    model = load_reward_classifier(ckpt)
    assert list(model.obs_meta) == ["front"] and not model.training
    prob = model.probability({"front": torch.rand(2, 3, 96, 96)})
    assert prob.shape == (2,) and torch.all((prob >= 0) & (prob <= 1))


def test_wrapper_replaces_the_reward_in_the_actor_env(trained):
    task = load_task_config("pick_cube_lowdim")
    ckpt = str(trained / "checkpoints" / "latest")
    env = make_actor_env(task, None, {"checkpoint": ckpt, "threshold": 0.5, "env_kwargs": {"image_obs": True},
                                      "drop_obs_keys": ["front", "wrist"]})
    try:
        obs, _ = env.reset(seed=0)
        assert "front" not in obs and "front" not in env.observation_space.spaces  # the policy stays state-based
        obs, reward, _, _, info = env.step(np.zeros(4))
        assert reward == float(info["classifier_success"]) and 0 <= info["classifier_prob"] <= 1
        assert "env_reward" in info and info["is_success"] is False  # the env's own success is kept for reports
    finally:
        env.close()


class _Fixed(torch.nn.Module):
    def __init__(self, p):
        super().__init__()
        self.obs_meta = {"front": {"shape": [3, 4, 4], "type": "rgb"}}
        self.p = p

    def probability(self, obs):
        return torch.tensor([self.p])


class _Env(gym.Env):
    """A minimal env: one rgb key and a gripper, reward 0, never terminating."""

    observation_space = gym.spaces.Dict({"front": gym.spaces.Box(0, 1, (3, 4, 4)),
                                         "gripper": gym.spaces.Box(0, 1, (1,))})
    action_space = gym.spaces.Box(-1, 1, (1,))

    def __init__(self, gripper: float):
        self.gripper = gripper

    def reset(self, **kwargs):
        return self._obs(), {}

    def step(self, action):
        return self._obs(), 0.0, False, False, {}

    def _obs(self):
        return {"front": np.zeros((3, 4, 4), np.float32), "gripper": np.array([self.gripper], np.float32)}


@pytest.mark.parametrize("p, gripper, success", [(0.8, 0.5, True), (0.6, 0.5, False), (0.8, 0.95, False)])
def test_threshold_and_conditions(p, gripper, success):
    env = ClassifierReward(_Env(gripper), _Fixed(p), threshold=0.7, conditions={"gripper": [0.2, 0.9]})
    env.reset()
    _, reward, terminated, _, info = env.step(np.zeros(1))
    assert reward == float(success) and terminated == success and info["is_success"] == success


def test_demo_conversion_to_delta_actions():
    pose = np.tile([0.4, 0.0, 0.3, 0.0, 3.14, 0.0], (3, 1))
    target = pose.copy()
    target[:, 0] += [0.01, 0.05, -0.02]
    out = convert_episode({"robot_eef_pose": pose, "action": target, "stage": np.zeros(3), "timestamp": np.arange(3.0)},
                          max_delta=0.02)
    np.testing.assert_allclose(out["action"], [[0.5, 0, 0], [1.0, 0, 0], [-1.0, 0, 0]])
    np.testing.assert_array_equal(out["reward"], [0, 0, 1])
    np.testing.assert_array_equal(out["terminal"], [0, 0, 1])
    assert "stage" not in out and "timestamp" not in out
