"""SpaceMouse through the real libspnav, reading a fake spacenavd; mapping to robot motion."""

import time

import numpy as np
import pytest

from policylab.real.device import DeviceError
from policylab.real.teleop import TeleopMapping
from policylab.real.teleop.keyboard import ScriptedKeys
from policylab.real.teleop.spacemouse import SpaceMouse


def _wait_for(predicate, timeout=2.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_events_through_libspnav_map_to_robot_axes(spacenavd):
    with SpaceMouse(socket_path=spacenavd.socket_path, max_value=500, deadzone=0.1) as mouse:
        assert spacenavd.wait_connected(3)
        spacenavd.motion(x=100, y=200, z=-350, rx=40, ry=0, rz=250)
        assert _wait_for(lambda: mouse.get_raw()["motion"][2] == -350)
        np.testing.assert_array_equal(mouse.get_raw()["motion"], [100, 200, -350, 40, 0, 250])
        # robot x = -spnav z, robot y = spnav x, robot z = spnav y; |40/500| < deadzone -> 0
        np.testing.assert_allclose(mouse.get_motion(), [0.7, 0.2, 0.4, -0.5, 0.0, 0.0])
        spacenavd.motion(x=900)  # beyond max_value saturates at 1
        assert _wait_for(lambda: mouse.get_raw()["motion"][0] == 900)
        np.testing.assert_allclose(mouse.get_motion(), [0, 1, 0, 0, 0, 0])
        spacenavd.button(1, True)
        assert _wait_for(lambda: mouse.is_button_pressed(1))
        assert not mouse.is_button_pressed(0)
        spacenavd.play([(0.0, "button", [1, False]), (0.05, "motion", [0] * 6)], wait=True)
        assert _wait_for(lambda: not mouse.is_button_pressed(1) and not mouse.get_motion().any())


def test_no_daemon_fails_fast(short_dir):
    mouse = SpaceMouse(socket_path=f"{short_dir}/absent.sock", launch_timeout=3.0)
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="spacenavd"):
        mouse.start()
    assert time.monotonic() - t0 < 2.0
    mouse.stop()


def test_mapping_scale_and_button_modes():
    mapping = TeleopMapping(max_pos_speed=0.25, max_rot_speed=0.6, rotate_button=0, unlock_z_button=1)
    pose = np.array([0.4, 0.0, 0.3, 0.0, 0.0, 0.0])
    motion = np.array([0.7, -0.2, 0.5, 0.0, 0.0, 1.0])
    # no button: translation in xy only, 0.7 * 0.25 m/s * 0.1 s = 0.0175 m
    np.testing.assert_allclose(mapping.step(pose, motion, [0, 0], 0.1), [0.4175, -0.005, 0.3, 0, 0, 0])
    # z unlocked
    np.testing.assert_allclose(mapping.step(pose, motion, [0, 1], 0.1)[:3], [0.4175, -0.005, 0.3125])
    # rotate button: rotation only, 1.0 * 0.6 rad/s * 0.1 s about z
    out = mapping.step(pose, motion, [1, 0], 0.1)
    np.testing.assert_allclose(out, [0.4, 0.0, 0.3, 0.0, 0.0, 0.06], atol=1e-12)
    assert TeleopMapping.is_active(np.zeros(6), [0, 1])
    assert not TeleopMapping.is_active(np.zeros(6), [0, 0])


def test_scripted_keys_fire_in_order():
    keys = ScriptedKeys([[0.05, "s"], [0.0, "c"], [5.0, "q"]])
    with keys:
        assert keys.get_press_events() == ["c"]
        time.sleep(0.08)
        assert keys.get_press_events() == ["s"]
        assert keys.get_press_events() == []
