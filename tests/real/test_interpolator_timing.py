import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from policylab.real.robots.interpolator import (
    PoseTrajectoryInterpolator,
    SafetyBox,
    pose_distance,
)
from policylab.real.timing import LoopStats, align_indices, grid_indices, precise_wait

P0 = np.array([0.4, 0.0, 0.3, 0.0, np.pi, 0.0])


def test_interpolates_position_linearly_and_rotation_by_slerp():
    p1 = P0.copy()
    p1[:3] += [0.1, -0.2, 0.0]
    p1[3:] = (Rotation.from_rotvec([0, 0, 0.4]) * Rotation.from_rotvec(P0[3:])).as_rotvec()
    traj = PoseTrajectoryInterpolator([0.0, 1.0], [P0, p1])
    mid = traj(0.5)
    np.testing.assert_allclose(mid[:3], [0.45, -0.1, 0.3])
    assert pose_distance(P0, mid)[1] == pytest.approx(0.2, abs=1e-9)
    np.testing.assert_allclose(traj(-1.0), P0)  # held outside the knots
    np.testing.assert_allclose(traj(5.0), p1)
    assert traj(np.array([0.0, 0.5, 1.0])).shape == (3, 6)


def test_schedule_waypoint_ignores_the_past_and_respects_speed():
    traj = PoseTrajectoryInterpolator([10.0], [P0])
    target = P0 + [0.5, 0, 0, 0, 0, 0]
    assert traj.schedule_waypoint(target, 9.0, 0.25, 0.6, curr_time=10.0) is traj
    slow = traj.schedule_waypoint(target, 10.5, 0.25, 0.6, curr_time=10.0)
    # 0.5 m at 0.25 m/s cannot be done in 0.5 s: the waypoint arrives after 2 s instead
    assert slow.times[-1] == pytest.approx(12.0)
    speeds = np.linalg.norm(np.diff(slow(np.linspace(10, 12, 41))[:, :3], axis=0), axis=1) / 0.05
    assert speeds.max() <= 0.25 + 1e-9


def test_newer_chunk_replaces_the_tail_of_an_older_one():
    traj = PoseTrajectoryInterpolator([0.0], [P0])
    last = 0.0
    for i in range(1, 5):  # chunk 1: +1 cm every 0.1 s
        traj = traj.schedule_waypoint(P0 + [0.01 * i, 0, 0, 0, 0, 0], 0.1 * i, 1.0, 1.0, 0.0, last)
        last = 0.1 * i
    # at t=0.15 a new chunk says y instead: knots after 0.2 (its first time) are replaced
    traj = traj.schedule_waypoint(P0 + [0.02, 0.05, 0, 0, 0, 0], 0.3, 1.0, 1.0, 0.15, last)
    assert traj.times[-1] == pytest.approx(0.3)
    np.testing.assert_allclose(traj(0.3)[:2], [0.42, 0.05])
    np.testing.assert_allclose(traj(0.15)[0], 0.415)  # no jump at the hand-over


def test_safety_box_clips_positions_only():
    box = SafetyBox([0.2, -0.3, 0.1], [0.6, 0.3, 0.5])
    pose = np.array([0.9, -1.0, 0.3, 0.1, 0.2, 0.3])
    clipped = box.clip(pose)
    np.testing.assert_allclose(clipped, [0.6, -0.3, 0.3, 0.1, 0.2, 0.3])
    assert box.contains(clipped)
    assert not box.contains(pose)
    with pytest.raises(ValueError):
        SafetyBox([1, 0, 0], [0, 1, 1])


def test_grid_indices_repeat_late_samples_and_drop_early_ones():
    # grid ticks at 0, 0.1, 0.2, ...; samples at 0.0, 0.05 (same tick: dropped), 0.32 (fills 1..3)
    idx, ticks, nxt = grid_indices([0.0, 0.05, 0.32], start_time=0.0, dt=0.1)
    assert list(ticks) == [0, 1, 2, 3]
    assert list(idx) == [0, 2, 2, 2]
    assert nxt == 4
    idx, ticks, nxt = grid_indices([0.35, 0.41], 0.0, 0.1, next_index=nxt)
    assert list(ticks) == [4]
    assert list(idx) == [1]
    assert nxt == 5


def test_align_indices_takes_latest_at_or_before():
    samples = np.array([0.0, 0.1, 0.2, 0.3])
    assert list(align_indices(samples, [0.05, 0.2, 0.35, -1.0])) == [0, 2, 3, 0]


def test_loop_stats_detect_overruns():
    stats = LoopStats(dt=0.01)
    stats.begin()
    assert not stats.end(deadline=time.monotonic() + 1.0)
    stats.begin()
    time.sleep(0.02)
    assert stats.end(deadline=time.monotonic() - 0.001)
    stats.begin()
    time.sleep(0.015)
    assert stats.end()  # no deadline: compared with dt
    summary = stats.summary(wall_time=0.05, steps=5)
    assert summary["overruns"] == 2
    assert summary["iterations"] == 3
    assert summary["worst_work_s"] >= 0.02
    assert summary["achieved_hz"] == pytest.approx(100.0)
    t0 = time.monotonic()
    precise_wait(t0 + 0.02)
    assert 0.02 <= time.monotonic() - t0 < 0.2
