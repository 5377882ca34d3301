"""HIL-ConRFT on the robot stand-ins end to end: success frames recorded with a held key, and a
short Stage II session (train.py experiment=hil_conrft_real: the learner and one ray actor running
RealRobotRLEnv on the fake UR controller, a played-back camera and scripted SpaceMouse takeovers),
resumed with nothing lost."""

import json
import os
import threading
import time

import numpy as np
import pytest
import torch

from policylab.common.logging import read_logs
from policylab.data.replay_buffer import ReplayBuffer
from policylab.real.testing.fake_spacenavd import FakeSpacenavd
from tests.helpers import RL_ENV, run_train
from tests.real.test_scripts import _overrides, _run

pytest.importorskip("pyrealsense2")
pytest.importorskip("rtde_control")


def test_record_success_labels_the_frames_while_the_key_is_held(fake_ur, recordings, spacenavd, tmp_path):
    out = tmp_path / "frames"
    # spread out: a save (Jpeg2k) can stall a loaded machine's loop, and keys of one late cycle apply together
    keys = "[[0.5,c],[1.5,+space],[2.5,-space],[3.0,s],[3.6,c],[4.6,s],[5.2,backspace],[5.8,q]]"
    _run("demo_real_robot.py", _overrides(fake_ur, recordings, spacenavd, out, "keyboard=scripted",
                                          f"keyboard.events={keys}", "preview=false", "mode=record_success"))
    store = ReplayBuffer.create_from_path(out / "success_frames.zarr", mode="r")
    assert store.n_episodes == 1  # the second recording was dropped
    labels = store["success"][:]
    assert 15 <= len(labels) <= 28 and store["camera_0"].shape[1:] == (96, 128, 3)  # 2.5 s at 10 Hz, late ticks skipped
    assert store["robot_eef_pose"].shape == (len(labels), 6)
    on = np.flatnonzero(labels)
    assert 6 <= len(on) <= 12 and np.all(np.diff(on) == 1)  # one run of held frames, about 1 s
    assert 5 <= on[0] <= 12 and on[-1] < len(labels) - 2


def _demo_store(path):
    """Three short episodes in the RL layout of the real_rl task (state only)."""
    rng = np.random.default_rng(0)
    store = ReplayBuffer.create_from_path(str(path), mode="a")
    for _ in range(3):
        n = 15
        pose = np.tile([0.4, 0.0, 0.3, 0.0, np.pi, 0.0], (n, 1)) + rng.normal(0, 0.01, (n, 6))
        reward = np.zeros(n, np.float32)
        reward[-1] = 1.0
        terminal = np.zeros(n, np.uint8)
        terminal[-1] = 1
        store.add_episode({"robot_eef_pose": pose.astype(np.float32), "reward": reward, "terminal": terminal,
                           "action": rng.uniform(-1, 1, (n, 3)).astype(np.float32)})
    return path


STATE_ONLY = ["task=real_rl", "~task.shape_meta.obs.camera_0", "logging.mode=disabled", "task.image_crop_shape=null"]


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sft")
    store = _demo_store(tmp_path / "demos.zarr")
    run_dir = tmp_path / "sft"
    result = run_train([*STATE_ONLY, f"task.dataset.zarr_path={store}", f"hydra.run.dir={run_dir}",
                        "policy=conrft_actor", "horizon=2", "n_obs_steps=2", "n_action_steps=1",
                        "training.num_epochs=1", "training.max_train_steps=2", "training.rollout_every=0",
                        "training.sample_every=0", "training.checkpoint_every=1", "dataloader.batch_size=8",
                        "val_dataloader.batch_size=8", "policy.model.hidden_dims=[16,16]"], env_extra=RL_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return store, run_dir / "checkpoints" / "latest"


def test_eval_rl_actor_mode_runs_the_policy_in_delta_actions(fake_ur, recordings, spacenavd, sft, tmp_path):
    out = tmp_path / "eval_rl"
    _, init = sft
    _run("eval_real_robot.py", _overrides(fake_ur, recordings, spacenavd, out, "keyboard=scripted",
                                          "keyboard.events=[[1.0,y]]", "mode=rl_actor", f"policy.path={init}",
                                          "rl.reset=none", "n_episodes=2", "rl_max_steps=15", "torch_threads=1"))
    stats = json.loads((out / "eval_stats.json").read_text())
    first, second = stats["episodes"]
    assert first["success"] and first["length"] < 15  # the operator's y ended it as a success
    assert not second["success"] and second["length"] == 15 and stats["success_rate"] == 0.5
    assert second["env_steps_per_s"] > 5  # 10 Hz control (a loaded machine skips late ticks)
    servo = np.array([r["args"][:3] for r in fake_ur.commands("SERVOL")])
    assert np.ptp(servo, axis=0).max() <= 15 * 2 * 0.02 + 1e-6  # at most one max_delta per step, both episodes


def _session(fake_ur, recordings, spacenavd, store, init, run_dir, max_env_steps, *extra):
    env = "task.rl_env.env_kwargs"
    return [*STATE_ONLY, "experiment=hil_conrft_real", f"task.dataset.zarr_path={store}", f"hydra.run.dir={run_dir}",
            f"policy.init={init}", f"{env}.robot.host={fake_ur.host}",
            f"{env}.robot.safety_box={{low: [0.2, -0.3, 0.1], high: [0.6, 0.3, 0.5]}}",
            f"+{env}.cameras.camera_0.recording={recordings[0]}", f"{env}.cameras.camera_0.resolution=[320,240]",
            f"{env}.teleop.socket_path={spacenavd.socket_path}",
            f"{env}.keyboard={{_target_: policylab.real.teleop.keyboard.ScriptedKeys}}", f"{env}.reset=none",
            "task.rl_env.max_steps=15", "online.reward_classifier=null", f"training.max_env_steps={max_env_steps}",
            "training.training_starts=10", "training.publish_every=2", "training.batch_size=16",
            "training.checkpoint_every=5", "training.max_train_minutes=3", "training.max_updates_per_env_step=0.5",
            "training.torch_threads=1", "training.log_every=1", "critic.hidden_dims=[8]", *extra]


class Pusher:
    """The human: pushes the SpaceMouse (robot +y) for 0.4 s every 1.2 s until stopped."""

    def __init__(self, spacenavd):
        self.spacenavd, self.done = spacenavd, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.done.is_set():
            self.spacenavd._connected.wait(0.5)
            try:
                if self.spacenavd._client is not None:
                    self.spacenavd.motion(x=400)
                    time.sleep(0.4)
                    self.spacenavd.motion()
            except OSError:  # the actor closed the SpaceMouse: the session is over
                return
            time.sleep(0.8)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join(3)


@pytest.mark.timeout(1500)  # two sessions of a few minutes each; slow only on a loaded machine
def test_stage2_session_on_the_stand_ins(fake_ur, recordings, spacenavd, short_dir, sft, tmp_path):
    store, init = sft
    run_dir = tmp_path / "stage2"
    with Pusher(spacenavd):
        result = run_train(_session(fake_ur, recordings, spacenavd, store, init, run_dir, 45), env_extra=RL_ENV,
                           timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    online = ReplayBuffer.create_from_path(run_dir / "buffers" / "online.zarr", mode="r")
    demos = ReplayBuffer.create_from_path(run_dir / "buffers" / "demos.zarr", mode="r")
    assert online.n_steps >= 45 and online.n_episodes >= 3
    flags = online["intervention"][:]
    assert flags.sum() >= 3, "no SpaceMouse takeover reached the online store"
    assert demos.n_episodes > 3, "intervened segments did not reach the demo store"
    human = online["action"][:][flags == 1]
    assert np.mean(human[:, 1] > 0.5) > 0.6  # the human pushed +y
    logs = read_logs(run_dir / "logs.jsonl")
    episodes = [r for r in logs if "episode/length" in r]
    assert max(r["episode/weights_version"] for r in episodes) >= 2, "weights never reached the actor"
    assert any("critic_loss" in r for r in logs)
    servo = np.array([r["args"][:3] for r in fake_ur.commands("SERVOL")])
    assert np.all(servo >= np.array([0.2, -0.3, 0.1]) - 1e-9) and np.all(servo <= np.array([0.6, 0.3, 0.5]) + 1e-9)

    first = online["action"][:]
    with FakeSpacenavd(os.path.join(short_dir, "again.sock")) as mouse, Pusher(mouse):  # one client per daemon
        more = run_train(_session(fake_ur, recordings, mouse, store, init, run_dir, 75, "training.resume=true"),
                         env_extra=RL_ENV, timeout=600)
    assert more.returncode == 0, more.stderr[-4000:]
    again = ReplayBuffer.create_from_path(run_dir / "buffers" / "online.zarr", mode="r")
    assert again.n_steps >= 75 and again.n_episodes > online.n_episodes
    torch.testing.assert_close(torch.from_numpy(again["action"][: len(first)]), torch.from_numpy(first))
