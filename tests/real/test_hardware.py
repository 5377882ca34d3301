"""Checks on real hardware, skipped unless `--hardware` is given (see docs/real_robot.md).

    POLICYLAB_UR_HOST=<robot ip> pytest tests/real -m hardware --hardware

The robot test moves the TCP 2 cm along +x and back, slowly, inside a small box around its
current pose: clear the workspace and keep a hand on the emergency stop.
"""

import os
import time

import numpy as np
import pytest

pytestmark = pytest.mark.hardware


def test_ur_robot_moves_inside_a_box_around_its_pose():
    from policylab.real.robots.ur_rtde import URRTDERobot

    host = os.environ.get("POLICYLAB_UR_HOST")
    if not host:
        pytest.skip("set POLICYLAB_UR_HOST to the robot's address")
    probe = URRTDERobot(host, max_pos_speed=0.05)
    with probe:
        pose = probe.get_state()["robot_eef_pose"]
    box = {"low": (pose[:3] - 0.03).tolist(), "high": (pose[:3] + 0.03).tolist()}
    with URRTDERobot(host, max_pos_speed=0.05, safety_box=box) as robot:
        target = pose + [0.02, 0, 0, 0, 0, 0]
        robot.schedule_waypoint(target, time.time() + 1.0)
        time.sleep(1.8)
        np.testing.assert_allclose(robot.get_state()["robot_eef_pose"][:3], target[:3], atol=3e-3)
        robot.schedule_waypoint(pose, time.time() + 1.0)
        time.sleep(1.8)
        states = robot.get_state(k=100)
        assert np.all(np.diff(states["timestamp"]) > 0)
        np.testing.assert_allclose(states["robot_eef_pose"][-1, :3], pose[:3], atol=3e-3)


def test_realsense_streams_colour_and_depth():
    from policylab.real.cameras.realsense import RealSenseCamera, connected_serials

    serials = connected_serials()
    if not serials:
        pytest.skip("no RealSense connected")
    with RealSenseCamera(serial=serials[0], resolution=(640, 480), fps=30, enable_depth=True,
                         obs_resolution=(320, 240), exposure=150, white_balance=5000) as cam:
        time.sleep(1.0)
        frames = cam.get(10)
        intr = cam.intrinsics
    assert frames["color"].shape == (10, 240, 320, 3)
    assert frames["depth"].shape == (10, 240, 320)
    assert 1 / 30 * 0.5 < np.median(np.diff(frames["timestamp"])) < 1 / 30 * 2
    assert intr["fx"] > 100
    assert 0 < intr["depth_scale"] < 0.01


def test_spacemouse_reports_a_push():
    from policylab.real.teleop.spacemouse import SpaceMouse

    with SpaceMouse() as mouse:
        print("push the SpaceMouse cap away from you within 10 s")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10 and not np.any(mouse.get_motion()):
            time.sleep(0.02)
        assert np.any(mouse.get_motion()), "no motion seen"
