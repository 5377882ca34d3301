"""HIL-ConRFT's actor on the robot stand-ins: control loop rate, takeover latency, weight publishing.

    python bench/hil_real_robot.py [--steps 150] [--takeovers 8] [--repeats 10] [--variants ...]
                                   [--out <json>]   (default: <bench root>/results/hil_real_robot.json)

The stand-ins are the ones the real-robot tests use: the fake UR controller (RTDE over loopback,
a 125 Hz servo loop in its own process), a librealsense recording played back at 30 fps (one
camera, 128x96 observations) and SpaceMouse events from the fake spacenavd through libspnav.

  loop       `rl.actor.run_episode` of the ConRFT actor (ConsistencyBCPolicy on ConRFTMLP,
             untrained weights, T 2, To 2, one action per step) on `RealRobotRLEnv` at 10 Hz,
             three variants side by side: state only (robot_eef_pose); camera + state with a
             ResNet18-GroupNorm encoder trained in the actor (policy/conrft_actor's default); and
             camera + state on a frozen Octo-tiny encoder, the image ConRFT presets' actor
             (conrft_pick_cube_image_sft's encoder, frozen as in its RL stages, plus the stage
             presets' `policy.image_head` on its camera stems), acting as the RL actor does:
             `embed=POLICY_EMBEDDING`, one encoder pass per step for both the action and the
             embedding the learner stores. Reported: achieved Hz, mean / worst step period,
             share of late steps, policy time (for the Octo actor, the recorded embeddings too).
  takeover   the fake spacenavd starts a push at a known time during an episode; latency to the
             first human command sent to the robot (the env reads the mouse once per period,
             `command_latency` before it ends, so the bound is one period) and to the time that
             command is due at the arm (one period later, as every command).
  publish    the learner's hand-off of new weights: `policy_weights` + `ray.put`, and the round trip
             of `EnvActor.set_weights` on a local ray actor built for the real env (what the robot's
             actor pays once per new version), for both actor variants.

Prints a table last, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._paths import add_out_argument, shown, write_json
from policylab.common.safe_config import instantiate_trusted
from policylab.data.normalizer import LinearNormalizer
from policylab.real.testing.fake_spacenavd import FakeSpacenavd
from policylab.real.testing.fake_ur import FakeURController, free_loopback_host
from policylab.rl.actor import POLICY_EMBEDDING, EnvActor, policy_weights, run_episode
from policylab.robot_apps.rl_env import build_real_rl_env

# name -> (config overrides, the actor's `embed`: POLICY_EMBEDDING records the frozen encoder's features,
#          the experiment preset whose `policy.image_head` the actor takes, or None)
VARIANTS = {
    "state": (["~task.shape_meta.obs.camera_0", "task.image_crop_shape=null"], None, None),
    "camera+state": ([], None, None),
    "camera+octo_tiny": (["policy/obs_encoder=octo_tiny", "policy.obs_encoder.frozen=true"], POLICY_EMBEDDING,
                         "conrft_pick_cube_image_stage2"),
}


def compose_task(extra: list[str], image_head_from: str | None = None):
    import policylab.common.config  # noqa: F401  (registers ${calc:})

    with initialize_config_dir(config_dir=str(REPO / "config"), version_base=None):
        cfg = compose(config_name="train", overrides=[
            "task=real_rl", "policy=conrft_actor", "horizon=2", "n_obs_steps=2", "n_action_steps=1", *extra])
        if image_head_from:  # the preset's head on the frozen encoder's stems, as its RL stages build the actor
            preset = compose(config_name="train", overrides=[f"experiment={image_head_from}"])
            with open_dict(cfg):
                cfg.policy.image_head = OmegaConf.to_container(preset.policy.image_head)
    OmegaConf.resolve(cfg)
    return cfg


def build_policy(cfg) -> torch.nn.Module:
    # imports diffusers: here, so that importing this script (tests/test_bench_outputs.py) stays cheap
    from policylab.workspaces.rl_offline import policy_build_config

    policy = instantiate_trusted(policy_build_config(cfg.policy), "policy")
    meta = OmegaConf.to_container(cfg.task.shape_meta)
    data = {key: torch.randn(64, *attr["shape"]) for key, attr in meta["obs"].items() if attr.get("type") != "rgb"}
    data["action"] = torch.rand(64, 3) * 2 - 1
    normalizer = LinearNormalizer()
    normalizer.fit(data)
    policy.set_normalizer(normalizer)
    return policy.eval()


def env_kwargs(cfg, ur_host: str, recording: str, socket_path: str) -> dict:
    kwargs = OmegaConf.to_container(cfg.task.rl_env.env_kwargs, resolve=True)
    kwargs["robot"].update(host=ur_host, safety_box={"low": [0.2, -0.3, 0.1], "high": [0.6, 0.3, 0.5]})
    kwargs["cameras"]["camera_0"].update(recording=recording, resolution=[320, 240], repeat_playback=True)
    kwargs["teleop"]["socket_path"] = socket_path
    kwargs.update(keyboard=None, reset="none", max_delta=0.005)
    return kwargs


def loop_and_takeovers(policy, env, spacenavd, steps: int, takeovers: int, embed: str | None) -> dict:
    """One episode of `steps` steps with `takeovers` pushes of 0.3 s spread over it."""
    pushes: list[float] = []

    def human():
        time.sleep(0.8)
        gap = (steps * env.env.dt - 1.5) / max(takeovers, 1)
        for _ in range(takeovers):
            pushes.append(time.monotonic())
            spacenavd.motion(x=300)
            time.sleep(0.3)
            spacenavd.motion()
            time.sleep(max(gap - 0.3, 0.2))

    env.start()
    spacenavd.wait_connected(5)
    thread = threading.Thread(target=human, daemon=True)
    thread.start()
    episode, stats = run_episode(policy, env, seed=0, n_obs_steps=2, n_action_steps=1, max_steps=steps, embed=embed)
    thread.join()
    log = env.step_log
    periods = np.diff([r["t_begin"] for r in log])
    sent, due = [], []
    for t_push in pushes:
        first = next((r for r in log if r["human"] and r["t_read"] >= t_push), None)
        if first is not None:
            sent.append(first["t_sent"] - t_push)
            due.append(first["t_sent"] - t_push + env.env.dt)
    return {"steps": stats["length"], "achieved_hz": stats["env_steps_per_s"],
            "mean_period_ms": 1e3 * float(periods.mean()), "worst_period_ms": 1e3 * float(periods.max()),
            "late_steps_share": float(np.mean([r["overrun_s"] > 0.01 for r in log])),
            "policy_ms_per_step": 1e3 * stats["policy_s"] / stats["length"],
            "takeovers_seen": len(sent), "takeovers_sent": len(pushes),
            "takeover_to_command_ms_median": 1e3 * statistics.median(sent) if sent else None,
            "takeover_to_command_ms_max": 1e3 * max(sent) if sent else None,
            "takeover_to_arm_ms_median": 1e3 * statistics.median(due) if due else None,
            "embedding_dim": int(episode["embedding"].shape[1]) if embed else None}


def publish_latency(cfg, policy, kwargs: dict, repeats: int, embed: bool) -> dict:
    import ray

    from policylab.workspaces.rl_offline import policy_build_config

    task = OmegaConf.to_container(cfg.task, resolve=True)
    task["rl_env"]["env_kwargs"] = kwargs
    actor = ray.remote(num_cpus=1)(EnvActor).remote(task, policy_build_config(cfg.policy), None, 2, 1, 10,
                                                               embed=embed)
    put_ms, trip_ms = [], []
    for version in range(repeats + 1):
        tic = time.perf_counter()
        ref = ray.put(policy_weights(policy))
        put = time.perf_counter() - tic
        ray.get(actor.set_weights.remote(ref, version))
        if version:  # the first call also waits for the actor process to start
            put_ms.append(1e3 * put)
            trip_ms.append(1e3 * (time.perf_counter() - tic))
    ray.get(actor.close.remote())
    ray.kill(actor)
    size = sum(t.numel() * t.element_size() for t in policy_weights(policy).values())
    return {"weights_mb": size / 2**20, "put_ms_median": statistics.median(put_ms),
            "set_weights_round_trip_ms_median": statistics.median(trip_ms), "repeats": repeats}


def run_variant(name: str, tmp: str, recording: str, args) -> dict:
    """Loop + takeovers on fresh stand-ins, then publishing, for one entry of VARIANTS."""
    extra, embed, image_head_from = VARIANTS[name]
    cfg = compose_task(extra, image_head_from)
    policy = build_policy(cfg)
    with FakeURController(free_loopback_host()) as ur, FakeSpacenavd(os.path.join(tmp, f"{name}.sock")) as mouse:
        env = build_real_rl_env(**env_kwargs(cfg, ur.host, recording, mouse.socket_path))
        try:
            loop = loop_and_takeovers(policy, env, mouse, args.steps, args.takeovers, embed)
        finally:
            env.close()
    with FakeURController(free_loopback_host()) as ur:
        publish = publish_latency(cfg, policy, env_kwargs(cfg, ur.host, recording, "unused.sock"), args.repeats,
                                  embed is not None)
    return {"loop": loop, "publish": publish}


ROWS = [("control loop Hz (target 10)", "loop", "achieved_hz", "{:.2f}"),
        ("mean / worst step period ms", "loop", ("mean_period_ms", "worst_period_ms"), "{:.0f} / {:.0f}"),
        ("late steps (>10 ms past the period)", "loop", "late_steps_share", "{:.1%}"),
        ("policy ms per step", "loop", "policy_ms_per_step", "{:.1f}"),
        ("takeover -> human command sent, median / max ms", "loop",
         ("takeover_to_command_ms_median", "takeover_to_command_ms_max"), "{:.0f} / {:.0f}"),
        ("takeover -> command due at the arm, median ms", "loop", "takeover_to_arm_ms_median", "{:.0f}"),
        ("weights MB", "publish", "weights_mb", "{:.2f}"),
        ("publish: policy_weights + ray.put ms", "publish", "put_ms_median", "{:.1f}"),
        ("publish: set_weights round trip ms", "publish", "set_weights_round_trip_ms_median", "{:.1f}")]


def print_table(result: dict, names: list[str]) -> None:
    print(f"\n{'measure':52s} " + " ".join(f"{n:>16s}" for n in names))
    for label, part, key, fmt in ROWS:
        keys = key if isinstance(key, tuple) else (key,)
        cells = [fmt.format(*[result[n][part][k] for k in keys]) for n in names]
        print(f"{label:52s} " + " ".join(f"{c:>16s}" for c in cells))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--takeovers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    add_out_argument(parser, "hil_real_robot")
    return parser


def main():
    args = build_parser().parse_args()
    torch.set_num_threads(1)
    import ray

    from policylab.real.testing.realsense_recording import make_recording

    result: dict = {"args": {**vars(args), "out": shown(args.out)}, "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="pl") as tmp:
        recording = str(make_recording(Path(tmp) / "camera_0", camera_id=0, n_frames=60, depth=False))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            for name in args.variants:
                result[name] = run_variant(name, tmp, recording, args)
                print(name, json.dumps(result[name]))
        finally:
            ray.shutdown()
    write_json(args.out, result)
    print_table(result, args.variants)


if __name__ == "__main__":
    main()
