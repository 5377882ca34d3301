"""PushT state quality on a CPU budget: expert demos -> train each method -> evaluate on 50 test seeds.

    python bench/pusht_quality.py [--methods dp,ct,cd] [--episodes 150] [--minutes 55]
                                  [--ct_minutes 55] [--cd_minutes 20] [--parallel]
                                  [--teacher <dp run>/checkpoints/latest] [extra train.py overrides ...]

Methods, all on the same demos, backbone size and 50 test seeds:
  dp  Diffusion Policy (experiment=pusht_state_cpu), DDIM-16 inference: the teacher
  ct  teacher-free consistency training (experiment=pusht_state_cpu_consistency), one step
  cd  consistency distillation of the dp checkpoint (experiment=pusht_state_cpu_distill), one step

--parallel trains dp and ct side by side with one thread each (2 cores), then distills.
A long run (an hour or more on 2 cores); not part of CI. Prints each learning curve (test score of
the periodic rollouts) and the final table; writes JSON to bench/results/pusht_quality.json.
Goals: dp mean_score >= 0.8 (Diffusion Policy issue); one-step consistency within 0.05 of dp's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = {"dp": "pusht_state_cpu", "ct": "pusht_state_cpu_consistency", "cd": "pusht_state_cpu_distill"}
INFERENCE = {"dp": "DDIM-16", "ct": "1 step", "cd": "1 step (LCM)"}


def start(cmd: list[str], threads: int | None = None, log: Path | None = None) -> subprocess.Popen:
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = open(log, "w") if log else None  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT if out else None)


def wait(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, proc.args))}")


def train_cmd(py: str, method: str, args, run_dir: Path, minutes: float, extra: list[str]) -> list[str]:
    return [py, "train.py", f"experiment={EXPERIMENTS[method]}", f"task.dataset.zarr_path={args.data}",
            f"training.max_train_minutes={minutes}", f"hydra.run.dir={run_dir}", *extra, *args.overrides]


def evaluate(py: str, run_dir: Path) -> dict:
    eval_dir = run_dir / "eval_50"
    wait(start([py, "eval.py", "--checkpoint", str(run_dir / "checkpoints" / "latest"),
                "--output_dir", str(eval_dir), "n_test=50", "n_train=0", "n_test_vis=4"]))
    return json.loads((REPO / eval_dir / "eval_log.json").read_text())


def summary(method: str, run_dir: Path, minutes: float, final: dict) -> dict:
    logs = [json.loads(line) for line in (REPO / run_dir / "logs.jsonl").read_text().splitlines()]
    curve = [(r["epoch"], r["global_step"], r["test/mean_score"], r.get("test/success_rate"))
             for r in logs if "test/mean_score" in r]
    steps = max((r.get("global_step", 0) for r in logs), default=0)
    return {"method": method, "experiment": EXPERIMENTS[method], "inference": INFERENCE[method],
            "train_minutes": minutes, "train_steps": steps, "curve": curve,
            "test_mean_score_50": final["test/mean_score"], "test_success_rate_50": final["test/success_rate"],
            "run_dir": str(run_dir)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="dp", help="comma-separated subset of dp,ct,cd")
    parser.add_argument("--episodes", type=int, default=150)
    parser.add_argument("--minutes", type=float, default=55, help="dp training budget")
    parser.add_argument("--ct_minutes", type=float, default=55)
    parser.add_argument("--ct_total_steps", type=int, default=None,
                        help="steps over which ct's grid grows (default: the config's)")
    parser.add_argument("--cd_minutes", type=float, default=20)
    parser.add_argument("--parallel", action="store_true", help="train dp and ct at once, one thread each")
    parser.add_argument("--teacher", default=None, help="an existing dp checkpoint: skip training dp")
    parser.add_argument("--reuse", action="store_true",
                        help="do not retrain a method whose run directory already has checkpoints/latest")
    parser.add_argument("--data", default="data/pusht/pusht_expert.zarr")
    parser.add_argument("--regenerate", action="store_true", help="make the demos even if the store exists")
    parser.add_argument("--run_root", default="outputs/bench/pusht_quality")
    parser.add_argument("--out", default="bench/results/pusht_quality.json")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    if unknown := set(methods) - set(EXPERIMENTS):
        parser.error(f"unknown method(s) {sorted(unknown)}; known: {sorted(EXPERIMENTS)}")
    py, root = sys.executable, Path(args.run_root)
    runs = {m: root / m for m in methods}

    t0 = time.time()
    if args.regenerate or not (REPO / args.data).exists():
        wait(start([py, "-m", "policylab.data.generate.pusht", f"n={args.episodes}", f"out={args.data}", "seed=0"]))
    data_minutes = (time.time() - t0) / 60

    minutes: dict[str, float] = {}
    def trained(m: str) -> bool:
        return args.reuse and (REPO / runs[m] / "checkpoints" / "latest").exists()

    first = [m for m in ("dp", "ct") if m in methods and not (m == "dp" and args.teacher) and not trained(m)]
    budgets = {"dp": args.minutes, "ct": args.ct_minutes}
    extra = {"dp": [], "ct": [f"policy.total_steps={args.ct_total_steps}"] if args.ct_total_steps else []}
    if args.parallel and len(first) > 1:
        root.mkdir(parents=True, exist_ok=True)
        t = time.time()
        procs = [start(train_cmd(py, m, args, runs[m], budgets[m], extra[m]), threads=1,
                       log=root / f"{m}.train.log") for m in first]
        wait(*procs)
        minutes.update({m: (time.time() - t) / 60 for m in first})
    else:
        for m in first:
            t = time.time()
            wait(start(train_cmd(py, m, args, runs[m], budgets[m], extra[m])))
            minutes[m] = (time.time() - t) / 60
    teacher = args.teacher or str(root / "dp" / "checkpoints" / "latest")
    if "cd" in methods and not trained("cd"):
        t = time.time()
        wait(start(train_cmd(py, "cd", args, runs["cd"], args.cd_minutes, [f"policy.teacher={teacher}"])))
        minutes["cd"] = (time.time() - t) / 60

    rows = []
    for m in methods:
        run_dir = Path(teacher).parents[1] if m == "dp" and args.teacher else runs[m]
        row = summary(m, run_dir, minutes.get(m, float("nan")), evaluate(py, run_dir))
        row["reused"] = m not in minutes  # trained by an earlier run of this script (--reuse / --teacher)
        rows.append(row)
    result = {"episodes": args.episodes, "data_minutes": data_minutes, "rows": rows}
    out = REPO / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    for row in rows:
        print(f"\n{row['method']}: epoch  step  test/mean_score(20 seeds)  success")
        for epoch, step, score, success in row["curve"]:
            print(f"{epoch:9d} {step:5d} {score:26.3f} {success if success is not None else float('nan'):8.2f}")
    ref = next((r["test_mean_score_50"] for r in rows if r["method"] == "dp"), None)
    print(f"\n{'method':>6} {'inference':>13} {'train min':>9} {'steps':>6} {'mean_score@50':>14} "
          f"{'success@50':>11} {'vs dp':>7}")
    for r in rows:
        delta = f"{r['test_mean_score_50'] - ref:+7.3f}" if ref is not None else "      -"
        print(f"{r['method']:>6} {r['inference']:>13} {r['train_minutes']:9.1f} {r['train_steps']:6d} "
              f"{r['test_mean_score_50']:14.3f} {r['test_success_rate_50']:11.2f} {delta}")


if __name__ == "__main__":
    main()
