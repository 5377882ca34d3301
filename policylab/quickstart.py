"""The main job, end to end on a CPU within 10 minutes: expert demos -> train -> evaluate.

    python -m policylab.quickstart [--episodes 200] [--minutes 10] [--out outputs/quickstart]

1. the scripted PushT expert writes `--episodes` state-only demonstrations to a zarr ReplayBuffer,
   one generator process per free core,
2. `train.py experiment=pusht_quickstart` trains a small diffusion policy on one torch thread (a
   second thread made this 1.1M-parameter network slower: 9.8 against 16.4 steps/s on an idle
   2-core machine), bounded by what is left of `--minutes` after the demos and a reserve for the
   evaluation; its cosine schedule is fitted to that budget,
3. `eval.py` scores the EMA policy on `--n_test` test seeds (2 envs in parallel) and records videos,
then prints the score, the wall time of the whole quickstart (from `--started_at`, which `make
quickstart` sets before installing, so the install counts) and where the results are.
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

import numpy as np

from policylab.data.generate.pusht import SEEDS_KEY

EVAL_RESERVE_S = 75  # 10 seeds x 300 steps, Heun (17 network evaluations a chunk), 2 envs, plus start-up


def run(cmd: list[str], threads: int = 1) -> None:
    print("\n$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=torch_env(threads))


def torch_env(threads: int) -> dict:
    """The environment of a child process with `threads` torch (OpenMP/MKL) threads.

    Passive waiting: with OpenMP's default spin-waiting, two threads on a 2-core machine whose
    other core is busy stalled training (measured: 49 steps in 9 minutes against 208 in 40 s with
    one thread); passive, the same case cost 20 % against one thread (2.1 vs 2.7 steps/s at load 12).
    """
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", str(threads)),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def free_cores(sample_s: float = 1.0) -> int:
    """Cores idle right now, at least 1: measured from /proc/stat over `sample_s` seconds (the
    1-minute load average would still count `make`'s pip install), else from the load average."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        before = _cpu_ticks()
        time.sleep(sample_s)
        after = _cpu_ticks()
        idle = cores * (after[0] - before[0]) / max(after[1] - before[1], 1)
    except OSError:
        idle = cores - os.getloadavg()[0]
    return max(1, min(cores, round(idle)))


def _cpu_ticks() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of all CPUs since boot, from /proc/stat's first line."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return fields[3] + fields[4], sum(fields)


def make_demos(n: int, store: Path, workers: int) -> None:
    """n state-only PushT expert episodes in `store`, written by `workers` generator processes at once.

    Worker k writes its share (seeds from 10,000 k) to its own store, since a store has one writer;
    the parts are then copied into `store` in order, with their seeds. An existing complete `store`
    is kept (a second quickstart reuses its demos).
    """
    from policylab.data.replay_buffer import ReplayBuffer

    if store.exists() and ReplayBuffer.create_from_path(str(store)).n_episodes >= n:
        print(f"\n{store}: {n} demos already there", flush=True)
        return
    shares = [n // workers + (k < n % workers) for k in range(workers)]
    parts = [store.with_name(f"{store.stem}.part{k}.zarr") for k in range(workers)]
    procs = []
    for k, (share, part) in enumerate(zip(shares, parts)):
        cmd = [sys.executable, "-m", "policylab.data.generate.pusht", f"n={share}", f"out={part}",
               f"seed={10_000 * k}", "images=false"]
        print("\n$", " ".join(cmd), flush=True)
        procs.append(subprocess.Popen(cmd, env=torch_env(1)))
    if any(proc.wait() for proc in procs):
        raise SystemExit("generating the demos failed (see above)")
    merged = store.with_name(f"{store.stem}.merging.zarr")
    shutil.rmtree(merged, ignore_errors=True)
    with ReplayBuffer.create_from_path(str(merged), mode="w") as out:
        for part in parts:
            src = ReplayBuffer.create_from_path(str(part))
            seeds = np.asarray(src.meta[SEEDS_KEY][:])
            for i in range(src.n_episodes):  # each episode with its seed and checksums, as the generator writes it
                out.add_episode(src.get_episode(i), compressors="disk", episode_meta={SEEDS_KEY: seeds[i]})
    shutil.rmtree(store, ignore_errors=True)
    merged.rename(store)  # a killed merge leaves no half store under the name training reads
    for part in parts:
        shutil.rmtree(part)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)  # 100 scored 0.73, 200 0.97 (10 seeds, same budget)
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
    threads = free_cores()
    t0 = time.time()
    make_demos(args.episodes, data, threads)
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
    run(train, 1)  # the evaluation below runs one env process per core
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
