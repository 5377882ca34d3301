"""What `eval_real_robot.py` and `demo_real_robot.py` run, chosen by config, not by branches.

`mode=<name>` selects `config/real/mode/<name>.yaml`: a `_target_` of one runner below with
`_partial_: true`. An eval runner is called with the composed config and the policy, a demo
runner with the config; each returns the summary the script prints as JSON. A new way to run a
robot is a function here and a YAML file there.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

DEVICE_KEYS = ("robot", "cameras", "teleop", "keyboard", "teleop_mapping")


def policy_eval(cfg: DictConfig, policy) -> dict:
    """`config/real/eval.yaml`'s policy evaluation (absolute poses, latency compensation); the last episode's summary."""
    from policylab.robot_apps.evaluation import ActionToPose, run_eval

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
    last = result["episodes"][-1] if result["episodes"] else {}
    return {k: v for k, v in last.items() if k != "inferences"}


def rl_actor_eval(cfg: DictConfig, policy) -> dict:
    """The RL actor's episodes (delta actions, `RealRobotRLEnv`, the `rl` section) without a learner."""
    from policylab.robot_apps.rl_eval import make_rl_env, run_rl_eval

    devices = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in DEVICE_KEYS}
    env = make_rl_env({**devices, "frequency": cfg.frequency}, policy.shape_meta,
                      OmegaConf.to_container(cfg.rl, resolve=True))
    result = run_rl_eval(env, policy, cfg.n_episodes, cfg.rl_max_steps, stats_path=f"{cfg.output_dir}/eval_stats.json")
    return {k: v for k, v in result.items() if k != "episodes"}


def demo(cfg: DictConfig) -> dict:
    """Teleoperated demonstrations (`policylab.real.demo`)."""
    from policylab.real.demo import run_demo

    env, teleop, keys = instantiate(cfg.env, _convert_="all"), instantiate(cfg.teleop), instantiate(cfg.keyboard)
    with teleop, env, keys:
        return run_demo(env, teleop, keys, instantiate(cfg.teleop_mapping), command_latency=cfg.command_latency,
                        max_duration=cfg.max_duration, preview=cfg.preview,
                        stats_path=f"{cfg.output_dir}/demo_stats.json")


def record_success(cfg: DictConfig) -> dict:
    """Labelled frames for the reward classifier (`policylab.robot_apps.success_recording`)."""
    from policylab.robot_apps.success_recording import run_record_success

    env, teleop, keys = instantiate(cfg.env, _convert_="all"), instantiate(cfg.teleop), instantiate(cfg.keyboard)
    with teleop, env, keys:
        return run_record_success(env, teleop, keys, instantiate(cfg.teleop_mapping), cfg.output_dir,
                                  success_key=cfg.success_key, command_latency=cfg.command_latency,
                                  max_duration=cfg.max_duration)
