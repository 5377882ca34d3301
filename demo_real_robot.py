"""Collect teleoperated demonstrations on a real robot (or its stand-ins): see docs/real_robot.md.

    python demo_real_robot.py robot.host=<robot ip> output_dir=data/my_task
Keys: c start, s stop and save, backspace drop last, space next stage, q quit.

    python demo_real_robot.py mode=record_success robot.host=<robot ip> output_dir=data/my_task/success_frames
Labelled frames for the reward classifier: the same keys, space HELD = success.
"""

import json
import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig


@hydra.main(config_path="config/real", config_name="demo", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from policylab.real.demo import run_demo
    from policylab.real.success_recording import run_record_success

    if cfg.mode not in ("demo", "record_success"):
        raise SystemExit(f"mode must be demo or record_success, got {cfg.mode!r}")
    env = instantiate(cfg.env, _convert_="all")
    teleop, keys = instantiate(cfg.teleop), instantiate(cfg.keyboard)
    mapping = instantiate(cfg.teleop_mapping)
    with teleop, env, keys:
        if cfg.mode == "record_success":
            summary = run_record_success(env, teleop, keys, mapping, cfg.output_dir, success_key=cfg.success_key,
                                         command_latency=cfg.command_latency, max_duration=cfg.max_duration)
        else:
            summary = run_demo(env, teleop, keys, mapping, command_latency=cfg.command_latency,
                               max_duration=cfg.max_duration, preview=cfg.preview,
                               stats_path=f"{cfg.output_dir}/demo_stats.json")
    print(json.dumps(summary))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
