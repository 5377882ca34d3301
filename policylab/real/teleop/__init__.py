"""Teleoperation: SpaceMouse (libspnav), key input (pynput or scripted), and the pose mapping."""

from policylab.real.teleop.base import KeyInput, Teleop, TeleopMapping

__all__ = ["KeyInput", "Teleop", "TeleopMapping"]
