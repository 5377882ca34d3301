"""Robots: the interface and its backends (chosen by Hydra `_target_`)."""

from policylab.real.robots.base import Robot, RobotFault
from policylab.real.robots.interpolator import PoseTrajectoryInterpolator, SafetyBox

__all__ = ["PoseTrajectoryInterpolator", "Robot", "RobotFault", "SafetyBox"]
