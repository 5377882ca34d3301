"""The main job, end to end on a CPU within 10 minutes: expert demos -> train -> evaluate.

    python -m policylab.quickstart [--episodes 100] [--minutes 10] [--out outputs/quickstart]

1. the scripted PushT expert writes `--episodes` state-only demonstrations to a zarr ReplayBuffer,
2. `train.py experiment=pusht_quickstart` trains a small diffusion policy, bounded by what is left
   of `--minutes` after the demos and a reserve for the evaluation,
3. `eval.py` scores the EMA policy on `--n_test` test seeds (2 envs in parallel) and records videos,
then prints the score, the wall time of the whole quickstart (from `--started_at`, which `make
quickstart` sets before installing, so the install counts) and where the results are.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

EVAL_RESERVE_S = 75  # 10 seeds x 300 steps, DDIM-16, 2 envs, plus process start-up


def run(cmd: list[str]) -> None:
    print("\n$", " ".join(cmd), flush=True)
    # One torch thread: the network is small, and the evaluation's two env processes need the cores.
    # Two threads on a busy 2-core machine were catastrophic (measured: 49 steps in 9 minutes against
    # 208 in 40 seconds with one thread, same load).
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1")}
    subprocess.run(cmd, check=True, env=env)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=10.0, help="budget of the whole quickstart")
    parser.add_argument("--n_test", type=int, default=10)
    parser.add_argument("--out", default="outputs/quickstart")
    parser.add_argument("--started_at", type=float, default=None, help="unix time the quickstart began")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides")
    args = parser.parse_args(argv)
    started = args.started_at or time.time()
    repo = Path(__file__).resolve().parents[1]
    out = Path(args.out)
    data, run_dir, eval_dir = out / "pusht_state.zarr", out / "run", out / "eval"
    t0 = time.time()
    run([sys.executable, "-m", "policylab.data.generate.pusht", f"n={args.episodes}", f"out={data}", "seed=0",
         "images=false"])
    t_demos = time.time() - t0
    left = args.minutes * 60 - (time.time() - started) - EVAL_RESERVE_S
    if left < 60:
        print(f"warning: {left / 60:.1f} min left for training of the {args.minutes:g}-minute budget; training 1 min")
    train_minutes = max(left, 60) / 60
    train = [sys.executable, str(repo / "train.py"), "experiment=pusht_quickstart", f"task.dataset.zarr_path={data}",
             f"training.max_train_minutes={train_minutes:.2f}", f"hydra.run.dir={run_dir}", *args.overrides]
    if (run_dir / "checkpoints" / "latest").exists():
        train.append("training.resume=true")  # a second `make quickstart` continues, or only re-evaluates
    t0 = time.time()
    run(train)
    t_train = time.time() - t0
    ckpt = run_dir / "checkpoints" / "latest"
    t0 = time.time()
    run([sys.executable, str(repo / "eval.py"), f"checkpoint={ckpt}", f"output_dir={eval_dir}",
         f"n_test={args.n_test}", "n_train=0", "n_test_vis=2", "n_envs=2"])
    t_eval = time.time() - t0
    total = time.time() - started
    log = json.loads((eval_dir / "eval_log.json").read_text())
    videos = sorted(str(v) for k, v in log.items() if "video" in k)
    steps = json.loads((run_dir / "logs.jsonl").read_text().splitlines()[-1])["global_step"]
    print(f"\nPushT test mean_score {log['test/mean_score']:.3f}, success rate {log['test/success_rate']:.2f} "
          f"over {args.n_test} seeds, after {steps} optimizer steps")
    print(f"wall time {total / 60:.1f} min (install and start-up {(total - t_demos - t_train - t_eval) / 60:.1f}, "
          f"demos {t_demos / 60:.1f}, training {t_train / 60:.1f}, evaluation {t_eval / 60:.1f}); "
          f"budget {args.minutes:g} min: {'met' if total <= args.minutes * 60 else 'NOT met'}")
    print(f"scores:     {eval_dir / 'eval_log.json'}")
    print(f"checkpoint: {ckpt}")
    print(f"videos:     {', '.join(videos)}")
    print(f"train log:  {run_dir / 'train.log'}  (curves: python -m policylab.plot {run_dir})")
    print("longer runs: README, 'Two commands' and 'Benchmarks'")
    return {"mean_score": log["test/mean_score"], "wall_s": total, "steps": steps}


if __name__ == "__main__":
    main()
