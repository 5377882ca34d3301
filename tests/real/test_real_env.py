"""RealEnv on the fake UR controller and played-back cameras: alignment, late actions, episodes."""

import time

import numpy as np
import pytest

from policylab.data.replay_buffer import ReplayBuffer
from policylab.real.cameras.realsense import RealSenseCamera
from policylab.real.cameras.video import read_video_frames
from policylab.real.real_env import EmptyEpisodeError, RealEnv
from policylab.real.robots.ur_rtde import URRTDERobot
from policylab.real.testing.realsense_recording import decode_pattern

pytest.importorskip("pyrealsense2")
pytest.importorskip("rtde_control")


def make_env(host, recordings, out, n_obs_steps=3, obs_resolution=(64, 48), n_cameras=2):
    cameras = {f"camera_{i}": RealSenseCamera(recording=path, resolution=(320, 240), obs_resolution=obs_resolution)
               for i, path in enumerate(recordings[:n_cameras])}
    robot = URRTDERobot(host, safety_box={"low": [0.2, -0.3, 0.1], "high": [0.6, 0.3, 0.5]})
    return RealEnv(robot, cameras, frequency=10, n_obs_steps=n_obs_steps, output_dir=str(out),
                   image_compressor="disk")


@pytest.fixture
def env(fake_ur, recordings, tmp_path):
    with make_env(fake_ur.host, recordings, tmp_path / "out") as real_env:
        yield real_env


def test_observations_are_aligned_on_the_grid(env):
    obs = env.get_obs()
    assert obs["camera_0"].shape == (3, 48, 64, 3)
    assert obs["robot_eef_pose"].shape == (3, 6)
    np.testing.assert_allclose(np.diff(obs["timestamp"]), 0.1, atol=1e-6)
    assert abs(obs["timestamp"][-1] - time.time()) < 0.5
    for name, cam_id in [("camera_0", 0), ("camera_1", 1)]:
        index, ids = decode_pattern(obs[name])
        assert np.all(ids == cam_id)
        # 0.1 s apart at 30 fps: frame indices 3 apart (+-2 for arrival jitter on a loaded machine;
        # recordings loop at 60 frames)
        steps = np.diff(index) % 60
        assert np.all((steps >= 1) & (steps <= 5)), index


def test_late_actions_are_dropped_and_future_ones_scheduled(env, fake_ur):
    pose = env.get_obs()["robot_eef_pose"][-1]
    now = time.time()
    targets = np.repeat(pose[None], 3, axis=0)
    targets[:, 0] += [0.01, 0.02, 0.03]
    sent = env.exec_actions(targets, [now - 0.05, now + 0.2, now + 0.3])
    assert sent == 2
    assert env.n_dropped_actions == 1
    time.sleep(0.6)
    np.testing.assert_allclose(env.get_obs()["robot_eef_pose"][-1][0], pose[0] + 0.03, atol=2e-3)
    with pytest.raises(ValueError, match="timestamps"):
        env.exec_actions(targets, [now])


def test_episode_recording_and_drop(env, tmp_path):
    pose = env.get_obs()["robot_eef_pose"][-1]
    t0 = time.time() + 0.05
    env.start_episode(t0)
    for i in range(12):
        deadline = t0 + i * 0.1
        time.sleep(max(0.0, deadline - time.time()))
        env.get_obs()
        env.exec_actions([pose + [0.002 * i, 0, 0, 0, 0, 0]], [deadline + 0.1], stages=[i // 6])
    n = env.end_episode()
    assert 10 <= n <= 12
    rb = ReplayBuffer.create_from_path(tmp_path / "out" / "replay_buffer.zarr", mode="r")
    assert rb.n_episodes == 1
    assert rb["camera_1"].shape == (n, 48, 64, 3)
    np.testing.assert_allclose(np.diff(rb["timestamp"][:]), 0.1, atol=1e-6)
    # tick k holds the action scheduled for t0 + k * dt
    np.testing.assert_allclose(rb["action"][1:n, 0] - pose[0], 0.002 * np.arange(n - 1), atol=1e-9)
    assert list(rb["stage"][:n][:6]) == [0] * 6
    index = decode_pattern(rb["camera_0"][:])[0]
    steps = np.diff(index) % 60  # 3 frames per step; a late frame may fill two steps
    assert np.median(steps) == 3, index
    assert np.all(steps <= 6), index
    videos = sorted((tmp_path / "out" / "videos" / "0").glob("*.mp4"))
    assert [v.name for v in videos] == ["camera_0.mp4", "camera_1.mp4"]
    frames = read_video_frames(str(videos[0]))
    assert abs(len(frames) - 3 * n) <= 6
    assert frames.shape[1:] == (240, 320, 3)

    env.start_episode()
    with pytest.raises(EmptyEpisodeError, match="not saved"):
        env.end_episode()  # no action scheduled: never saved silently empty
    assert rb.n_episodes == 1
    assert not (tmp_path / "out" / "videos" / "1").exists()
    env.drop_episode()
    assert ReplayBuffer.create_from_path(tmp_path / "out" / "replay_buffer.zarr", mode="r").n_episodes == 0
    assert not (tmp_path / "out" / "videos" / "0").exists()


def test_stop_while_recording_an_empty_episode_still_stops_devices(fake_ur, recordings, tmp_path):
    env = make_env(fake_ur.host, recordings, tmp_path / "out", n_cameras=1)
    env.start()
    env.start_episode()
    env.stop()  # logs that the empty episode was not saved, and stops anyway
    assert not env.robot.is_ready
    assert not env.cameras["camera_0"].is_ready
    assert ReplayBuffer.create_from_path(tmp_path / "out" / "replay_buffer.zarr", mode="r").n_episodes == 0


def test_preview_turns_itself_off_without_a_display(monkeypatch):
    from policylab.real.demo import Preview

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    preview = Preview(enabled=True)  # a Qt OpenCV would abort the process on imshow here
    preview.show({"camera_0": np.zeros((2, 48, 64, 3), np.uint8)}, ["camera_0"], "text")
    assert not preview.enabled
