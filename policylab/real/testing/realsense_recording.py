"""Synthetic RealSense recordings, written by librealsense's own recorder from a software_device.

Played back through a normal `rs.pipeline`, they exercise the real camera code with no camera.
Each frame encodes who and when in its pixels, so tests can check alignment exactly:

    colour (RGB): R = frame_index % 256, G = frame_index // 256, B = camera_id   (flat image)
    depth:        1000 + frame_index, in depth units of 1 mm

librealsense >= 2.58 records rosbag2 `.db3` only; older versions record ROS1 `.bag`.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import numpy as np

DEPTH_UNITS = 0.001
FX, FY = 300.0, 300.0


def recording_suffix() -> str:
    """The file extension this librealsense records to."""
    import pyrealsense2 as rs

    version = tuple(int(v) for v in getattr(rs, "__version__", "2.56").split(".")[:2])
    return ".db3" if version >= (2, 58) else ".bag"


def pattern_frame(frame_index: int, camera_id: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(rgb (H, W, 3) uint8, depth (H, W) uint16) for one frame."""
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[...] = (frame_index % 256, frame_index // 256, camera_id)
    depth = np.full((height, width), 1000 + frame_index, np.uint16)
    return rgb, depth


def decode_pattern(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """rgb (..., H, W, 3) -> (frame_index (...), camera_id (...)) from the image centres."""
    h, w = rgb.shape[-3], rgb.shape[-2]
    centre = rgb[..., h // 2, w // 2, :].astype(np.int64)
    return centre[..., 0] + 256 * centre[..., 1], centre[..., 2]


def make_recording(path, camera_id: int = 0, n_frames: int = 60, fps: int = 30, width: int = 320,
                   height: int = 240, serial: str | None = None, depth: bool = True) -> Path:
    """Record `n_frames` bgr8 colour (+ z16 depth) frames to `path` (suffix fixed up); returns it.

    Frames are pushed at `fps` in real time because playback paces itself by the wall-clock time
    frames reached the recorder, not by their timestamps.
    """
    import pyrealsense2 as rs

    path = Path(path).with_suffix(recording_suffix())
    serial = serial or f"{camera_id:012d}"
    intr = rs.intrinsics()
    intr.width, intr.height, intr.fx, intr.fy = width, height, FX, FY
    intr.ppx, intr.ppy, intr.model, intr.coeffs = width / 2, height / 2, rs.distortion.none, [0.0] * 5

    device = rs.software_device()
    device.register_info(rs.camera_info.name, "policylab synthetic D435")
    device.register_info(rs.camera_info.serial_number, serial)
    device.register_info(rs.camera_info.product_line, "D400")
    sensors, profiles = [], []
    specs = [("RGB Camera", rs.stream.color, rs.format.bgr8, 3)]
    if depth:
        specs.append(("Stereo Module", rs.stream.depth, rs.format.z16, 2))
    for uid, (name, stream, fmt, bpp) in enumerate(specs):
        sensor = device.add_sensor(name)
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid, vs.fmt, vs.bpp = stream, 0, uid, fmt, bpp
        vs.width, vs.height, vs.fps, vs.intrinsics = width, height, fps, intr
        profiles.append(sensor.add_video_stream(vs))
        if stream == rs.stream.depth:
            sensor.add_read_only_option(rs.option.depth_units, DEPTH_UNITS)
        sensors.append(sensor)
    if depth:
        identity = rs.extrinsics()
        identity.rotation, identity.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0]
        profiles[1].register_extrinsics_to(profiles[0], identity)  # default rotation is all zeros

    recorder = rs.recorder(str(path), device)
    rec_sensors = recorder.query_sensors()
    for rec_sensor, profile in zip(rec_sensors, profiles):
        rec_sensor.open(profile)
        rec_sensor.start(lambda frame: None)
    t0 = time.monotonic()
    for i in range(n_frames):
        rgb, z = pattern_frame(i, camera_id, width, height)
        for sensor, profile, pixels, bpp in zip(sensors, profiles, [rgb[..., ::-1].copy(), z], [3, 2]):
            frame = rs.software_video_frame()
            frame.pixels, frame.bpp, frame.stride = pixels.tobytes(), bpp, width * bpp
            frame.timestamp, frame.frame_number = 1000.0 * i / fps, i
            frame.domain, frame.profile = rs.timestamp_domain.hardware_clock, profile.as_video_stream_profile()
            sensor.on_video_frame(frame)
        time.sleep(max(0.0, t0 + (i + 1) / fps - time.monotonic()))
    for rec_sensor in rec_sensors:
        rec_sensor.stop()
        rec_sensor.close()
    del rec_sensors, recorder, sensors, device  # the file is complete only once the recorder is gone
    gc.collect()
    return path
