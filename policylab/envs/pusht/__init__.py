"""PushT with Diffusion Policy's exact definitions (gymnasium ids registered on import).

Ids: "policylab/PushT-v0" (state obs), "policylab/PushTKeypoints-v0", "policylab/PushTImage-v0";
any `PushTEnv` kwarg can be passed to `gymnasium.make`. In another process, make by
"policylab.envs.pusht:policylab/PushT-v0" so gymnasium imports this module first.
"""

import os

# Headless by default, before any submodule imports pygame: drawing needs only a Surface, but
# SDL must not look for a screen.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

from gymnasium.envs.registration import register, registry

from policylab.common.extras import require

require("pygame", "pymunk", "shapely", extra="pusht")  # before the env imports them: a hint, not a bare error
from policylab.envs.pusht.env import PushTEnv

ENV_IDS = {
    "policylab/PushT-v0": {"obs_type": "state"},
    "policylab/PushTKeypoints-v0": {"obs_type": "keypoints"},
    "policylab/PushTImage-v0": {"obs_type": "image"},
}

for _env_id, _kwargs in ENV_IDS.items():
    if _env_id not in registry:  # re-import (e.g. importlib.reload) must not warn
        # no max_episode_steps: DP's env never truncates; MultiStepWrapper owns the time limit
        register(id=_env_id, entry_point="policylab.envs.pusht.env:PushTEnv", kwargs=_kwargs)

__all__ = ["ENV_IDS", "PushTEnv"]
