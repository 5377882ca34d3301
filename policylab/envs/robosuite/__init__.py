"""robosuite 1.5 tasks (Lift, PickPlaceCan, ...), registered with gymnasium on import.

Ids: "policylab/Robosuite-v0" (any task: `gymnasium.make(id, task="Lift", image_obs=True)`).
In another process, make by "policylab.envs.robosuite:policylab/Robosuite-v0". The package is
named after the library it adapts; inside it `import robosuite` is the library.
"""

import os

# Headless rendering by default, before anything imports mujoco (it reads MUJOCO_GL on import).
# An explicit MUJOCO_GL (e.g. osmesa) wins.
os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from gymnasium.envs.registration import register, registry

from policylab.envs.robosuite.env import RobosuiteEnv
from policylab.envs.robosuite.expert import LiftExpert

ENV_ID = "policylab/Robosuite-v0"
if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="policylab.envs.robosuite.env:RobosuiteEnv")

__all__ = ["ENV_ID", "LiftExpert", "RobosuiteEnv"]
