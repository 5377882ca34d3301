"""A fake UR controller: the RTDE (30004), script (30003/30002) and dashboard (29999) servers.

The real `ur_rtde` clients connect to it unmodified. It runs in its own process because
ur_rtde's constructors hold the GIL: a server thread in the client's process would deadlock.

What it models: the RTDE handshake and data streams (types by variable name), ur_rtde's control
script as a register state machine (ready=1 / done=2 on output_int_register_0), and first-order
tracking of the last servoL / moveL target (time constant `tau`). What it does not: UR servo
filtering (lookahead, gain), speed scaling, joint limits; tests on hardware cover those.

Faults (`inject`): "silent" (accept TCP, never answer), "disconnect" (drop every connection and
refuse new ones), "protective_stop" (safety_status_bits bit 2, robot stops), "none".

Every command the robot receives is appended to a JSON-lines log that tests read back.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np

from policylab.real.shared_memory._block import SharedArrays

FAULTS = ("none", "silent", "disconnect", "protective_stop")
RTDE_PORT, DASHBOARD_PORT, SCRIPT_PORTS = 30004, 29999, (30003, 30002)
REALTIME_CMDS = {6: "FORCE_MODE", 9: "SPEEDJ", 10: "SPEEDL", 11: "SERVOJ", 12: "SERVOC", 24: "SERVOL"}
CMD_NAMES = {0: "NO_CMD", 1: "MOVEJ", 3: "MOVEL", 16: "SERVO_STOP", 17: "SET_PAYLOAD", 29: "SET_TCP",
             31: "PROTECTIVE_STOP", 255: "STOP_SCRIPT", **REALTIME_CMDS}
PROGRAM_RUNNING_BIT, POWER_ON_BIT = 1 << 1, 1 << 0
PROTECTIVE_STOP_BIT = 1 << 2

_VEC6 = {"actual_q", "target_q", "actual_qd", "target_qd", "target_qdd", "target_current", "target_moment",
         "actual_current", "joint_control_output", "actual_TCP_pose", "actual_TCP_speed", "actual_TCP_force",
         "target_TCP_pose", "target_TCP_speed", "joint_temperatures", "actual_joint_voltage",
         "actual_current_window", "actual_current_as_torque", "ft_raw_wrench", "payload_inertia",
         "target_q_dot", "actual_momentum_6d"}
_FORMATS = {"VECTOR6D": ">6d", "VECTOR3D": ">3d", "VECTOR6INT32": ">6i", "DOUBLE": ">d", "UINT64": ">Q",
            "UINT32": ">I", "INT32": ">i", "BOOL": ">?", "UINT8": ">B"}


def rtde_type(name: str) -> str:
    """The RTDE type UR's controller gives a variable (the guide's table, by name)."""
    if name in _VEC6:
        return "VECTOR6D"
    if name in ("actual_tool_accelerometer", "payload_cog", "elbow_position", "elbow_velocity"):
        return "VECTOR3D"
    if name == "joint_mode":
        return "VECTOR6INT32"
    if name.endswith("_bits") and "digital" in name:
        return "UINT64"
    if name in ("robot_status_bits", "safety_status_bits", "runtime_state", "output_bit_registers0_to_31",
                "output_bit_registers32_to_63") or name.startswith("input_bit_register"):
        return "UINT32"
    if name in ("robot_mode", "safety_mode", "tool_mode", "tool_output_mode") or "int_register" in name:
        return "INT32"
    return "DOUBLE"


class _State:
    """The simulated arm and the control script's registers; guarded by one lock."""

    def __init__(self, pose, q, tau: float):
        self.lock = threading.Lock()
        self.pose = np.array(pose, dtype=np.float64)
        self.target = self.pose.copy()
        self.speed = np.zeros(6)
        self.q = np.array(q, dtype=np.float64)
        self.q_target = self.q.copy()
        self.qd = np.zeros(6)
        self.tau = tau
        self.t0 = time.monotonic()
        self.program_running = False
        self.script_state = 0
        self.safety_bits = 1  # normal mode
        self.regs: dict[str, float] = {}

    def step(self, dt: float) -> None:
        if self.safety_bits & PROTECTIVE_STOP_BIT:
            self.target = self.pose.copy()  # a stopped robot holds position
        alpha = 1.0 - math.exp(-dt / self.tau)
        new = self.pose + alpha * (self.target - self.pose)
        self.speed = (new - self.pose) / dt
        self.pose = new
        new_q = self.q + alpha * (self.q_target - self.q)
        self.qd = (new_q - self.q) / dt
        self.q = new_q

    def value(self, name: str):
        if name == "timestamp":
            return time.monotonic() - self.t0
        if name in ("actual_TCP_pose",):
            return self.pose
        if name == "target_TCP_pose":
            return self.target
        if name in ("actual_TCP_speed", "target_TCP_speed"):
            return self.speed
        if name in ("actual_q", "target_q"):
            return self.q
        if name in ("actual_qd", "target_qd"):
            return self.qd
        if name == "robot_status_bits":
            return POWER_ON_BIT | (PROGRAM_RUNNING_BIT if self.program_running else 0)
        if name == "safety_status_bits":
            return self.safety_bits
        if name == "runtime_state":
            return 2 if self.program_running else 1  # PLAYING / STOPPED
        if name == "robot_mode":
            return 7  # RUNNING
        if name == "safety_mode":
            return 3 if self.safety_bits & PROTECTIVE_STOP_BIT else 1
        if name == "speed_scaling" or name == "target_speed_fraction":
            return 1.0
        if name.startswith("output_int_register_"):
            return self.script_state if name.endswith(f"_{self.reg_offset}") else 0
        if name in self.regs:
            return self.regs[name]
        kind = rtde_type(name)
        return np.zeros(6, np.int64) if kind == "VECTOR6INT32" else np.zeros(3) if kind == "VECTOR3D" \
            else np.zeros(6) if kind == "VECTOR6D" else 0

    reg_offset = 0


class FakeURController:
    """Serves RTDE, script and dashboard ports on `host` (a 127.x.y.z address of its own).

    Args:
        host: loopback address to bind; give each test its own so ports never collide.
        version: controller version (major, minor); major <= 3 is a CB3 (125 Hz), else 500 Hz.
        init_pose: TCP pose [x, y, z, rx, ry, rz] (m, rad axis-angle); init_q: joints (rad).
        tau: time constant of the first-order tracking (s).
        log_path: JSON-lines file of received commands (default: none kept).
        fault: fault active from the start (see FAULTS).
    """

    def __init__(self, host: str = "127.0.0.2", version=(3, 15), init_pose=(0.4, 0.0, 0.3, 0.0, math.pi, 0.0),
                 init_q=(0.0, -1.57, -1.57, -1.57, 1.57, 0.0), tau: float = 0.03, log_path=None,
                 fault: str = "none", sim_rate: float = 250.0, launch_timeout: float = 5.0):
        if not host.startswith("127."):
            raise ValueError(f"the fake controller binds loopback addresses only, got {host}")
        self.host, self.version = host, tuple(version)
        self.init_pose, self.init_q, self.tau, self.sim_rate = init_pose, init_q, tau, sim_rate
        self.log_path = Path(log_path) if log_path else None
        self.launch_timeout = launch_timeout
        self._shared = SharedArrays({"fault": ((1,), np.int64), "ready": ((1,), np.int64)})
        self._shared["fault"][0] = FAULTS.index(fault)
        self._proc = None

    def start(self) -> FakeURController:
        ctx = mp.get_context("fork")
        self._proc = ctx.Process(target=self._serve, name=f"fake-ur-{self.host}", daemon=True)
        self._proc.start()
        deadline = time.monotonic() + self.launch_timeout
        while not self._shared["ready"][0]:
            if not self._proc.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fake UR controller on {self.host} did not start (ports in use?)")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.join(2.0)
            if self._proc.is_alive():
                self._proc.kill()
            self._proc = None
            self._shared.close()

    def inject(self, fault: str) -> None:
        self._shared["fault"][0] = FAULTS.index(fault)

    @property
    def is_ready(self) -> bool:
        return self._proc is not None and self._proc.is_alive() and bool(self._shared["ready"][0])

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def commands(self, name: str | None = None) -> list[dict]:
        """Logged commands `{"t": wall time, "cmd": name, "args": [...]}`, optionally one kind."""
        if self.log_path is None or not self.log_path.exists():
            return []
        rows = [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]
        return [r for r in rows if name is None or r["cmd"] == name]

    @property
    def _fault(self) -> str:
        return FAULTS[int(self._shared["fault"][0])]

    def _serve(self) -> None:
        self.state = _State(self.init_pose, self.init_q, self.tau)
        # open for the life of the process, line-buffered so tests can read it while it runs
        self._log_file = open(self.log_path, "a", buffering=1) if self.log_path else None  # noqa: SIM115
        self._conns: list[socket.socket] = []
        listeners = [self._listen(port, handler) for port, handler in
                     [(RTDE_PORT, self._rtde), (DASHBOARD_PORT, self._dashboard)] +
                     [(p, self._script) for p in SCRIPT_PORTS]]
        threading.Thread(target=self._simulate, daemon=True).start()
        self._shared["ready"][0] = 1
        for t in listeners:
            t.join()

    def _listen(self, port: int, handler) -> threading.Thread:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.host, port))
        server.listen(8)

        def accept_loop():
            while True:
                conn, _ = server.accept()
                if self._fault == "disconnect":
                    conn.close()
                    continue
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._conns.append(conn)
                threading.Thread(target=self._guard, args=(handler, conn), daemon=True).start()

        thread = threading.Thread(target=accept_loop, daemon=True)
        thread.start()
        return thread

    def _guard(self, handler, conn: socket.socket) -> None:
        try:
            handler(conn)
        except (OSError, ConnectionError, struct.error):
            pass
        finally:
            conn.close()

    def _log(self, cmd: str, args=()) -> None:
        if self._log_file:
            self._log_file.write(json.dumps({"t": time.time(), "cmd": cmd, "args": [float(a) for a in args]}) + "\n")

    def _simulate(self) -> None:
        dt = 1.0 / self.sim_rate
        while True:
            with self.state.lock:
                if self._fault == "protective_stop" and not self.state.safety_bits & PROTECTIVE_STOP_BIT:
                    self.state.safety_bits = PROTECTIVE_STOP_BIT
                    self._log("PROTECTIVE_STOPPED")
                self.state.step(dt)
            if self._fault == "disconnect":
                for conn in list(self._conns):
                    try:
                        conn.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    conn.close()
                self._conns.clear()
            time.sleep(dt)

    def _wait_while_silent(self) -> None:
        while self._fault == "silent":
            time.sleep(0.05)

    def _rtde(self, conn: socket.socket) -> None:
        inputs: dict[int, list[str]] = {}
        outputs: list[str] = []
        stream: threading.Thread | None = None
        streaming = threading.Event()
        reader = conn.makefile("rb")
        while True:
            self._wait_while_silent()
            header = reader.read(3)
            if len(header) < 3:
                return
            size, cmd = struct.unpack(">HB", header)
            payload = reader.read(size - 3)
            self._wait_while_silent()
            kind = chr(cmd)
            if kind == "V":
                self._send(conn, "V", b"\x01")
            elif kind == "v":
                self._send(conn, "v", struct.pack(">IIII", *self.version, 0, 0))
            elif kind == "O":
                (freq,) = struct.unpack(">d", payload[:8])
                outputs = [n for n in payload[8:].decode().split(",") if n]
                self._send(conn, "O", b"\x01" + ",".join(rtde_type(n) for n in outputs).encode())
                period = 1.0 / freq if freq > 0 else (0.008 if self.version[0] <= 3 else 0.002)
                offsets = [int(n.rsplit("_", 1)[1]) for n in outputs if n.startswith("output_int_register_")]
                self.state.reg_offset = min(offsets, default=0)
            elif kind == "I":
                names = [n for n in payload.decode().split(",") if n]
                recipe = len(inputs) + 1
                inputs[recipe] = names
                self._send(conn, "I", bytes([recipe]) + ",".join(rtde_type(n) for n in names).encode())
            elif kind == "S":
                self._send(conn, "S", b"\x01")
                streaming.set()
                if stream is None and outputs:
                    stream = threading.Thread(target=self._stream, args=(conn, outputs, period, streaming),
                                              daemon=True)
                    stream.start()
            elif kind == "P":
                streaming.clear()
                self._send(conn, "P", b"\x01")
            elif kind == "U":
                self._on_input(inputs.get(payload[0], []), payload[1:])

    def _send(self, conn: socket.socket, kind: str, payload: bytes) -> None:
        conn.sendall(struct.pack(">HB", len(payload) + 3, ord(kind)) + payload)

    def _stream(self, conn: socket.socket, names: list[str], period: float, streaming: threading.Event) -> None:
        formats = [_FORMATS[rtde_type(n)] for n in names]
        t_next = time.monotonic()
        try:
            while True:
                self._wait_while_silent()
                if streaming.is_set():
                    with self.state.lock:
                        values = [self.state.value(n) for n in names]
                    body = b"\x01" + b"".join(struct.pack(f, *np.atleast_1d(v).tolist())
                                              for f, v in zip(formats, values))
                    self._send(conn, "U", body)
                t_next += period
                time.sleep(max(0.0, t_next - time.monotonic()))
        except OSError:
            return

    def _on_input(self, names: list[str], body: bytes) -> None:
        values, offset = {}, 0
        for name in names:
            fmt = _FORMATS[rtde_type(name)]
            n = struct.calcsize(fmt)
            if offset + n > len(body):
                break
            values[name] = struct.unpack(fmt, body[offset:offset + n])[0]
            offset += n
        with self.state.lock:
            self.state.regs.update(values)
            cmd_key = f"input_int_register_{self.state.reg_offset}"
            if cmd_key in values:
                doubles = [v for k, v in values.items() if "double_register" in k]
                self._execute(int(values[cmd_key]), doubles)

    def _execute(self, cmd: int, args: list[float]) -> None:
        """The control script: act on one command, then report ready (1) or done (2)."""
        s = self.state
        if not s.program_running:
            return
        name = CMD_NAMES.get(cmd, f"CMD_{cmd}")
        if cmd != 0:
            self._log(name, args)
        stopped = bool(s.safety_bits & PROTECTIVE_STOP_BIT)
        if cmd == 0:
            s.script_state = 1
        elif cmd in (24, 3) and not stopped:  # SERVOL, MOVEL: pose target
            s.target = np.array(args[:6])
        elif cmd == 1 and not stopped:  # MOVEJ
            s.q_target = np.array(args[:6])
        elif cmd == 16:  # SERVO_STOP
            s.target = s.pose.copy()
        elif cmd == 255:  # STOP_SCRIPT
            s.program_running, s.script_state = False, 0
            return
        if cmd not in REALTIME_CMDS and cmd != 0:
            s.script_state = 2

    def _script(self, conn: socket.socket) -> None:
        received = 0
        conn.settimeout(0.05)
        while True:
            self._wait_while_silent()
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                if received:
                    self._log("SCRIPT", [received])
                    with self.state.lock:
                        self.state.program_running, self.state.script_state = True, 1
                    received = 0
                continue
            if not chunk:
                return
            received += len(chunk)

    def _dashboard(self, conn: socket.socket) -> None:
        self._wait_while_silent()
        conn.sendall(b"Connected: Universal Robots Dashboard Server\n")
        reader = conn.makefile("rb")
        for raw in reader:
            self._wait_while_silent()
            line = raw.decode().strip()
            self._log("DASHBOARD", [])
            conn.sendall((self._dashboard_reply(line) + "\n").encode())

    def _dashboard_reply(self, line: str) -> str:
        s = self.state
        with s.lock:
            if line == "PolyscopeVersion":
                return f"URSoftware {self.version[0]}.{self.version[1]}.0.0 (fake)"
            if line == "running":
                return f"Program running: {str(s.program_running).lower()}"
            if line == "is in remote control":
                return "true"
            if line == "get serial number":
                return "20250000000"
            if line == "robotmode":
                return "Robotmode: RUNNING"
            if line == "safetystatus" or line == "safetymode":
                stopped = s.safety_bits & PROTECTIVE_STOP_BIT
                return f"Safetystatus: {'PROTECTIVE_STOP' if stopped else 'NORMAL'}"
            if line == "unlock protective stop":
                s.safety_bits = 1
                return "Protective stop releasing"
            if line == "stop":
                s.program_running = False
                return "Stopped"
            if line == "programState":
                return "PLAYING" if s.program_running else "STOPPED"
        return "OK"


def free_loopback_host(seed: int | None = None) -> str:
    """A 127.x.y.z address whose RTDE port is free right now (one per test, no collisions)."""
    rng = np.random.default_rng(seed if seed is not None else os.getpid() ^ time.monotonic_ns())
    for _ in range(64):
        host = f"127.{rng.integers(1, 255)}.{rng.integers(0, 255)}.{rng.integers(2, 254)}"
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind((host, RTDE_PORT))
            return host
        except OSError:
            continue
        finally:
            probe.close()
    raise RuntimeError("no free 127.x.y.z address with port 30004 available")
