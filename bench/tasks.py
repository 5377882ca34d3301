"""Every simulated task end to end: expert, demo speed, env speed, and a tiny diffusion policy.

    python bench/tasks.py [--tasks pick_cube_lowdim,metaworld_push_lowdim,...] [--episodes 30]
                          [--train_minutes 3] [--n_test 20] [--skip_train] [--out <json>]
                          [--data_dir <dir>] [--run_root <dir>]

The JSON goes to <bench root>/results/tasks.json, the demos to <bench root>/tasks/data and each
tiny DP's run to <bench root>/tasks/<task> unless given (relative paths: to the checkout).

Per task:
  expert success   successes / attempts of its scripted expert (`python -m policylab.data.generate`,
                   action noise as in the task config), `--episodes` saved episodes
  demo eps/min     expert episodes attempted per minute, recording what the task's `demo` entry
                   records (images included where it says so)
  steps/s          env steps per second with random actions, state only and with the task's cameras
  tiny DP          train.py with a 4.6M-parameter UNet (DDIM-16) for `--train_minutes` on the demos,
                   then the end-of-training rollout on `--n_test` test seeds: its success rate.
                   A pipeline check, not a quality number: a few minutes on 2 shared CPU cores
                   (one torch thread: see train_tiny).
Tasks without a scripted expert (robosuite_can_*: data is robomimic's, imported) get env speeds only.
Long (about an hour for the default list); not part of CI. Prints a table last, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._paths import add_out_argument, bench_dir, write_json
from policylab.data.generate.demos import DemoConfig, generate, load_task_config

DEFAULT_TASKS = ["pick_cube_lowdim", "pick_cube_image", "metaworld_push_lowdim",
                 "metaworld_pick_place_lowdim", "metaworld_drawer_open_lowdim",
                 "metaworld_button_press_lowdim", "metaworld_door_open_lowdim",
                 "robosuite_lift_lowdim", "robosuite_can_lowdim"]
TINY_DP = ["policy=diffusion_unet", "horizon=16", "n_obs_steps=2", "n_action_steps=8",
           "policy.model.down_dims=[64,128,256]", "policy.model.diffusion_step_embed_dim=64",
           "policy.inference_scheduler=ddim", "policy.num_inference_steps=16",
           "optimizer.lr=3e-4", "lr_scheduler.warmup_steps=100", "training.num_epochs=100000",
           "training.rollout_every=100000", "training.checkpoint_every=100000",
           "training.sample_every=100000", "training.val_every=100000", "logging.mode=disabled",
           "task.dataset.val_ratio=0", "task.env_runner.n_train=0", "task.env_runner.n_test_vis=1",
           "task.env_runner.n_envs=2"]
BATCH = {"rgb": 32, "low_dim": 128}


def env_steps_per_second(task_cfg, image_obs: bool, seconds: float) -> float:
    """Random-action env steps per second (resets excluded), for about `seconds`."""
    kwargs = {**dict(task_cfg.env_runner.get("env_kwargs") or {}), "image_obs": image_obs}
    env = gym.make(task_cfg.env_runner.env_id, **kwargs).unwrapped
    try:
        env.reset(seed=0)
        env.action_space.seed(0)
        env.step(env.action_space.sample())  # first step: JIT / lazy renderer set-up
        n, spent = 0, 0.0
        while spent < seconds or n < 5:
            start = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            spent += time.perf_counter() - start
            n += 1
            if terminated or truncated:
                env.reset(seed=n)
        return n / spent
    finally:
        env.close()


def train_tiny(task: str, store: Path, minutes: float, n_test: int, run_dir: Path, rgb: bool) -> dict:
    batch = BATCH["rgb" if rgb else "low_dim"]
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "train.py", f"task={task}", f"task.dataset.zarr_path={store}",
           f"hydra.run.dir={run_dir}", f"training.max_train_minutes={minutes}",
           f"task.env_runner.n_test={n_test}", f"dataloader.batch_size={batch}",
           f"val_dataloader.batch_size={batch}", *TINY_DP]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    # One torch thread: on 2 cores shared with env workers and other jobs, 2 threads made
    # inference 5x slower (spinning threads fight for the cores).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, check=False)
    total = time.perf_counter() - start
    if result.returncode != 0:
        print(result.stderr[-3000:], flush=True)
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    records = [json.loads(line) for line in (run_dir / "logs.jsonl").read_text().splitlines()]
    last = [r for r in records if "test/success_rate" in r][-1]
    return {"train_steps": last["global_step"], "train_and_eval_minutes": total / 60,
            "success_rate": last["test/success_rate"], "mean_score": last["test/mean_score"],
            "n_test": n_test}


def bench_task(task: str, args, data_dir: Path, stores: dict) -> dict:
    cfg = load_task_config(task)
    row: dict = {"task": task}
    rgb = any(attr.get("type") == "rgb" for attr in cfg.shape_meta.obs.values())
    row["steps_per_s_state"] = env_steps_per_second(cfg, False, args.env_seconds)
    row["steps_per_s_image"] = env_steps_per_second(cfg, True, args.env_seconds)
    if "demo" not in cfg:
        row["note"] = "no scripted expert (robomimic data)"
        return row
    store = data_dir / Path(cfg.dataset.zarr_path).name
    if store not in stores:  # variants of one task share a store: generate once
        stats = generate(DemoConfig(task=task, n=args.episodes, out=str(store)))
        stores[store] = {"expert_success_rate": stats["success_rate"],
                         "demo_episodes_per_minute": stats["episodes_per_minute"],
                         "demo_steps": stats["saved_steps"], "episodes": stats["saved"]}
    row.update(stores[store])
    if not args.skip_train:
        row.update(train_tiny(task, store, args.train_minutes, args.n_test, REPO / args.run_root / task, rgb))
    return row


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--train_minutes", type=float, default=3.0)
    parser.add_argument("--n_test", type=int, default=20)
    parser.add_argument("--env_seconds", type=float, default=5.0)
    parser.add_argument("--skip_train", action="store_true")
    parser.add_argument("--data_dir", type=Path, default=bench_dir("tasks") / "data",
                        help="the demos, emptied first (default: %(default)s)")
    parser.add_argument("--run_root", type=Path, default=bench_dir("tasks"),
                        help="<run_root>/<task> is each tiny DP's run (default: %(default)s)")
    add_out_argument(parser, "tasks")
    return parser


def main():
    args = build_parser().parse_args()
    data_dir = REPO / args.data_dir
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    rows, stores = [], {}
    for task in args.tasks.split(","):
        print(f"== {task}", flush=True)
        rows.append(bench_task(task, args, data_dir, stores))
        print(json.dumps(rows[-1]), flush=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "data_dir", "run_root")}
    write_json(REPO / args.out, {"settings": settings, "tiny_dp_overrides": TINY_DP, "rows": rows})

    def fmt(value, spec):
        width = int(spec.split(".")[0].rstrip("dfs") or 0)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return format(value, spec) if ok else "-".rjust(width)

    print(f"\n{'task':30s} {'expert':>7s} {'eps/min':>8s} {'steps/s':>8s} {'img st/s':>9s} "
          f"{'train st':>8s} {'min':>5s} {'success':>8s}")
    for r in rows:
        success = f"{r['success_rate']:.2f}/{r['n_test']}" if "success_rate" in r else r.get("error", r.get("note", "-"))[:24]
        print(f"{r['task']:30s} {fmt(r.get('expert_success_rate'), '7.2f')} "
              f"{fmt(r.get('demo_episodes_per_minute'), '8.1f')} {fmt(r['steps_per_s_state'], '8.0f')} "
              f"{fmt(r['steps_per_s_image'], '9.1f')} {fmt(r.get('train_steps'), '8d')} "
              f"{fmt(r.get('train_and_eval_minutes'), '5.1f')} {success:>8s}")


if __name__ == "__main__":
    main()
