"""URRTDERobot through the real ur_rtde client against the fake controller: what the robot receives."""

import socket
import time

import numpy as np
import pytest

from policylab.real.device import DeviceError
from policylab.real.robots import RobotFault
from policylab.real.robots.ur_rtde import URRTDERobot
from policylab.real.testing.fake_ur import FakeURController, free_loopback_host

pytest.importorskip("rtde_control")
BOX = {"low": [0.2, -0.3, 0.1], "high": [0.6, 0.3, 0.5]}


def _servo_targets(ur, since=0.0):
    rows = [r for r in ur.commands("SERVOL") if r["t"] >= since]
    return np.array([r["t"] for r in rows]), np.array([r["args"][:6] for r in rows])


def test_setup_state_and_clean_stop_reach_the_controller(fake_ur):
    robot = URRTDERobot(fake_ur.host, tcp_offset=[0, 0, 0.13, 0, 0, 0], payload_mass=1.2,
                        joints_init=[0.1, -1.5, -1.5, -1.5, 1.5, 0.0], state_keys=["robot_eef_pose", "robot_joint"])
    with robot:
        assert robot.is_ready
        state = robot.get_state()
        np.testing.assert_allclose(state["robot_eef_pose"], [0.4, 0.0, 0.3, 0.0, np.pi, 0.0], atol=1e-6)
        assert abs(state["timestamp"] - time.time()) < 0.5
        time.sleep(0.2)
        last = robot.get_state(k=10)
        assert np.all(np.diff(last["timestamp"]) > 0)
        assert last["robot_joint"].shape == (10, 6)
    names = [r["cmd"] for r in fake_ur.commands() if r["cmd"] != "DASHBOARD"]
    assert names[0] == "SCRIPT"
    assert {"SET_TCP", "SET_PAYLOAD", "MOVEJ"} <= set(names[:5])
    assert fake_ur.commands("SET_TCP")[0]["args"][:6] == pytest.approx([0, 0, 0.13, 0, 0, 0])
    assert fake_ur.commands("MOVEJ")[0]["args"][:6] == pytest.approx([0.1, -1.5, -1.5, -1.5, 1.5, 0.0])
    assert names[-2:] == ["SERVO_STOP", "STOP_SCRIPT"]  # a clean stop ends the servo and the script


def test_scheduled_waypoint_becomes_a_speed_limited_servo_ramp(fake_ur):
    with URRTDERobot(fake_ur.host, max_pos_speed=0.25, safety_box=BOX) as robot:
        start = robot.get_state()["robot_eef_pose"]
        target = start + [0.05, 0.0, 0.0, 0.0, 0.0, 0.0]
        t_sched = time.time()
        robot.schedule_waypoint(target, t_sched + 0.4)
        time.sleep(0.8)
        np.testing.assert_allclose(robot.get_state()["robot_eef_pose"][:3], target[:3], atol=2e-3)
        times, poses = _servo_targets(fake_ur, since=t_sched)
    x = poses[:, 0]
    assert np.all(np.diff(x) >= -1e-9), "the ramp is monotone"
    assert x[-1] == pytest.approx(target[0], abs=1e-6)
    reached = times[np.argmax(x >= target[0] - 1e-6)]
    assert 0.2 < reached - t_sched < 0.8  # arrives near the requested time (loaded-machine tolerance)
    # servoL arrives at the loop rate (125 Hz); generous bounds for a shared 2-core machine
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 60 < rate < 140
    # the speed limit holds over every 0.1 s window (servo periods jitter on a loaded machine,
    # so single steps are not compared; the trajectory is evaluated at the time of sending)
    for i in range(len(times)):
        j = np.searchsorted(times, times[i] + 0.1)
        if j < len(times):
            assert abs(x[j] - x[i]) / (times[j] - times[i]) <= 0.25 * 1.25


def test_safety_box_clips_every_servo_target(fake_ur):
    with URRTDERobot(fake_ur.host, max_pos_speed=1.0, safety_box=BOX) as robot:
        pose = robot.get_state()["robot_eef_pose"]
        t0 = time.time()
        robot.schedule_waypoint(pose + [1.0, -2.0, 0.5, 0, 0, 0], t0 + 0.3)
        robot.servo_to(pose + [1.0, -2.0, 0.5, 0, 0, 0], 0.2)
        time.sleep(0.6)
        final = robot.get_state()
    _, poses = _servo_targets(fake_ur, since=t0)
    assert np.all(poses[:, :3] >= np.array(BOX["low"]) - 1e-9)
    assert np.all(poses[:, :3] <= np.array(BOX["high"]) + 1e-9)
    np.testing.assert_allclose(poses[-1, :3], [0.6, -0.3, 0.5], atol=1e-9)
    np.testing.assert_allclose(final["commanded_pose"][:3], [0.6, -0.3, 0.5], atol=1e-9)


def test_bad_pose_is_rejected_before_it_leaves(fake_ur):
    with URRTDERobot(fake_ur.host) as robot:
        with pytest.raises(ValueError, match="6 finite"):
            robot.schedule_waypoint([0.4, 0.0, np.nan, 0, 0, 0], time.time() + 1)
        with pytest.raises(ValueError):
            robot.servo_to([0.4, 0.0], 1.0)


@pytest.mark.parametrize("fault, message", [("protective_stop", "protective stop"),
                                            ("silent", "silent"),
                                            ("disconnect", "lost the RTDE connection|exited")])
def test_faults_stop_the_robot_with_a_clear_error(fake_ur, fault, message):
    robot = URRTDERobot(fake_ur.host, stale_timeout=0.3, heartbeat_timeout=1.0)
    with robot:
        robot.get_state()
        fake_ur.inject(fault)
        t0 = time.monotonic()
        with pytest.raises(RobotFault, match=message):
            while time.monotonic() - t0 < 5.0:
                robot.get_state()
                time.sleep(0.01)
        assert time.monotonic() - t0 < 3.0
        with pytest.raises(RobotFault):  # the fault is sticky: no command goes out after it
            robot.schedule_waypoint(np.zeros(6) + 0.3, time.time() + 1)
    if fault == "protective_stop":
        assert fake_ur.commands("PROTECTIVE_STOPPED")


def test_silent_peer_at_connect_times_out_instead_of_hanging(tmp_path):
    with FakeURController(free_loopback_host(), fault="silent") as ur:
        robot = URRTDERobot(ur.host, launch_timeout=1.5)
        t0 = time.monotonic()
        with pytest.raises(DeviceError, match="not ready after 1.5 s"):
            robot.start()
        assert time.monotonic() - t0 < 4.0
        robot.stop()


def test_no_controller_fails_fast():
    host = free_loopback_host()
    probe = socket.socket()
    assert probe.connect_ex((host, 30004)) != 0  # nothing listens there
    probe.close()
    robot = URRTDERobot(host, launch_timeout=5.0)
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="failed to start"):
        robot.start()
    assert time.monotonic() - t0 < 3.0
    robot.stop()
