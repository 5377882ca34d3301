"""End to end: demo_real_robot.py and eval_real_robot.py, unmodified, against the stand-ins.

Real ur_rtde <-> fake UR controller, real librealsense <-> generated recordings, real libspnav
<-> fake spacenavd, keys scripted or typed by xdotool into Xvfb. Only config overrides differ
from a run on hardware.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from policylab.data.datasets.sequence import SequenceDataset
from policylab.data.replay_buffer import ReplayBuffer
from policylab.real.cameras.video import read_video_frames
from policylab.real.testing.realsense_recording import decode_pattern
from tests.helpers import REPO

pytest.importorskip("pyrealsense2")
pytest.importorskip("rtde_control")
BOX_LOW, BOX_HIGH = [0.2, -0.3, 0.1], [0.7, 0.3, 0.5]
STEP = 350 / 500 * 0.25 / 10  # full-scale 500, push 350, 0.25 m/s, 10 Hz: m per step


def _overrides(fake_ur, recordings, spacenavd, out, *extra):
    return [f"robot.host={fake_ur.host}", f"robot.safety_box.low={BOX_LOW}", f"robot.safety_box.high={BOX_HIGH}",
            "robot.tcp_offset=null", "cameras=playback", f"cameras.camera_0.recording={recordings[0]}",
            f"cameras.camera_1.recording={recordings[1]}", f"teleop.socket_path={spacenavd.socket_path}",
            f"output_dir={out}", "env.image_compressor=disk", "obs_resolution=[128,96]", *extra]


def _run(script, overrides, env=None, timeout=150):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run([sys.executable, str(REPO / script), *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _when(condition, action, timeout=60):
    """Run `action` in a thread once `condition()` holds (e.g. the script reached some point)."""
    def wait_then_act():
        t0 = time.monotonic()
        while not condition() and time.monotonic() - t0 < timeout:
            time.sleep(0.02)
        action()
    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def _check_demo_dataset(out, n_episodes):
    rb = ReplayBuffer.create_from_path(out / "replay_buffer.zarr", mode="r")
    assert rb.n_episodes == n_episodes
    for key in ("action", "robot_eef_pose", "robot_joint", "stage", "timestamp", "camera_0", "camera_1"):
        assert key in rb
    for ep in range(n_episodes):
        frames = {name: read_video_frames(str(out / "videos" / str(ep) / f"{name}.mp4"))
                  for name in ("camera_0", "camera_1")}
        steps = rb.episode_lengths[ep]
        assert all(abs(len(f) - 3 * steps) <= 8 and f.shape[1:] == (240, 320, 3) for f in frames.values())
    assert not (out / "videos" / str(n_episodes)).exists()
    # the recording is a training set as it stands: a shape_meta-driven image dataset reads it
    shape_meta = {"obs": {"camera_0": {"shape": [3, 96, 128], "type": "rgb"},
                          "robot_eef_pose": {"shape": [6]}}, "action": {"shape": [6]}}
    sample = SequenceDataset(shape_meta, horizon=8, n_obs_steps=2, zarr_path=str(out / "replay_buffer.zarr"))[0]
    assert sample["obs"]["camera_0"].shape == (2, 3, 96, 128)
    assert sample["action"].shape == (8, 6)
    return rb


def test_demo_records_episodes_with_scripted_keys(fake_ur, recordings, spacenavd, tmp_path):
    out = tmp_path / "demo"
    keys = "[[1.0,c],[2.6,space],[3.0,s],[3.4,c],[4.4,s],[4.8,c],[5.4,s],[5.8,backspace],[6.2,q]]"
    # push the SpaceMouse (robot +x) for 1 s, once episode 0 has started
    _when(lambda: (out / "videos" / "0").exists(),
          lambda: spacenavd.play([(0.3, "motion", [0, 0, -350, 0, 0, 0]), (1.3, "motion", [0] * 6)]))
    proc = _run("demo_real_robot.py", _overrides(fake_ur, recordings, spacenavd, out, "keyboard=scripted",
                                                 f"keyboard.events={keys}", "preview=false"))
    stats = json.loads((out / "demo_stats.json").read_text())
    print("demo loop timing:", stats)
    assert stats["episodes_saved"] == 2
    assert stats["episodes_empty"] == 0
    assert stats["achieved_hz"] > 5
    assert stats["iterations"] > 40
    rb = _check_demo_dataset(out, n_episodes=2)
    first = rb.get_episode(0)
    dx = np.diff(first["action"][:, 0])
    moving = dx[dx > 1e-6]
    assert len(moving) >= 5, "the SpaceMouse push moved the target during episode 0"
    np.testing.assert_allclose(moving, STEP, rtol=1e-6)  # 0.7 deflection -> 17.5 mm per 0.1 s step along +x
    assert np.allclose(first["action"][:, 1:3], first["action"][0, 1:3])  # y, z untouched
    assert first["robot_eef_pose"][-1, 0] == pytest.approx(first["action"][-1, 0], abs=5e-3)
    assert set(first["stage"]) == {0, 1}  # space pressed once during episode 0
    # 30 fps camera, 10 Hz steps: 3 frames per step (a late frame may fill two steps)
    assert np.median(np.diff(decode_pattern(first["camera_1"])[0]) % 60) == 3
    servo = np.array([r["args"][:3] for r in fake_ur.commands("SERVOL")])
    assert np.all(servo >= np.array(BOX_LOW) - 1e-9)
    assert np.all(servo <= np.array(BOX_HIGH) + 1e-9)
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(not (shutil.which("Xvfb") and shutil.which("xdotool") and importlib.util.find_spec("pynput")),
                    reason="needs Xvfb, xdotool and pynput")
def test_demo_keys_typed_into_xvfb(fake_ur, recordings, spacenavd, tmp_path):
    read_fd, write_fd = os.pipe()  # Xvfb picks a free display and writes its number here
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "320x240x24", "-nolisten", "tcp"],
                            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as pipe:
            env = {"DISPLAY": f":{pipe.readline().strip()}"}

        def type_keys():
            time.sleep(2.0)  # the key listener starts after the devices
            for key, pause in [("c", 1.5), ("space", 0.3), ("s", 0.6), ("c", 1.0), ("s", 0.6), ("q", 0.0)]:
                subprocess.run(["xdotool", "key", key], env={**os.environ, **env}, check=True)
                time.sleep(pause)
        _when(lambda: fake_ur.commands("SERVOL"), type_keys)  # once the robot's servo loop is up
        out = tmp_path / "demo_x"
        # preview on: a window under Xvfb with GUI OpenCV, a logged fallback with headless OpenCV
        _run("demo_real_robot.py", _overrides(fake_ur, recordings, spacenavd, out, "keyboard=pynput",
                                              "preview=true"), env=env)
    finally:
        xvfb.terminate()
        xvfb.wait(5)
    rb = _check_demo_dataset(out, n_episodes=2)
    assert 1 in rb.get_episode(0)["stage"]


def _check_latency(stats, exec_latency=0.01):
    rows = [row for ep in stats["episodes"] for row in ep["inferences"]]
    assert rows, "the policy was consulted"
    for row in rows:
        assert all(t >= row["sent_at"] + exec_latency - 1e-3 for t in row["action_times"]), row
        # anchored to the observation: action i is due at t_obs + i * dt (never before it)
        assert min(row["action_times"]) >= row["obs_time"]
    return rows


def test_eval_standin_policy_with_takeover(fake_ur, recordings, spacenavd, tmp_path):
    out = tmp_path / "eval"
    # a human takes over for 0.6 s, once the policy episode has started
    _when(lambda: (out / "videos" / "0").exists(),
          lambda: spacenavd.play([(1.0, "motion", [300, 0, 0, 0, 0, 0]), (1.6, "motion", [0] * 6)]))
    _run("eval_real_robot.py", _overrides(fake_ur, recordings, spacenavd, out, "keyboard=scripted",
                                          "policy._target_=tests.real.standin.StandInPolicy", "policy.path=null",
                                          "~cameras.camera_1", "auto_start=true", "max_duration=4"))
    stats = json.loads((out / "eval_stats.json").read_text())
    episode = stats["episodes"][0]
    print("eval loop timing:", {k: v for k, v in episode.items() if k != "inferences"})
    rows = _check_latency(stats)
    assert len(rows) >= 3
    assert episode["human_steps"] >= 2
    rb = ReplayBuffer.create_from_path(out / "replay_buffer.zarr", mode="r")
    assert rb.n_episodes == 1
    assert 1 in rb["stage"][:]
    assert rb["camera_0"].shape[1:] == (96, 128, 3)
    servo = np.array([r["args"][:3] for r in fake_ur.commands("SERVOL")])
    assert servo[-1, 0] > servo[0, 0] + 0.02  # the policy drives +x
    assert np.all(servo <= np.array(BOX_HIGH) + 1e-9)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A pusht_image diffusion checkpoint (32x32 images) trained for 1 step by the project's train.py."""
    from tests.data.zarr_v2_fixtures import pusht_like_arrays, write_v2_store
    from tests.helpers import run_train

    root = tmp_path_factory.mktemp("train")
    lengths = [12, 12, 12]
    store = write_v2_store(root / "pusht.zarr", pusht_like_arrays(lengths, image_size=32), np.cumsum(lengths),
                           chunks={"img": (1, 32, 32, 3)})
    run_dir = root / "run"
    result = run_train(["debug=tiny", "task=pusht_image", f"task.dataset.zarr_path={store}",
                        f"hydra.run.dir={run_dir}", "logging.mode=disabled", "training.num_epochs=1",
                        "training.max_train_steps=1", "training.max_val_steps=1", "training.rollout_every=0",
                        "training.sample_every=0", "dataloader.batch_size=2", "val_dataloader.batch_size=2",
                        "task.shape_meta.obs.image.shape=[3,32,32]", "task.image_crop_shape=[28,28]"])
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir / "checkpoints" / "latest"


def test_eval_checkpoint_from_the_workspace(fake_ur, recordings, spacenavd, tmp_path, tiny_checkpoint):
    out = tmp_path / "eval_ckpt"
    _run("eval_real_robot.py", _overrides(fake_ur, recordings, spacenavd, out, "keyboard=scripted",
                                          f"policy.path={tiny_checkpoint}", "~cameras.camera_1",
                                          "obs_key_map={img: camera_0, state: robot_eef_pose}",
                                          "action_pose_indices=[0,1]", "auto_start=true", "max_duration=4",
                                          "torch_threads=1"))
    stats = json.loads((out / "eval_stats.json").read_text())
    print("eval loop timing (diffusion checkpoint):",
          {k: v for k, v in stats["episodes"][0].items() if k != "inferences"})
    rows = _check_latency(stats)
    assert len(rows) >= 2
    servo = np.array([r["args"][:6] for r in fake_ur.commands("SERVOL")])
    assert np.all(servo[:, :3] >= np.array(BOX_LOW) - 1e-9)
    assert np.all(servo[:, :3] <= np.array(BOX_HIGH) + 1e-9)
    assert np.allclose(servo[:, 2], servo[0, 2])  # an xy policy leaves z where it was
