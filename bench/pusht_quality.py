"""PushT state quality on a CPU budget: expert demos -> train -> evaluate on 50 test seeds.

    python bench/pusht_quality.py [--episodes 150] [--minutes 55] [--run_dir outputs/bench/pusht_quality]
                                  [extra train.py overrides ...]

A long run (about an hour on 2 cores); not part of CI. Prints the learning curve (test score of
the periodic rollouts) and the final table; writes JSON to bench/results/pusht_quality.json.
Goal from the Diffusion Policy issue: mean_score >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=150)
    parser.add_argument("--minutes", type=float, default=55)
    parser.add_argument("--data", default="data/pusht/pusht_expert.zarr")
    parser.add_argument("--run_dir", default="outputs/bench/pusht_quality")
    parser.add_argument("--experiment", default="pusht_state_cpu")
    parser.add_argument("--out", default="bench/results/pusht_quality.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    py = sys.executable
    t0 = time.time()
    run([py, "-m", "policylab.data.generate.pusht", f"n={args.episodes}", f"out={args.data}", "seed=0"])
    t_data = time.time() - t0
    run([py, "train.py", f"experiment={args.experiment}", f"task.dataset.zarr_path={args.data}",
         f"training.max_train_minutes={args.minutes}", f"hydra.run.dir={args.run_dir}", *args.overrides])
    t_train = time.time() - t0 - t_data
    eval_dir = Path(args.run_dir) / "eval_50"
    run([py, "eval.py", "--checkpoint", str(Path(args.run_dir) / "checkpoints" / "latest"),
         "--output_dir", str(eval_dir), "n_test=50", "n_train=0", "n_test_vis=4"])
    final = json.loads((REPO / eval_dir / "eval_log.json").read_text())
    logs = [json.loads(line) for line in (REPO / args.run_dir / "logs.jsonl").read_text().splitlines()]
    curve = [(r["epoch"], r["global_step"], r["test/mean_score"], r.get("test/success_rate"))
             for r in logs if "test/mean_score" in r]
    result = {"episodes": args.episodes, "train_minutes": t_train / 60, "data_minutes": t_data / 60,
              "curve": curve, "test_mean_score_50": final["test/mean_score"],
              "test_success_rate_50": final["test/success_rate"], "run_dir": args.run_dir}
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("\nepoch  step  test/mean_score(20 seeds)  success")
    for epoch, step, score, success in curve:
        print(f"{epoch:5d} {step:5d} {score:26.3f} {success if success is not None else float('nan'):8.2f}")
    print(f"\n{'demos':>6} {'train min':>9} {'mean_score@50':>14} {'success@50':>11}")
    print(f"{args.episodes:6d} {t_train / 60:9.1f} {final['test/mean_score']:14.3f} {final['test/success_rate']:11.2f}")


if __name__ == "__main__":
    main()
