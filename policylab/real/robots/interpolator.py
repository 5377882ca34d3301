"""Piecewise-linear pose trajectories with speed limits: what the servo loop follows.

Poses are (6,) `[x, y, z, rx, ry, rz]`: position in m, rotation as an axis-angle vector in rad.
Position is interpolated linearly and rotation by slerp between knots; outside the knots the
trajectory holds its end poses. Timed waypoints (action chunks) are merged by
`schedule_waypoint`, so a newer chunk replaces the tail of an older one without a jump.
"""

from __future__ import annotations

import numpy as np

from policylab.common.extras import require

_transform = require("scipy.spatial.transform", extra="real")
Rotation, Slerp = _transform.Rotation, _transform.Slerp


def pose_distance(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(position distance in m, rotation angle in rad) between two (6,) poses."""
    pos = float(np.linalg.norm(a[:3] - b[:3]))
    rot = (Rotation.from_rotvec(b[3:]) * Rotation.from_rotvec(a[3:]).inv()).magnitude()
    return pos, float(rot)


class PoseTrajectoryInterpolator:
    """A trajectory through knots `times: (N,)` (s, increasing) and `poses: (N, 6)`."""

    def __init__(self, times, poses):
        times, poses = np.asarray(times, np.float64), np.asarray(poses, np.float64).reshape(-1, 6)
        if len(times) != len(poses) or len(times) == 0:
            raise ValueError(f"need as many times as poses (>= 1), got {len(times)} and {len(poses)}")
        if np.any(np.diff(times) <= 0):
            raise ValueError(f"knot times must increase strictly, got {times}")
        self.times, self.poses = times, poses
        if len(times) > 1:
            self._slerp = Slerp(times, Rotation.from_rotvec(poses[:, 3:]))

    def __call__(self, t):
        """Pose at time(s) t: (6,) for a scalar, (M, 6) for (M,) times."""
        scalar = np.ndim(t) == 0
        t = np.clip(np.atleast_1d(np.asarray(t, np.float64)), self.times[0], self.times[-1])
        if len(self.times) == 1:
            out = np.repeat(self.poses, len(t), axis=0)
        else:
            pos = np.stack([np.interp(t, self.times, self.poses[:, i]) for i in range(3)], axis=-1)
            out = np.concatenate([pos, self._slerp(t).as_rotvec()], axis=-1)
        return out[0] if scalar else out

    def trim(self, start: float, end: float) -> PoseTrajectoryInterpolator:
        """The same path restricted to [start, end]: knots inside plus the two end poses."""
        inner = self.times[(self.times > start) & (self.times < end)]
        times = np.unique(np.concatenate([[start], inner, [end]]))
        return PoseTrajectoryInterpolator(times, self(times))

    def drive_to_waypoint(self, pose, time: float, curr_time: float, max_pos_speed: float,
                          max_rot_speed: float) -> PoseTrajectoryInterpolator:
        """Drop the plan after `curr_time` and go to `pose`, no sooner than the speed limits allow."""
        start = self.trim(curr_time, curr_time)
        here = start(curr_time)
        duration = max(time - curr_time, _min_duration(here, pose, max_pos_speed, max_rot_speed))
        return PoseTrajectoryInterpolator([curr_time, curr_time + duration], [here, np.asarray(pose)])

    def schedule_waypoint(self, pose, time: float, max_pos_speed: float, max_rot_speed: float,
                          curr_time: float, last_waypoint_time: float | None = None
                          ) -> PoseTrajectoryInterpolator:
        """Add `pose` at `time`, keeping the plan up to `min(time, last_waypoint_time)`.

        A waypoint at or before `curr_time` is ignored (it is late). Knots the previous schedule
        placed after the new time are replaced, so overlapping action chunks hand over cleanly.
        When the speed limits make `time` unreachable, the waypoint arrives later than asked.
        """
        if time <= curr_time:
            return self
        keep_until = curr_time if last_waypoint_time is None or time <= last_waypoint_time \
            else max(last_waypoint_time, curr_time)
        keep_until = min(keep_until, time)
        start = min(max(curr_time, self.times[0]), keep_until)
        kept = self.trim(start, keep_until)
        end_pose = kept(keep_until)
        duration = max(time - keep_until, _min_duration(end_pose, pose, max_pos_speed, max_rot_speed), 1e-6)
        times = np.append(kept.times, keep_until + duration)
        poses = np.vstack([kept.poses, np.asarray(pose, np.float64)])
        return PoseTrajectoryInterpolator(times, poses)


def _min_duration(a, b, max_pos_speed: float, max_rot_speed: float) -> float:
    pos, rot = pose_distance(np.asarray(a), np.asarray(b))
    return max(pos / max_pos_speed, rot / max_rot_speed)


class SafetyBox:
    """An axis-aligned box (m) that every commanded TCP position is clipped into.

    The last guard before a command leaves the computer: it applies to teleop, policies and
    scripted moves alike. Orientation is not limited here; set joint limits on the controller.
    """

    def __init__(self, low, high):
        self.low, self.high = np.asarray(low, np.float64), np.asarray(high, np.float64)
        if self.low.shape != (3,) or self.high.shape != (3,) or np.any(self.low > self.high):
            raise ValueError(f"safety box needs low <= high, each [x, y, z]; got {low}, {high}")

    def clip(self, pose: np.ndarray) -> np.ndarray:
        """(..., 6) -> (..., 6) with xyz inside the box."""
        out = np.array(pose, np.float64)
        out[..., :3] = np.clip(out[..., :3], self.low, self.high)
        return out

    def contains(self, pose: np.ndarray, tol: float = 1e-9) -> bool:
        xyz = np.asarray(pose)[..., :3]
        return bool(np.all(xyz >= self.low - tol) and np.all(xyz <= self.high + tol))
