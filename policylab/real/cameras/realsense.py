"""An Intel RealSense camera (pyrealsense2) in its own process, live by serial or from a recording.

One process per camera: decoding, aligning depth to colour, resizing and H.264 encoding take a
core-sized bite each frame and must not stall the control loop. Colour is requested as bgr8 and
published as RGB; depth (z16) is aligned to colour. Playback devices have no sensor options, so
options the device does not support are skipped with a log line, never an error.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from policylab.common.extras import require
from policylab.real.cameras.base import Camera
from policylab.real.cameras.video import GridVideoWriter
from policylab.real.device import DeviceError, DeviceProcess
from policylab.real.shared_memory import SharedQueue, SharedRingBuffer
from policylab.real.shared_memory._block import SharedArrays

log = logging.getLogger(__name__)

_START_REC, _STOP_REC, _EXPOSURE, _WHITE_BALANCE = 1, 2, 3, 4
_INTR_KEYS = ("fx", "fy", "ppx", "ppy", "width", "height", "depth_scale")


def connected_serials() -> list[str]:
    """Serial numbers of the RealSense devices on USB, sorted (instant; no pipeline start)."""
    rs = require("pyrealsense2", extra="real")

    return sorted(d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices())


class RealSenseCamera(DeviceProcess, Camera):
    """Args:
        serial: device serial number; None takes the first connected device.
        recording: a `.db3` / `.bag` file to play back instead of a device.
        resolution: [W, H] captured (px); fps: capture rate (Hz).
        obs_resolution: [W, H] of published frames (px), default the captured size.
        enable_depth: also publish depth (uint16, aligned to colour).
        exposure (us) / gain / white_balance (K): manual settings, null for auto.
        repeat_playback / real_time: playback controls (loop the file; pace at recorded speed).
        get_time_budget / max_k: ring buffer sizing, see SharedRingBuffer.
        frame_timeout: fault when no frame arrives for this long (s).
        video_crf: H.264 quality of recordings (lower is better).
    """

    def __init__(self, serial: str | None = None, recording: str | None = None, resolution=(640, 480),
                 fps: int = 30, obs_resolution=None, enable_depth: bool = False, exposure: float | None = None,
                 gain: float | None = None, white_balance: float | None = None, repeat_playback: bool = True,
                 real_time: bool = True, get_time_budget: float = 0.2, max_k: int = 32,
                 frame_timeout: float = 2.0, launch_timeout: float = 10.0, video_crf: int = 22,
                 name: str | None = None):
        name = name or f"camera {serial or Path(recording).name if recording else 'first'}"
        super().__init__(name, launch_timeout=launch_timeout, heartbeat_timeout=frame_timeout + 1.0)
        self.serial, self.recording = serial, str(recording) if recording else None
        self.resolution, self.fps = tuple(int(v) for v in resolution), fps
        self.obs_resolution = tuple(int(v) for v in (obs_resolution or resolution))
        self.enable_depth = enable_depth
        self.exposure, self.gain, self.white_balance = exposure, gain, white_balance
        self.repeat_playback, self.real_time = repeat_playback, real_time
        self.frame_timeout, self.video_crf = frame_timeout, video_crf
        w, h = self.obs_resolution
        example = {"color": np.zeros((h, w, 3), np.uint8), "timestamp": 0.0,
                   "camera_capture_timestamp": 0.0, "step_idx": np.int64(0)}
        if enable_depth:
            example["depth"] = np.zeros((h, w), np.uint16)
        self.ring = SharedRingBuffer(example, put_frequency=fps, get_time_budget=get_time_budget, max_k=max_k)
        self.commands = SharedQueue({"cmd": 0, "path": np.zeros((), "S1024"), "value": np.zeros(2)})
        self._intr = SharedArrays({"values": ((len(_INTR_KEYS),), np.float64)})
        self._buffers += [self.ring, self.commands, self._intr]

    def get(self, k: int | None = None) -> dict[str, np.ndarray]:
        self.check()
        return self.ring.get() if k is None else self.ring.get_last_k(k)

    @property
    def intrinsics(self) -> dict[str, float]:
        return dict(zip(_INTR_KEYS, (float(v) for v in self._intr["values"])))

    def start_recording(self, path: str, start_time: float) -> None:
        self.commands.put({"cmd": _START_REC, "path": str(path).encode(), "value": [start_time, 0.0]})

    def stop_recording(self) -> None:
        self.commands.put({"cmd": _STOP_REC})

    def set_exposure(self, exposure=None, gain=None) -> None:
        self.commands.put({"cmd": _EXPOSURE, "value": [np.nan if exposure is None else exposure,
                                                       np.nan if gain is None else gain]})

    def set_white_balance(self, white_balance=None) -> None:
        self.commands.put({"cmd": _WHITE_BALANCE, "value": [np.nan if white_balance is None else white_balance, 0]})


    def startup_hint(self) -> str:
        return "is the camera on a USB 3 port and not open in another program?"

    def run_device(self) -> None:
        import cv2

        rs = require("pyrealsense2", extra="real")

        cv2.setNumThreads(1)
        pipeline, profile = self._open_pipeline(rs)
        try:
            self._publish_intrinsics(rs, profile)
            self._profile = profile
            if self.exposure is not None or self.gain is not None:  # None leaves the device default
                self._apply_options(rs, profile, self._exposure_settings(rs, self.exposure, self.gain))
            if self.white_balance is not None:
                self._apply_options(rs, profile, self._white_balance_settings(rs, self.white_balance))
            align = rs.align(rs.stream.color) if self.enable_depth else None
            self._capture_loop(cv2, pipeline, align)
        finally:
            pipeline.stop()

    def _open_pipeline(self, rs):
        config = rs.config()
        if self.recording:
            if not Path(self.recording).exists():
                raise DeviceError(f"recording {self.recording} does not exist")
            config.enable_device_from_file(self.recording, repeat_playback=self.repeat_playback)
        else:
            # pipeline.start() with no device blocks for 15 s before failing: check first.
            serials = connected_serials()
            if not serials or (self.serial and self.serial not in serials):
                raise DeviceError(f"RealSense {self.serial or '(any)'} not connected; found {serials or 'none'}")
            config.enable_device(self.serial or serials[0])
        w, h = self.resolution
        config.enable_stream(rs.stream.color, w, h, rs.format.bgr8, self.fps)
        if self.enable_depth:
            config.enable_stream(rs.stream.depth, w, h, rs.format.z16, self.fps)
        pipeline = rs.pipeline()
        profile = pipeline.start(config)
        if self.recording:
            profile.get_device().as_playback().set_real_time(self.real_time)
        return pipeline, profile

    def _publish_intrinsics(self, rs, profile) -> None:
        intr = profile.get_stream(rs.stream.color).as_video_stream_profile().get_intrinsics()
        scale = profile.get_device().first_depth_sensor().get_depth_scale() if self.enable_depth else 0.0
        self._intr["values"][:] = [intr.fx, intr.fy, intr.ppx, intr.ppy, intr.width, intr.height, scale]

    def _apply_options(self, rs, profile, settings) -> None:
        """Set `[(rs.option, value)]` on the colour sensor; unsupported options are logged, not fatal."""
        device = profile.get_device()
        sensors = [s for s in device.query_sensors() if s.is_color_sensor()] or device.query_sensors()
        for option, value in settings:
            supported = [s for s in sensors if s.supports(option)]
            if not supported:
                log.info("%s: option %s not supported by this device (playback?); skipped", self.name, option)
            for sensor in supported:
                sensor.set_option(option, float(value))

    @staticmethod
    def _exposure_settings(rs, exposure, gain) -> list:
        if exposure is None and gain is None:
            return [(rs.option.enable_auto_exposure, 1.0)]
        return [(rs.option.enable_auto_exposure, 0.0)] + \
            [(opt, v) for opt, v in [(rs.option.exposure, exposure), (rs.option.gain, gain)] if v is not None]

    @staticmethod
    def _white_balance_settings(rs, white_balance) -> list:
        if white_balance is None:
            return [(rs.option.enable_auto_white_balance, 1.0)]
        return [(rs.option.enable_auto_white_balance, 0.0), (rs.option.white_balance, white_balance)]

    def _capture_loop(self, cv2, pipeline, align) -> None:
        writer: GridVideoWriter | None = None
        timeout_ms = int(1000 * self.frame_timeout)
        try:
            while not self.should_stop():
                ok, frames = pipeline.try_wait_for_frames(timeout_ms)
                if not ok:
                    raise DeviceError(f"no frame for {self.frame_timeout} s (frame_timeout)")
                receive_time = time.time()
                if align is not None:
                    frames = align.process(frames)
                color_frame = frames.get_color_frame()
                rgb = np.asanyarray(color_frame.get_data())[..., ::-1]
                record = {"color": self._resize(cv2, rgb), "timestamp": receive_time,
                          "camera_capture_timestamp": color_frame.get_timestamp() / 1000.0,
                          "step_idx": color_frame.get_frame_number()}
                if align is not None:
                    depth = np.asanyarray(frames.get_depth_frame().get_data())
                    record["depth"] = self._resize(cv2, depth, cv2.INTER_NEAREST)
                self.ring.put(record)
                if writer is not None:
                    writer.write(np.ascontiguousarray(rgb), receive_time)
                writer = self._handle_commands(writer)
                if self.state != 1:
                    self.set_ready()
                self.beat()
        finally:
            if writer is not None:
                writer.close()

    def _resize(self, cv2, image: np.ndarray, interpolation=None) -> np.ndarray:
        if (image.shape[1], image.shape[0]) == self.obs_resolution:
            return image
        return cv2.resize(image, self.obs_resolution, interpolation=cv2.INTER_AREA if interpolation is None
                          else interpolation)

    def _handle_commands(self, writer):
        import pyrealsense2 as rs

        cmds = self.commands.get_all()
        for cmd, path, value in zip(cmds["cmd"], cmds["path"], cmds["value"]):
            if cmd == _START_REC:
                if writer is not None:
                    writer.close()
                writer = GridVideoWriter(bytes(path).decode(), self.fps, float(value[0]), crf=self.video_crf)
            elif cmd == _STOP_REC and writer is not None:
                writer.close()
                writer = None
            elif cmd in (_EXPOSURE, _WHITE_BALANCE):
                self._apply_options_live(rs, cmd, value)
        return writer

    def _apply_options_live(self, rs, cmd, value) -> None:
        a, b = (None if np.isnan(v) else float(v) for v in value)  # NaN stands for None (auto)
        settings = self._exposure_settings(rs, a, b) if cmd == _EXPOSURE else self._white_balance_settings(rs, a)
        self._apply_options(rs, self._profile, settings)
