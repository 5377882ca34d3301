"""Run any policylab policy (local checkpoint or remote server) on a real robot: see docs/real_robot.md.

    python eval_real_robot.py robot.host=<robot ip> policy.path=<checkpoint dir>
    python eval_real_robot.py robot.host=<robot ip> policy=remote policy.url=ws://127.0.0.1:8765
Keys: c start an episode, s stop it, q quit. Touch the SpaceMouse to take over.

    python eval_real_robot.py mode=rl_actor robot.host=<robot ip> policy.path=<RL checkpoint> \
        rl.reward_classifier.checkpoint=<classifier checkpoint>
The RL actor's episodes (delta actions, RealRobotRLEnv) without a learner; keys as in Stage II.
"""

import json
import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig


@hydra.main(config_path="config/real", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import torch

    from policylab.real.evaluation import ActionToPose, run_eval

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    policy = instantiate(cfg.policy)
    if hasattr(policy, "eval"):
        policy.eval()
    if cfg.mode == "rl_actor":
        from omegaconf import OmegaConf

        from policylab.real.rl_eval import make_rl_env, run_rl_eval

        devices = {k: OmegaConf.to_container(cfg[k], resolve=True)
                   for k in ("robot", "cameras", "teleop", "keyboard", "teleop_mapping")}
        env = make_rl_env({**devices, "frequency": cfg.frequency}, policy.shape_meta,
                          OmegaConf.to_container(cfg.rl, resolve=True))
        result = run_rl_eval(env, policy, cfg.n_episodes, cfg.rl_max_steps, stats_path=f"{cfg.output_dir}/eval_stats.json")
        print(json.dumps({k: v for k, v in result.items() if k != "episodes"}))
        return
    env = instantiate(cfg.env, n_obs_steps=policy.n_obs_steps, _convert_="all")
    teleop, keys = instantiate(cfg.teleop), instantiate(cfg.keyboard)
    with teleop, env, keys:
        result = run_eval(env, policy, keys, teleop=teleop,
                          mapping=instantiate(cfg.teleop_mapping) if cfg.takeover else None,
                          action_to_pose=ActionToPose(cfg.action_pose_indices),
                          steps_per_inference=cfg.steps_per_inference, action_offset=cfg.action_offset,
                          exec_latency=cfg.exec_latency, frame_latency=cfg.frame_latency,
                          max_duration=cfg.max_duration, max_steps=cfg.max_steps, n_episodes=cfg.n_episodes,
                          auto_start=cfg.auto_start, obs_key_map=cfg.obs_key_map,
                          stats_path=f"{cfg.output_dir}/eval_stats.json")
    print(json.dumps({k: v for k, v in result["episodes"][-1].items() if k != "inferences"}
                     if result["episodes"] else {}))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
