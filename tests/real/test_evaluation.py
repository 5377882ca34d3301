"""The eval loop in-process: latency compensation, over-budget inference, limits, remote policy."""

import time

import numpy as np
import pytest
import torch

from policylab.data.replay_buffer import ReplayBuffer
from policylab.real.teleop.keyboard import ScriptedKeys
from policylab.robot_apps.evaluation import ActionToPose, obs_to_policy, run_eval
from policylab.serving.client import RemotePolicy
from policylab.serving.server import PolicyServer
from tests.real.standin import SHAPE_META, StandInPolicy
from tests.real.test_real_env import make_env

pytest.importorskip("pyrealsense2")
pytest.importorskip("rtde_control")


def test_obs_to_policy_follows_the_dataset_convention():
    obs = {"camera_0": np.full((3, 48, 64, 3), 255, np.uint8), "robot_eef_pose": np.arange(18.0).reshape(3, 6)}
    meta = {"obs": {"image": {"shape": [3, 24, 32], "type": "rgb", "zarr_key": "img"},
                    "agent_pos": {"shape": [2], "zarr_key": "state", "index": [0, 2]}}}
    out = obs_to_policy(obs, meta, n_obs_steps=2, obs_key_map={"img": "camera_0", "state": "robot_eef_pose"})
    assert out["image"].shape == (1, 2, 3, 24, 32)
    assert torch.all(out["image"] == 1.0)
    torch.testing.assert_close(out["agent_pos"], torch.tensor([[[6.0, 7.0], [12.0, 13.0]]]))
    with pytest.raises(KeyError, match="obs_key_map"):
        obs_to_policy(obs, meta, n_obs_steps=2)


def test_action_to_pose_holds_uncontrolled_entries():
    ref = np.array([0.4, 0.0, 0.3, 0.0, 3.14, 0.0])
    poses = ActionToPose([0, 1])(np.array([[0.5, 0.1], [0.6, 0.2]]), ref)
    np.testing.assert_allclose(poses, [[0.5, 0.1, 0.3, 0.0, 3.14, 0.0], [0.6, 0.2, 0.3, 0.0, 3.14, 0.0]])
    with pytest.raises(ValueError, match="pose_indices"):
        ActionToPose()(np.zeros((2, 2)), ref)


@pytest.fixture
def env2(fake_ur, recordings, tmp_path):
    with make_env(fake_ur.host, recordings, tmp_path / "out", n_obs_steps=2, obs_resolution=(128, 96),
                  n_cameras=1) as env:
        yield env


def test_latency_compensation_and_step_limit(env2, fake_ur):
    policy = StandInPolicy(n_action_steps=4, step=0.005)
    result = run_eval(env2, policy, ScriptedKeys(), auto_start=True, max_steps=12, exec_latency=0.01)
    episode = result["episodes"][0]
    assert episode["iterations"] == 3
    assert policy.calls == 3  # 12 steps / 4 per inference
    for row in episode["inferences"]:
        times = np.array(row["action_times"])
        np.testing.assert_allclose(np.diff(times), 0.1, atol=1e-6)  # on the control grid
        assert times[0] >= row["sent_at"] + 0.01 - 1e-3  # never scheduled in the past
        # action i of the chunk is due at t_obs + i * dt; the first one (due at t_obs) was dropped
        assert times[0] == pytest.approx(row["obs_time"] + 0.1, abs=1e-6)
        assert not row["over_budget"]
    assert ReplayBuffer.create_from_path(env2.output_dir / "replay_buffer.zarr", mode="r").n_episodes == 1


def test_over_budget_inference_sends_only_the_last_action(env2, fake_ur):
    policy = StandInPolicy(n_action_steps=4, step=0.005, delay=0.45)  # slower than the 0.4 s chunk
    keys = ScriptedKeys([[1.6, "s"]])
    keys.start()
    result = run_eval(env2, policy, keys, auto_start=True, max_duration=10)
    rows = result["episodes"][0]["inferences"]
    assert rows
    assert all(r["over_budget"] for r in rows)
    for row in rows:
        assert len(row["action_times"]) == 1
        assert row["action_times"][0] > row["sent_at"]
    assert result["episodes"][0]["overruns"] == len(rows)
    assert result["episodes"][0]["iterations"] <= 5  # stopped by the s key, not the time limit


def test_remote_policy_drives_the_robot(env2, fake_ur):
    with PolicyServer(StandInPolicy(step=0.01), port=0, token="t") as server:
        remote = RemotePolicy(f"ws://127.0.0.1:{server.port}", token="t")
        assert remote.shape_meta == SHAPE_META
        start = env2.get_obs()["robot_eef_pose"][-1, 0]
        run_eval(env2, remote, ScriptedKeys(), auto_start=True, max_steps=8)
        remote.close()
        assert server.n_requests >= 3
        assert server.n_errors == 0
    time.sleep(0.3)
    assert env2.get_obs()["robot_eef_pose"][-1, 0] > start + 0.02
