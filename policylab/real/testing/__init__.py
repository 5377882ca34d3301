"""Honest stand-ins for hardware, used by the tests and by anyone without a robot.

They sit behind the real client libraries: a UR controller speaking RTDE on a loopback address,
a spacenavd socket, and RealSense recordings made with librealsense's own software_device.
They ship inside the package so that configs can point at them from any working directory.
"""
