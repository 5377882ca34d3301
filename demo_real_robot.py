"""Collect teleoperated demonstrations on a real robot (or its stand-ins): see docs/real_robot.md.

    python demo_real_robot.py robot.host=<robot ip> output_dir=data/my_task
Keys: c start, s stop and save, backspace drop last, space next stage, q quit.

    python demo_real_robot.py mode=record_success robot.host=<robot ip> output_dir=data/my_task/success_frames
Labelled frames for the reward classifier: the same keys, space HELD = success.
What runs is `mode`'s runner (config/real/mode/*.yaml, policylab/robot_apps/runners.py).
"""

import json
import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig


@hydra.main(config_path="config/real", config_name="demo", version_base="1.3")
def main(cfg: DictConfig) -> None:
    print(json.dumps(instantiate(cfg.mode)(cfg)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
