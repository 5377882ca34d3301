"""MuJoCo Panda pick-cube (gym-hil's PandaPickCube), registered with gymnasium on import.

Ids: "policylab/PickCube-v0" (state obs) and "policylab/PickCubeImage-v0" (front + wrist images
too); any `PickCubeEnv` kwarg can be passed to `gymnasium.make`. In another process, make by
"policylab.envs.pick_cube:policylab/PickCube-v0" so gymnasium imports this module first.
"""

from gymnasium.envs.registration import register, registry

# First of this package's imports: sets a headless MUJOCO_GL before mujoco is loaded.
import policylab.envs.mujoco_render  # noqa: F401
from policylab.common.extras import require

require("gym_hil", extra="tasks")
from policylab.envs.pick_cube.env import PickCubeEnv
from policylab.envs.pick_cube.expert import PickCubeExpert

ENV_IDS = {
    "policylab/PickCube-v0": {"image_obs": False},
    "policylab/PickCubeImage-v0": {"image_obs": True},
}

for _env_id, _kwargs in ENV_IDS.items():
    if _env_id not in registry:
        # no max_episode_steps: MultiStepWrapper owns the time limit
        register(id=_env_id, entry_point="policylab.envs.pick_cube.env:PickCubeEnv", kwargs=_kwargs)

__all__ = ["ENV_IDS", "PickCubeEnv", "PickCubeExpert"]
