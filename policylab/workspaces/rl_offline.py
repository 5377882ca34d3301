"""Stage I of ConRFT (Cal-ConRFT): offline actor-critic fine-tuning on the demonstrations.

    python train.py workspace=rl_offline task=pick_cube_lowdim policy.init=<SFT checkpoint> [conrft=code]

The actor starts from a supervised checkpoint (`policy.init`, e.g. a `policy=conrft_actor` run):
its policy config replaces `policy` (the path is kept as `init_from`), so the saved `config.yaml` rebuilds the actor and `eval.py`,
`from_checkpoint` and the policy server load RL checkpoints like any other. Without `init` the
actor is built from `policy` and its normalizer fitted on the demos. The critic comes from
`critic`, the stage's hyper-parameters from the `conrft` preset (`conrft.common` + `conrft.offline`).

One step is one learner iteration of `rl.conrft.ConRFT.train_step` (critic_actor_ratio updates,
each on a fresh batch of demo transitions).
"""

from __future__ import annotations

from typing import ClassVar

from policylab.common.shape_meta import ShapeMeta
from policylab.rl.transitions import TransitionSampler
from policylab.workspaces.base import CheckpointConfig, LoggingConfig, to_device
from policylab.workspaces.rl import (  # noqa: F401  (policy_build_config: imported from here by benches)
    RewardConfig,
    RLTrainingConfig,
    RLWorkspace,
    policy_build_config,
)


class OfflineRLWorkspace(RLWorkspace):
    schemas: ClassVar[dict[str, type]] = {"training": RLTrainingConfig, "reward": RewardConfig,
                                          "logging": LoggingConfig, "checkpoint": CheckpointConfig}
    stage = "offline"

    def build(self) -> None:
        self.sampler = TransitionSampler(self.demo_replay_buffer(), ShapeMeta.parse(self.cfg.task.shape_meta),
                                         self.transition_spec())

    def describe(self) -> str:
        return f"Stage I (Cal-ConRFT) on {self.device}: {len(self.sampler)} demo transitions"

    def train_step(self) -> dict:
        batch_size = self.c["training"].batch_size
        metrics = self.agent.train_step(lambda: to_device(self.sampler.sample(batch_size, self.generator), self.device),
                                        self.generator)
        self.global_step += 1
        return metrics
