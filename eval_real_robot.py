"""Run any policylab policy (local checkpoint or remote server) on a real robot: see docs/real_robot.md.

    python eval_real_robot.py robot.host=<robot ip> policy.path=<checkpoint dir>
    python eval_real_robot.py robot.host=<robot ip> policy=remote policy.url=ws://127.0.0.1:8765
Keys: c start an episode, s stop it, q quit. Touch the SpaceMouse to take over.

    python eval_real_robot.py mode=rl_actor robot.host=<robot ip> policy.path=<RL checkpoint> \
        rl.reward_classifier.checkpoint=<classifier checkpoint>
The RL actor's episodes (delta actions, RealRobotRLEnv) without a learner; keys as in Stage II.
What runs is `mode`'s runner (config/real/mode/*.yaml, policylab/robot_apps/runners.py).
"""

import json
import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig


@hydra.main(config_path="config/real", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import torch

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    policy = instantiate(cfg.policy)
    if hasattr(policy, "eval"):
        policy.eval()
    print(json.dumps(instantiate(cfg.mode)(cfg, policy)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
