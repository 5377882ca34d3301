"""Meta-World v3 tasks, registered with gymnasium on import.

Ids: "policylab/MetaWorld-v0" (any task: `gymnasium.make(id, task="push-v3", image_obs=True)`).
In another process, make by "policylab.envs.metaworld:policylab/MetaWorld-v0". The package is
named after the library it adapts; inside it `import metaworld` is the library (absolute imports).
"""

from gymnasium.envs.registration import register, registry

# First of this package's imports: sets a headless MUJOCO_GL before mujoco is loaded.
import policylab.envs.mujoco_render  # noqa: F401
from policylab.common.extras import require

require("metaworld", extra="tasks")
from policylab.envs.metaworld.env import MetaWorldEnv
from policylab.envs.metaworld.expert import MetaWorldExpert

ENV_ID = "policylab/MetaWorld-v0"
if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="policylab.envs.metaworld.env:MetaWorldEnv")

__all__ = ["ENV_ID", "MetaWorldEnv", "MetaWorldExpert"]
