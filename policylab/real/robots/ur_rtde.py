"""A Universal Robots arm over RTDE (ur_rtde), with the interpolation controller in its own process.

The child process runs a fixed-rate servo loop (125 Hz on CB3, up to 500 Hz on e-Series): it
evaluates the pose trajectory at the current time, clips it into the safety box and sends
`servoL`, then publishes the robot state to a shared ring buffer and applies queued commands.
A separate process keeps the loop on time while the parent runs cameras, inference or a GUI.

Every failure mode ends in a `RobotFault` raised by the parent's next `get_state` or
`schedule_waypoint`: the child checks the connection, the protective-stop bit and that the
controller's clock advances; the parent checks the child's heartbeat and kills a hung child.
"""

from __future__ import annotations

import time

import numpy as np

from policylab.common.extras import require
from policylab.real.device import DeviceProcess
from policylab.real.robots.base import Robot, RobotFault
from policylab.real.robots.interpolator import PoseTrajectoryInterpolator, SafetyBox
from policylab.real.shared_memory import SharedQueue, SharedRingBuffer
from policylab.real.timing import wall_to_monotonic

# our state key -> (RTDE output variable, ur_rtde getter)
STATE_KEYS = {
    "robot_eef_pose": ("actual_TCP_pose", "getActualTCPPose"),
    "robot_eef_pose_vel": ("actual_TCP_speed", "getActualTCPSpeed"),
    "robot_joint": ("actual_q", "getActualQ"),
    "robot_joint_vel": ("actual_qd", "getActualQd"),
    "robot_target_eef_pose": ("target_TCP_pose", "getTargetTCPPose"),
    "robot_target_joint": ("target_q", "getTargetQ"),
}
_SERVO, _SCHEDULE = 1, 2


class URRTDERobot(DeviceProcess, Robot):
    """UR5 / UR5e / any UR over RTDE.

    Args:
        host: controller address (a real robot, or a fake controller's 127.x.y.z).
        frequency: servo loop rate (Hz): 125 for CB3, 500 for e-Series.
        state_keys: which of STATE_KEYS to publish (each (6,)).
        max_pos_speed / max_rot_speed: trajectory speed limits (m/s, rad/s).
        safety_box: {low: [x, y, z], high: [x, y, z]} (m); every servo target is clipped into it.
        servo_lookahead_time (s, 0.03-0.2) and servo_gain (100-2000): servoL smoothing.
        tcp_offset: [x, y, z, rx, ry, rz] set on the controller at start, or null.
        payload_mass (kg) / payload_cog (m): set at start when mass is given.
        joints_init: joint angles (rad) to moveJ to at start, or null; joints_init_speed (rad/s).
        launch_timeout: seconds to connect (ur_rtde itself never times out on a silent peer).
        stale_timeout: fault when the controller's timestamp stops advancing this long (s).
        get_time_budget / max_k: ring buffer sizing, see SharedRingBuffer.
    """

    def __init__(self, host: str, frequency: float = 125.0, state_keys=("robot_eef_pose", "robot_joint"),
                 max_pos_speed: float = 0.25, max_rot_speed: float = 0.6, safety_box=None,
                 servo_lookahead_time: float = 0.1, servo_gain: float = 300.0, tcp_offset=None,
                 payload_mass: float | None = None, payload_cog=None, joints_init=None,
                 joints_init_speed: float = 1.05, launch_timeout: float = 10.0, stale_timeout: float = 0.5,
                 heartbeat_timeout: float = 1.0, get_time_budget: float = 0.2, max_k: int = 128):
        super().__init__(f"robot {host}", launch_timeout=launch_timeout, heartbeat_timeout=heartbeat_timeout)
        unknown = set(state_keys) - set(STATE_KEYS)
        if unknown:
            raise ValueError(f"unknown robot state keys {sorted(unknown)}; choose from {sorted(STATE_KEYS)}")
        self.host, self.frequency = host, float(frequency)
        self.state_keys = tuple(state_keys)
        self.max_pos_speed, self.max_rot_speed = max_pos_speed, max_rot_speed
        box = safety_box or {"low": [-np.inf] * 3, "high": [np.inf] * 3}
        self.safety_box = SafetyBox(box["low"], box["high"])
        self.lookahead, self.gain = servo_lookahead_time, servo_gain
        self.tcp_offset, self.payload_mass, self.payload_cog = tcp_offset, payload_mass, payload_cog
        self.joints_init, self.joints_init_speed = joints_init, joints_init_speed
        self.stale_timeout = stale_timeout
        example = {key: np.zeros(6) for key in self.state_keys}
        example.update(timestamp=0.0, robot_timestamp=0.0, commanded_pose=np.zeros(6))
        self.ring = SharedRingBuffer(example, put_frequency=self.frequency, get_time_budget=get_time_budget,
                                     max_k=max_k)
        self.commands = SharedQueue({"cmd": 0, "pose": np.zeros(6), "target_time": 0.0, "duration": 0.0})
        self._buffers += [self.ring, self.commands]

    def get_state(self, k: int | None = None) -> dict[str, np.ndarray]:
        self.check()
        return self.ring.get() if k is None else self.ring.get_last_k(k)

    def get_all_state(self) -> dict[str, np.ndarray]:
        self.check()
        return self.ring.get_all()

    def schedule_waypoint(self, pose, target_time: float) -> None:
        self.check()
        self.commands.put({"cmd": _SCHEDULE, "pose": _pose(pose), "target_time": float(target_time)})

    def servo_to(self, pose, duration: float) -> None:
        self.check()
        self.commands.put({"cmd": _SERVO, "pose": _pose(pose), "duration": float(duration)})

    def check(self) -> None:
        try:
            super().check()
        except RobotFault:
            raise
        except Exception as err:  # noqa: BLE001  (any device failure is a robot fault to the caller)
            raise RobotFault(str(err)) from None


    def startup_hint(self) -> str:
        return (f"no RTDE handshake from {self.host}: is the controller on, the address right, and "
                "'Remote Control' enabled on the pendant?")

    def run_device(self) -> None:
        require("rtde_control", "rtde_receive", extra="real")
        import rtde_control
        import rtde_receive

        rtde_c = rtde_control.RTDEControlInterface(self.host, self.frequency)
        rtde_r = rtde_receive.RTDEReceiveInterface(self.host, self.frequency,
                                                   [STATE_KEYS[k][0] for k in self.state_keys] +
                                                   ["timestamp", "safety_status_bits", "runtime_state"])
        clean_exit = False
        try:
            self._setup(rtde_c)
            try:
                self._servo_loop(rtde_c, rtde_r)
            except RobotFault:
                raise
            except RuntimeError as err:  # ur_rtde's socket errors ("End of file", ...) when the peer goes
                if rtde_r.isConnected() and rtde_c.isConnected():
                    raise
                raise RobotFault(f"lost the RTDE connection to {self.host} ({err})") from None
            clean_exit = True
        finally:
            if clean_exit:  # on a fault these calls could block on a dead peer: just exit
                rtde_c.servoStop()
                rtde_c.stopScript()
            # No disconnect(): each one sleeps 0.5 s; the process exit closes the sockets anyway.

    def _setup(self, rtde_c) -> None:
        if self.tcp_offset is not None:
            rtde_c.setTcp(list(self.tcp_offset))
        if self.payload_mass is not None:
            rtde_c.setPayload(self.payload_mass, list(self.payload_cog or [0.0, 0.0, 0.0]))
        if self.joints_init is not None and not rtde_c.moveJ(list(self.joints_init), self.joints_init_speed, 1.4):
            raise RobotFault("moveJ to joints_init was refused (protective stop or script not running)")

    def _servo_loop(self, rtde_c, rtde_r) -> None:
        dt = 1.0 / self.frequency
        now = time.monotonic()
        traj = PoseTrajectoryInterpolator([now], [self.safety_box.clip(np.array(rtde_r.getActualTCPPose()))])
        last_waypoint_time = now
        last_robot_ts, t_robot_ts = rtde_r.getTimestamp(), now
        getters = {key: getattr(rtde_r, STATE_KEYS[key][1]) for key in self.state_keys}
        while not self.should_stop():
            t_start = rtde_c.initPeriod()
            now = time.monotonic()
            robot_ts = rtde_r.getTimestamp()
            if robot_ts != last_robot_ts:
                last_robot_ts, t_robot_ts = robot_ts, now
            self._check_controller(rtde_c, rtde_r, now - t_robot_ts)
            pose = self.safety_box.clip(traj(now))
            if not rtde_c.servoL(pose.tolist(), 0.5, 0.5, dt, self.lookahead, self.gain):
                raise RobotFault("servoL refused: the control script is not running on the controller")
            record = {key: np.asarray(get()) for key, get in getters.items()}
            record.update(timestamp=time.time(), robot_timestamp=robot_ts, commanded_pose=pose)
            self.ring.put(record)
            traj, last_waypoint_time = self._apply_commands(traj, last_waypoint_time)
            if self.state != 1:
                self.set_ready()
            self.beat()
            rtde_c.waitPeriod(t_start)

    def _check_controller(self, rtde_c, rtde_r, silent_for: float) -> None:
        if not (rtde_r.isConnected() and rtde_c.isConnected()):
            raise RobotFault(f"lost the RTDE connection to {self.host}")
        if rtde_r.isProtectiveStopped():
            raise RobotFault(f"protective stop on {self.host}: the robot stopped itself; find the cause, "
                             "then clear it on the pendant before restarting")
        if silent_for > self.stale_timeout:
            raise RobotFault(f"controller {self.host} silent: its RTDE timestamp has not advanced for "
                             f"{silent_for:.2f} s (stale_timeout {self.stale_timeout} s)")

    def _apply_commands(self, traj, last_waypoint_time):
        cmds = self.commands.get_all()
        for cmd, pose, target_time, duration in zip(cmds["cmd"], cmds["pose"], cmds["target_time"],
                                                    cmds["duration"]):
            now = time.monotonic()
            pose = self.safety_box.clip(pose)
            if cmd == _SERVO:
                traj = traj.drive_to_waypoint(pose, now + duration, now, self.max_pos_speed, self.max_rot_speed)
                last_waypoint_time = now + duration
            elif cmd == _SCHEDULE:
                t = wall_to_monotonic(float(target_time))
                traj = traj.schedule_waypoint(pose, t, self.max_pos_speed, self.max_rot_speed, now,
                                              last_waypoint_time)
                last_waypoint_time = max(last_waypoint_time, t)
        return traj, last_waypoint_time


def _pose(pose) -> np.ndarray:
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape != (6,) or not np.all(np.isfinite(pose)):
        raise ValueError(f"pose must be 6 finite numbers [x, y, z, rx, ry, rz], got {pose}")
    return pose
