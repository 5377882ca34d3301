"""Does the one-step student close on its teacher when it is also distilled on the states its own
rollouts visit? A DAgger-style experiment on a trained one-step student (e.g. of
`bench/pusht_quality.py --methods onestep`), side by side with its control:

  demo      fine-tune on the endpoint term over demo windows only (more of the same training)
  onpolicy  fine-tune on the endpoint term over half demo windows, half observations recorded
            from the student's own rollouts (seeds 200000+, never the test seeds); each round
            records with the current student and adds to the pool, as DAgger aggregates

Each round: (record), `--steps` AdamW steps at `--lr` (cosine to 0, batch 64), then the score on
`--n_test` test seeds (100000..; the policy's noise seeded as in pusht_quality.py). The teacher
labels every observation with its sampler on the student's own noise, exactly as in training.
The variants run at once, one process and one thread each.

    python bench/pusht_onpolicy_distill.py --student <onestep run>/checkpoints/latest \\
        --teacher <edm run>/checkpoints/latest [--modes demo,onpolicy] [--rounds 1] [--steps 1000]
        [--lr 3e-4] [--n_record 200] [--n_test 450] [--data data/pusht/pusht_expert.zarr]

An experiment, not a training recipe: it needs the simulator during distillation. Writes
bench/results/pusht_onpolicy_distill.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RECORD_SEED = 200000  # rollouts that record observations; the test seeds start at 100000


def runner(cfg, n: int, start_seed: int, out_dir: Path):
    import hydra
    from omegaconf import OmegaConf

    from policylab.common.safe_config import check_config

    overrides = {"n_test": n, "test_start_seed": start_seed, "n_train": 0, "n_test_vis": 0, "n_train_vis": 0,
                 "n_envs": 10, "vector_env": "sync", "device": "cpu"}
    return hydra.utils.instantiate(check_config(OmegaConf.merge(cfg.task.env_runner, overrides), "task.env_runner"),
                                   output_dir=str(out_dir))


def record(student, cfg, n: int, start_seed: int, out_dir: Path) -> tuple[dict, float]:
    """The raw observations `student.predict_action` sees over `n` rollouts, and their score."""
    import torch

    seen, act = [], student.predict_action

    def recording(obs, **kwargs):
        seen.append({k: v.clone() for k, v in obs.items()})
        return act(obs, **kwargs)

    student.predict_action = recording
    try:
        with torch.no_grad():
            log = runner(cfg, n, start_seed, out_dir).run(student)
    finally:
        del student.predict_action
    return {k: torch.cat([o[k] for o in seen]) for k in seen[0]}, float(log["test/mean_score"])


def fine_tune(student, teacher, dataset, pool: dict | None, steps: int, lr: float, seed: int) -> float:
    """`steps` endpoint-term steps, batch 64 (32 demo + 32 pool observations with a pool); CPU minutes."""
    import torch

    t0 = time.process_time()
    generator = torch.Generator().manual_seed(seed)
    n_demo = 32 if pool else 64
    loader = torch.utils.data.DataLoader(dataset, batch_size=n_demo, shuffle=True, drop_last=True, generator=generator)
    optimizer = torch.optim.AdamW(student.model.parameters(), lr=lr, betas=(0.95, 0.999), weight_decay=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    student.train()
    batches = iter(loader)
    for _ in range(steps):
        try:
            obs = next(batches)["obs"]
        except StopIteration:
            batches = iter(loader)
            obs = next(batches)["obs"]
        if pool:
            pick = torch.randint(0, len(next(iter(pool.values()))), (64 - n_demo,), generator=generator)
            obs = {k: torch.cat([obs[k], pool[k][pick]]) for k in obs}
        nobs = student.normalize_obs(obs)
        with torch.no_grad():
            teacher_cond = teacher.encode_obs(nobs)
        loss = student.endpoint_loss(nobs, student.encode_obs(nobs), teacher_cond)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    student.eval()
    return (time.process_time() - t0) / 60


def worker(args) -> list[dict]:
    import hydra
    import torch

    from policylab.common.checkpoint import load_config
    from policylab.policies.base import BasePolicy

    torch.set_num_threads(1)
    torch.manual_seed(0)
    student, teacher = BasePolicy.from_checkpoint(args.student), BasePolicy.from_checkpoint(args.teacher)
    student.inference_sigmas = [student.sigma_max]
    object.__setattr__(student, "teacher", teacher)  # what on_train_start does after loading it
    cfg = load_config(args.student)
    dataset = hydra.utils.instantiate(cfg.task.dataset, zarr_path=args.data)
    out_dir = REPO / args.run_root / args.worker
    rows, pool = [], None

    def score() -> float:
        torch.manual_seed(0)
        with torch.no_grad():
            return float(runner(cfg, args.n_test, 100000, out_dir / "eval").run(student)["test/mean_score"])

    out_dir.mkdir(parents=True, exist_ok=True)
    rows_file = out_dir / "rows.jsonl"  # each round as it ends
    rows_file.write_text("")

    def add(row: dict) -> None:
        rows.append(row)
        with rows_file.open("a") as f:
            f.write(json.dumps(row) + "\n")

    if args.worker == args.modes.split(",")[0]:  # the starting student, once: every mode starts from it
        add({"mode": "start", "round": 0, "steps": 0, "mean_score": score(), "pool": 0})
    for r in range(1, args.rounds + 1):
        row = {"mode": args.worker, "round": r}
        if args.worker == "onpolicy":
            seen, row["recording_score"] = record(student, cfg, args.n_record, RECORD_SEED + (r - 1) * args.n_record,
                                                   out_dir / f"record_{r}")
            pool = seen if pool is None else {k: torch.cat([pool[k], seen[k]]) for k in pool}
        row["cpu_minutes"] = fine_tune(student, teacher, dataset, pool, args.steps, args.lr, seed=r)
        row |= {"steps": r * args.steps, "mean_score": score(), "pool": 0 if pool is None else len(next(iter(pool.values())))}
        add(row)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True, help="a one-step consistency_ctm checkpoint")
    parser.add_argument("--teacher", required=True, help="its diffusion_edm teacher's checkpoint")
    parser.add_argument("--modes", default="demo,onpolicy")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1000, help="fine-tuning steps per round")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--n_record", type=int, default=200, help="rollouts recorded per round")
    parser.add_argument("--n_test", type=int, default=450)
    parser.add_argument("--data", default="data/pusht/pusht_expert.zarr")
    parser.add_argument("--run_root", default="outputs/bench/pusht_onpolicy_distill")
    parser.add_argument("--out", default="bench/results/pusht_onpolicy_distill.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("ROWS " + json.dumps(worker(args)), flush=True)
        return
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - {"demo", "onpolicy"}:
        parser.error(f"unknown mode(s) {sorted(unknown)}; known: demo, onpolicy")
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = {m: subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--worker", m], cwd=REPO,
                                 env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
             for m in modes}
    rows = []
    for m, proc in procs.items():
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{m} failed ({proc.returncode})")
        rows += json.loads(next(line for line in out.splitlines() if line.startswith("ROWS "))[5:])
    result = {"student": str(args.student), "teacher": str(args.teacher), "steps_per_round": args.steps, "lr": args.lr,
              "n_record": args.n_record, "n_test": args.n_test, "rows": rows}
    (REPO / args.out).parent.mkdir(parents=True, exist_ok=True)
    (REPO / args.out).write_text(json.dumps(result, indent=2))
    print(f"\n{'mode':<10}{'round':>6}{'steps':>7}{'pool':>7}{'score':>8}{'cpu min':>9}")
    for r in rows:
        print(f"{r['mode']:<10}{r['round']:>6}{r['steps']:>7}{r['pool']:>7}{r['mean_score']:>8.3f}"
              f"{r.get('cpu_minutes', 0):>9.1f}")


if __name__ == "__main__":
    main()
