"""RealSenseCamera on recordings made by librealsense's recorder, played back by librealsense."""

import time

import numpy as np
import pytest

from policylab.real.cameras import intrinsics_matrix
from policylab.real.cameras.realsense import RealSenseCamera, connected_serials
from policylab.real.cameras.video import read_video_frames
from policylab.real.device import DeviceError
from policylab.real.testing.realsense_recording import DEPTH_UNITS, FX, decode_pattern

pytest.importorskip("pyrealsense2")


def test_playback_frames_intrinsics_and_depth(recordings):
    cam = RealSenseCamera(recording=recordings[1], resolution=(320, 240), obs_resolution=(160, 120),
                          enable_depth=True, exposure=120, white_balance=5900)  # options: skipped on playback
    with cam:
        time.sleep(0.4)
        frames = cam.get(6)
        intr = cam.intrinsics
    assert frames["color"].shape == (6, 120, 160, 3)
    assert frames["color"].dtype == np.uint8
    index, camera_id = decode_pattern(frames["color"])
    assert np.all(camera_id == 1)
    # the pixels say which recorded frame this is, and so does librealsense's frame number
    np.testing.assert_array_equal(index, frames["step_idx"])
    assert np.all(np.diff(index) == 1)
    np.testing.assert_array_equal(frames["depth"][:, 60, 80], 1000 + index)  # aligned, per frame
    dt = np.diff(frames["timestamp"])
    assert np.all(dt > 0)
    assert 1 / 30 * 0.3 < np.median(dt) < 1 / 30 * 3
    assert np.all(np.abs(frames["timestamp"] - time.time()) < 2.0)
    assert intr["fx"] == pytest.approx(FX)
    assert intr["width"] == 320
    assert intr["depth_scale"] == pytest.approx(DEPTH_UNITS, rel=1e-6)
    k = intrinsics_matrix(intr, (160, 120))
    np.testing.assert_allclose(k, [[150, 0, 80], [0, 150, 60], [0, 0, 1]])


def test_recording_is_on_the_frame_grid(recordings, tmp_path):
    with RealSenseCamera(recording=recordings[0], resolution=(320, 240)) as cam:
        time.sleep(0.2)
        start = time.time()
        cam.start_recording(str(tmp_path / "video.mp4"), start)
        time.sleep(1.0)
        cam.stop_recording()
        stop = time.time()
        time.sleep(0.2)
        cam.check()
    video = read_video_frames(str(tmp_path / "video.mp4"))
    assert video.shape[1:] == (240, 320, 3)
    expected = (stop - start) * 30
    assert expected - 6 <= len(video) <= expected + 2  # one frame per 1/30 s tick since start
    assert np.all(np.abs(decode_pattern(video)[1] - 0) <= 2)  # camera id survives H.264


def test_missing_recording_and_missing_device_fail_fast(tmp_path):
    cam = RealSenseCamera(recording=str(tmp_path / "none.db3"))
    with pytest.raises(DeviceError, match="does not exist"):
        cam.start()
    cam.stop()
    if connected_serials():
        pytest.skip("a RealSense is connected")
    cam = RealSenseCamera(serial="000000000000")
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="not connected"):
        cam.start()
    assert time.monotonic() - t0 < 5.0  # never pipeline.start() without a device (15 s)
    cam.stop()


def test_a_camera_starts_after_the_parent_used_opencvs_thread_pool(tmp_path):
    """OpenCV's worker pool does not survive fork: the device stops it for the fork (a camera forked
    after a parallel cv2 call in the parent, recording made after it, used to hang: never ready)."""
    import cv2

    from policylab.real.testing.realsense_recording import make_recording

    threads = cv2.getNumThreads()
    for _ in range(3):
        cv2.resize(np.zeros((2000, 2000, 3), np.uint8), (500, 500), interpolation=cv2.INTER_AREA)
    recording = make_recording(tmp_path / "camera_0", camera_id=0, n_frames=30)
    with RealSenseCamera(recording=str(recording), resolution=(320, 240), obs_resolution=(160, 120),
                         launch_timeout=5.0) as cam:
        time.sleep(0.3)
        assert cam.get(2)["color"].shape == (2, 120, 160, 3)
    assert cv2.getNumThreads() == threads  # the parent's pool is as it was
