"""Cameras: the interface, the RealSense backend (live or playback) and grid-aligned video."""

from policylab.real.cameras.base import Camera, intrinsics_matrix

__all__ = ["Camera", "intrinsics_matrix"]
