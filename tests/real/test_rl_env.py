"""The RL actor's episode loop (`rl.actor.run_episode`) on RealEnv: the fake UR controller, a
played-back camera and SpaceMouse events from the fake spacenavd. Takeovers are recorded as the
human's actions, the safety box clips, a dropped controller connection ends the episode."""

import time

import numpy as np
import pytest
import torch
from torch import nn

from policylab.real.device import DeviceError
from policylab.real.teleop.spacemouse import SpaceMouse
from policylab.rl.actor import run_episode
from policylab.robot_apps.rl_env import (
    DeltaActions,
    ObservationMap,
    RealRobotRLEnv,
    ResetMode,
    Takeover,
)
from tests.real.test_real_env import make_env

pytest.importorskip("pyrealsense2")
pytest.importorskip("rtde_control")

SHAPE_META = {"obs": {"camera_0": {"shape": [3, 48, 64], "type": "rgb"},
                      "robot_eef_pose": {"shape": [6], "type": "low_dim"}}}


class ConstantPolicy(nn.Module):
    """The policylab contract with a fixed action: predict_action(obs) -> {"action": (1, Ta, Da)}."""

    def __init__(self, action, n_action_steps: int = 2):
        super().__init__()
        self.register_buffer("action", torch.tensor(action, dtype=torch.float32))
        self.n_action_steps = n_action_steps
        self.seen: list[dict] = []

    def predict_action(self, obs, generator=None):
        self.seen.append({k: tuple(v.shape) for k, v in obs.items()})
        return {"action": self.action.expand(1, self.n_action_steps, -1).clone()}


@pytest.fixture
def rl_env(fake_ur, recordings, spacenavd, tmp_path):
    real = make_env(fake_ur.host, recordings, tmp_path / "raw", n_obs_steps=1, obs_resolution=(64, 48), n_cameras=1)
    mouse = SpaceMouse(socket_path=spacenavd.socket_path, max_value=500, deadzone=0.05)
    env = RealRobotRLEnv(real, ObservationMap(SHAPE_META), DeltaActions(max_delta=0.01), Takeover(mouse),
                         ResetMode("none"), safety_box={"low": [0.2, -0.3, 0.1], "high": [0.6, 0.3, 0.5]})
    yield env
    env.close()


def test_takeover_steps_are_the_humans_and_flagged(rl_env, spacenavd, fake_ur):
    policy = ConstantPolicy([1.0, 0.0, 0.0])  # +x, 1 cm per step
    rl_env.start()
    assert spacenavd.wait_connected(3)
    # the human pushes towards robot +y (spacenavd x) from 0.6 s to 1.2 s into the episode
    spacenavd.play([(0.6, "motion", [400, 0, 0, 0, 0, 0]), (1.2, "motion", [0] * 6)])
    episode, stats = run_episode(policy, rl_env, seed=0, n_obs_steps=2, n_action_steps=2, max_steps=20)
    flags = episode["intervention"].astype(bool)
    assert episode["action"].shape == (20, 3) and episode["camera_0"].shape == (20, 48, 64, 3)
    assert episode["robot_eef_pose"].shape == (20, 6) and policy.seen[0]["camera_0"] == (1, 2, 3, 48, 64)
    assert 3 <= flags.sum() <= 9 and not flags[:3].any() and not flags[-3:].any(), flags
    assert stats["n_interventions"] == 1  # one contiguous takeover
    # human: robot +y at 0.8 x 0.25 m/s x 0.1 s = 2 cm per step, limited to one action (1 cm): [0, 1, 0]
    np.testing.assert_allclose(episode["action"][flags][1:-1], [[0.0, 1.0, 0.0]] * (flags.sum() - 2), atol=1e-5)
    np.testing.assert_allclose(episode["action"][~flags], [[1.0, 0.0, 0.0]] * (~flags).sum(), atol=1e-5)
    pose = episode["robot_eef_pose"]
    assert pose[-1, 1] - pose[0, 1] > 0.02 and pose[-1, 0] - pose[0, 0] > 0.08  # both moved the arm
    log = rl_env.step_log
    assert len(log) == 20 and np.mean([r["overrun_s"] > 0.05 for r in log]) < 0.3


def test_safety_box_clips_and_the_recorded_action_is_the_clipped_one(rl_env, fake_ur):
    policy = ConstantPolicy([0.0, 0.0, -1.0])  # down, 1 cm per step, from z 0.3
    rl_env.box.low[2] = 0.25  # a floor 5 cm below the start
    episode, _ = run_episode(policy, rl_env, seed=0, n_obs_steps=1, n_action_steps=2, max_steps=10)
    z = np.array([r["args"][2] for r in fake_ur.commands("SERVOL")])
    assert z.min() >= 0.25 - 1e-6
    np.testing.assert_allclose(episode["action"][:4, 2], -1.0, atol=1e-5)
    assert episode["action"][-1, 2] == pytest.approx(0.0, abs=1e-5)  # at the floor: nothing executed


def test_dropped_controller_connection_ends_the_episode_and_stops_the_arm(rl_env, fake_ur):
    policy = ConstantPolicy([0.5, 0.0, 0.0])
    rl_env.start()
    t_fault = []

    def drop_connection():
        time.sleep(0.8)
        t_fault.append(time.time())
        fake_ur.inject("disconnect")

    import threading

    threading.Thread(target=drop_connection, daemon=True).start()
    t0 = time.monotonic()
    episode, stats = run_episode(policy, rl_env, seed=0, n_obs_steps=1, n_action_steps=2, max_steps=100)
    assert time.monotonic() - t0 < 4.0 and stats["length"] < 40
    assert episode["terminal"][-1] == 0  # ended, not terminated: the last transition is not a failure label
    assert rl_env.fault is not None and rl_env.fault.startswith("robot")  # named, with its error
    late = [r for r in fake_ur.commands("SERVOL") if r["t"] > t_fault[0] + 0.5]
    assert not late, "servo commands reached the controller after the connection dropped"
    with pytest.raises(DeviceError, match="faulted"):
        rl_env.reset(seed=1)


def test_pose_reset_and_keyboard_takeover(fake_ur, recordings, tmp_path):
    from policylab.real.teleop.keyboard import ScriptedKeys

    real = make_env(fake_ur.host, recordings, tmp_path / "raw", n_obs_steps=1, obs_resolution=(64, 48), n_cameras=1)
    keys = ScriptedKeys([[1.6, "i"], [1.9, "i"]])  # robot +y, one step each, after the 1 s reset
    env = RealRobotRLEnv(real, ObservationMap(SHAPE_META), DeltaActions(max_delta=0.01),
                         reset=ResetMode("pose", [0.45, 0.05, 0.3, 0.0, np.pi, 0.0], seconds=1.0), keys=keys)
    try:
        episode, stats = run_episode(ConstantPolicy([0.0, 0.0, 0.0]), env, seed=0, n_obs_steps=1, n_action_steps=1,
                                     max_steps=12)
    finally:
        env.close()
    np.testing.assert_allclose(episode["robot_eef_pose"][0, :3], [0.45, 0.05, 0.3], atol=3e-3)
    assert episode["intervention"].sum() == 2 and stats["n_interventions"] == 2
    np.testing.assert_allclose(episode["action"][episode["intervention"] == 1], [[0.0, 1.0, 0.0]] * 2, atol=1e-5)
    np.testing.assert_allclose(episode["action"][episode["intervention"] == 0], 0.0, atol=1e-6)
