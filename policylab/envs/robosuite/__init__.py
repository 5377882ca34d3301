"""robosuite 1.5 tasks (Lift, PickPlaceCan, ...), registered with gymnasium on import.

Ids: "policylab/Robosuite-v0" (any task: `gymnasium.make(id, task="Lift", image_obs=True)`).
In another process, make by "policylab.envs.robosuite:policylab/Robosuite-v0". The package is
named after the library it adapts; inside it `import robosuite` is the library.
"""

from gymnasium.envs.registration import register, registry

# First of this package's imports: sets a headless MUJOCO_GL before mujoco is loaded.
import policylab.envs.mujoco_render  # noqa: F401
from policylab.envs.robosuite.env import RobosuiteEnv
from policylab.envs.robosuite.expert import LiftExpert

ENV_ID = "policylab/Robosuite-v0"
if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="policylab.envs.robosuite.env:RobosuiteEnv")

__all__ = ["ENV_ID", "LiftExpert", "RobosuiteEnv"]
