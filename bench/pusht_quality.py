"""PushT state quality per training budget: expert demos -> train each method -> evaluate each
inference budget on 50 test seeds, with latency per chunk and the learning curve.

    python bench/pusht_quality.py [--methods edm,ctm] [--episodes 150] [--minutes edm=55,ctm=20]
                                  [--steps edm=4158] [--epochs edm=36] [--backbone config|small]
                                  [--task state|image]
                                  [--parallel] [--choice_only] [--reuse] [--eval_only] [--out <json>]
                                  [--n_test 50] [--last_k 1]
                                  [--teacher <dp run>/checkpoints/latest] [extra train.py overrides ...]

Methods, all on the same demos, backbone (--backbone: the experiments' 4.6M UNet, or the quickstart's
1.1M one), horizons and 50 test seeds (100000..100049):
  dp   Diffusion Policy, DDPM training (experiment=pusht_state_cpu): the DDPM teacher
  ct   teacher-free consistency training (experiment=pusht_state_cpu_consistency)
  cd   LCM-style consistency distillation of dp (experiment=pusht_state_cpu_distill)
  edm  EDM / Karras diffusion policy (experiment=pusht_state_cpu_edm): the EDM teacher
  ctm  CTM distillation of edm (experiment=pusht_state_cpu_ctm), warm-started from it, with the
       endpoint term (policy.endpoint_weight=0: Consistency Policy's loss)
  onestep  the same student on the endpoint term alone, lr 1e-3 (experiment=pusht_state_cpu_ctm_onestep)
  onpolicy  onestep fine-tuned on its own rollouts' observations, labelled by edm
       (experiment=pusht_state_cpu_onestep_onpolicy, workspace=onpolicy_distill)
`--task image` trains edm and ctm on image PushT (96x96 frames, ResNet18: pusht_image_cpu_edm/_ctm).

Budgets are stated in optimizer steps and the learner's CPU minutes (`learner_cpu_seconds` in the
run's logs.jsonl: user + system time of training, evaluations excluded, whatever the machine's load
does to wall time; runs from before that clock give their learner wall minutes); a student's budget
is counted on top of its teacher's, and an on-policy run's on top of its student's (`total_*`).
Runs trained elsewhere (e.g. by docs/one_step.md's commands) join the table with `--runs m=<dir>`.
The closing "choice" table is the README's: one row per way to act, from this one run. Each trained method is evaluated at each of its inference budgets
(network evaluations per chunk, NFE): 1 and 3 for the consistency students, the teachers at their
full budget (DDIM-16, Heun 17 NFE) and at 3 NFE (what a short teacher chain gives without
distillation). Latency: median ms per `predict_action` for one observation, 1 thread.
The curve is the periodic rollout score during training (20 test seeds, logs.jsonl).
Evaluations seed the policy's sampling noise (torch.manual_seed(0)), so a checkpoint's score is
reproducible; `--n_test 150 --last_k 3` gives the steadier measure (450 episodes a policy). For a
one-step student the table adds its distance, in action units, from the teacher's sampler on the same noise.

A long run (an hour or more on 2 cores); not part of CI. Writes the JSON (default
<bench root>/results/pusht_quality.json; relative --out, --data, --run_root and --runs are relative to
the checkout) and prints the table. Goal: a one-step policy within 0.05 mean_score of its teacher.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._paths import add_out_argument, bench_dir, shown, write_json

TASKS = {  # --task -> method -> experiment
    "state": {"dp": "pusht_state_cpu", "ct": "pusht_state_cpu_consistency", "cd": "pusht_state_cpu_distill",
              "edm": "pusht_state_cpu_edm", "ctm": "pusht_state_cpu_ctm", "onestep": "pusht_state_cpu_ctm_onestep",
              "onpolicy": "pusht_state_cpu_onestep_onpolicy"},
    "image": {"edm": "pusht_image_cpu_edm", "ctm": "pusht_image_cpu_ctm"},
}
TEACHER = {"cd": "dp", "ctm": "edm", "onestep": "edm", "onpolicy": "edm"}
STARTS_FROM = {"onpolicy": "onestep"}  # the student run an on-policy run fine-tunes
CHAIN3 = [80.0, 0.8, 0.2]  # the consistency chains' three levels
# method -> [(label, NFE, policy attributes set before evaluating)]
VARIANTS = {
    "dp": [("DDIM-16", 16, {"num_inference_steps": 16}), ("DDIM-3", 3, {"num_inference_steps": 3})],
    "ct": [("1 step", 1, {"inference_sigmas": [80.0]}), ("3 steps", 3, {"inference_sigmas": CHAIN3})],
    "cd": [("LCM 1", 1, {"num_inference_steps": 1}), ("LCM 3", 3, {"num_inference_steps": 3})],
    "edm": [("Heun 17 NFE", 17, {"sampler": "heun", "num_inference_steps": 9}),
            ("Heun 3 NFE", 3, {"sampler": "heun", "num_inference_steps": 2})],
    "ctm": [("1 step", 1, {"inference_sigmas": [80.0]}), ("3 steps", 3, {"inference_sigmas": CHAIN3})],
    "onestep": [("1 step", 1, {"inference_sigmas": [80.0]})],  # no chain: the CTM term is off
    "onpolicy": [("1 step", 1, {"inference_sigmas": [80.0]})],
}
DEFAULT_MINUTES = {"dp": 55, "ct": 55, "cd": 20, "edm": 55, "ctm": 20, "onestep": 45, "onpolicy": 60}
# The README's choice table: (method, inference) -> how a user would name the way to act
CHOICES = {("dp", "DDIM-16"): "Diffusion Policy: DDPM training, DDIM 16 steps",
           ("edm", "Heun 17 NFE"): "EDM teacher, Heun sampler",
           ("ctm", "3 steps"): "CTM student, 3 steps",
           ("onestep", "1 step"): "one-step student (endpoint term)",
           ("onpolicy", "1 step"): "one-step student + on-policy rounds"}
# Backbones: "config" is what the experiment sets (state: a 4.6M UNet, batch 128, lr 3e-4; image:
# the 1.1M UNet + ResNet18, batch 64, lr 1e-3 / 1e-4 for the student); "small" the quickstart's 1.1M
# UNet (batch 64; lr 1e-3 for the methods trained from scratch, the students keep their experiments' lr), cheap
# enough on 2 CPU cores for the teachers' curves to flatten.
BACKBONES = {
    "config": {"all": [], "scratch": []},
    "small": {"all": ["policy.model.down_dims=[32,64,128]", "policy.model.diffusion_step_embed_dim=32",
                      "dataloader.batch_size=64", "val_dataloader.batch_size=64"],
              "scratch": ["optimizer.lr=1e-3", "lr_scheduler.warmup_steps=50"]},
}


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    print("$", " ".join(map(str, cmd)), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait(proc: subprocess.Popen) -> None:
    """Wait for `proc`; a failure stops the bench, naming the command."""
    if proc.wait() != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, proc.args))}")


def parse_budget(text: str | None, default: dict) -> dict:
    out = dict(default)
    for item in filter(None, (text or "").split(",")):
        key, _, value = item.partition("=")
        out[key] = float(value)
    return out


def train(method: str, args, run_dir: Path, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "train.py", f"experiment={TASKS[args.task][method]}", f"task.dataset.zarr_path={args.data}",
           f"training.max_train_minutes={args.minutes[method]}", f"hydra.run.dir={run_dir}",
           "checkpoint.topk=1000", *extra]  # keep every checkpoint: --last_k picks by time
    if method in STARTS_FROM:  # the policy is the student's: no backbone, epochs or supervised overrides
        if method in args.steps:
            cmd.append(f"training.num_steps={int(args.steps[method])}")
    else:
        backbone = BACKBONES[args.backbone]
        cmd[4:4] = backbone["all"] + (backbone["scratch"] if method not in TEACHER else [])
        cmd += args.overrides
        if method in args.steps:
            cmd.append(f"training.max_train_steps={int(args.steps[method])}")
        if method in args.epochs:  # the LR schedule's length (cosine over num_epochs)
            cmd.append(f"training.num_epochs={int(args.epochs[method])}")
    run_dir.mkdir(parents=True, exist_ok=True)
    return start(cmd, run_dir.parent / f"{method}.train.log")


def training_cost(run_dir: Path) -> dict:
    """{"steps", "minutes", "clock"}: the run's optimizer steps and learner minutes from its logs.jsonl,
    on the CPU clock when it logged one ("cpu"), else its learner wall clock ("wall")."""
    logs = read_logs(run_dir)
    if not logs:
        raise SystemExit(f"{run_dir}: no logs.jsonl, so no training cost")
    last = logs[-1]
    clock = "cpu" if "learner_cpu_seconds" in last else "wall"
    seconds = last.get("learner_cpu_seconds", last.get("learner_seconds", float("nan")))
    return {"steps": max(r.get("global_step", 0) for r in logs), "minutes": seconds / 60, "clock": clock}


def lineage(method: str) -> list[str]:
    """The runs a method's policy needed, itself first: onpolicy -> onestep -> edm."""
    chain = [method]
    while (up := STARTS_FROM.get(chain[-1]) or TEACHER.get(chain[-1])) is not None:
        chain.append(up)
    return chain


def read_logs(run_dir: Path) -> list[dict]:
    path = REPO / run_dir / "logs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def curve(run_dir: Path) -> list[list]:
    return [[r["global_step"], r["test/mean_score"], r.get("test/success_rate")]
            for r in read_logs(run_dir) if "test/mean_score" in r]


def last_checkpoints(run_dir: Path, k: int) -> list[Path]:
    """checkpoints/latest for k = 1, else the k saved epoch=... checkpoints with the highest epochs."""
    if k < 1:
        raise ValueError(f"--last_k must be >= 1, got {k}")
    if k == 1:
        return [run_dir / "checkpoints" / "latest"]

    def epoch(path: Path) -> int:  # epoch=NNNN-... (supervised) or step=NNNN-... (on-policy rounds)
        return int(path.name.split("-")[0].partition("=")[2])

    def weights(path: Path) -> str:
        return json.loads((path / "checksums.json").read_text())["model.safetensors"]

    from omegaconf import OmegaConf

    every = OmegaConf.load(run_dir / "checkpoints" / "latest" / "config.yaml").training.checkpoint_every
    saved = sorted([*(run_dir / "checkpoints").glob("epoch=*"), *(run_dir / "checkpoints").glob("step=*")],
                   key=epoch)[-k:]
    gaps = {epoch(b) - epoch(a) for a, b in itertools.pairwise(saved)}
    # top-k retention deletes the worst-scoring checkpoints: a set with a hole, or without the final
    # weights, would be chosen by score, not by time
    if len(saved) < k or gaps - {every} or weights(saved[-1]) != weights(run_dir / "checkpoints" / "latest"):
        raise SystemExit(f"{run_dir}: the saved checkpoints {[p.name for p in saved]} are not the run's last {k} "
                         "(top-k retention deleted some); retrain with checkpoint.topk raised")
    return saved


def load_for_inference(ckpt: Path, settings: dict):
    """(policy with `settings` applied, its run config), on one CPU thread."""
    import torch

    from policylab.common.checkpoint import load_config
    from policylab.policies.base import BasePolicy

    torch.set_num_threads(1)
    policy = BasePolicy.from_checkpoint(ckpt)
    for key, value in settings.items():
        if not hasattr(policy, key):
            raise AttributeError(f"{type(policy).__name__} has no inference setting {key!r}")
        setattr(policy, key, value)
    return policy, load_config(ckpt)


def evaluate(ckpt: Path, settings: dict, n_test: int, out_dir: Path) -> dict:
    """Mean score and success over `n_test` test seeds with `settings` applied, and the CPU minutes it took."""
    import hydra
    from omegaconf import OmegaConf

    from policylab.common.safe_config import check_config

    policy, cfg = load_for_inference(ckpt, settings)
    runner_cfg = OmegaConf.merge(cfg.task.env_runner, {"n_test": n_test, "n_train": 0, "n_test_vis": 0,
                                                       "n_train_vis": 0, "n_envs": 10, "vector_env": "sync",
                                                       "device": "cpu"})
    runner = hydra.utils.instantiate(check_config(runner_cfg, "task.env_runner"), output_dir=str(out_dir))
    # the runner seeds each episode's initial state and the policy's sampling noise from the episode's
    # seed, so this score is eval.py's on the same seeds
    t0 = time.process_time()
    log = runner.run(policy)
    return {"mean_score": float(log["test/mean_score"]), "success_rate": float(log["test/success_rate"]),
            "eval_cpu_minutes": (time.process_time() - t0) / 60}


def latency_ms(ckpt: Path, settings: dict) -> float:
    """Median ms of `predict_action` for one observation (one action chunk), 1 thread, after 3 warm-ups."""
    import torch

    policy, cfg = load_for_inference(ckpt, settings)
    obs = {k: torch.rand(1, cfg.n_obs_steps, *v["shape"]) for k, v in policy.shape_meta["obs"].items()}
    times = []
    with torch.no_grad():
        for i in range(23):
            t = time.perf_counter()
            policy.predict_action(obs, generator=torch.Generator().manual_seed(i))
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times[3:])


def score_all(jobs: list[tuple], workers: int) -> list[dict]:
    """`evaluate(*job)` for each job, on `workers` processes (1 thread each) when more than one."""
    if workers <= 1:
        return [evaluate(*job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(evaluate, *zip(*jobs)))


def one_step_error(student_ckpt: Path, teacher_ckpt: Path, data: str, n: int = 512) -> dict:
    """How far the one-step student lands from its teacher's sampler on the same noise, on held-out
    windows: the executed actions' mean Euclidean distance per chunk, in action units (PushT: px),
    median and 90th percentile; and the teacher's own spread (two noises for one observation) for scale.
    A far less noisy measure of distillation than rollout scores."""
    import hydra
    import torch

    from policylab.common.checkpoint import load_config
    from policylab.policies.base import BasePolicy

    torch.set_num_threads(1)
    student, teacher = BasePolicy.from_checkpoint(student_ckpt), BasePolicy.from_checkpoint(teacher_ckpt)
    student.inference_sigmas = [student.sigma_max]
    dataset_cfg = load_config(student_ckpt).task.dataset
    dataset = hydra.utils.instantiate(dataset_cfg, zarr_path=data).get_validation_dataset()
    pick = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:n]
    obs = torch.utils.data.default_collate([dataset[int(i)]["obs"] for i in pick])

    def act(policy, seed):
        return policy.predict_action(obs, generator=torch.Generator().manual_seed(seed))["action"]

    def quantiles(a, b):
        d = (a - b).norm(dim=-1).mean(dim=-1)
        return {"median": float(d.median()), "p90": float(d.quantile(0.9))}

    target = act(teacher, 0)
    return {"windows": len(pick), "student_vs_teacher": quantiles(act(student, 0), target),
            "teacher_vs_teacher": quantiles(act(teacher, 1), target)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="edm,ctm", help="comma-separated subset of the --task's methods")
    parser.add_argument("--episodes", type=int, default=150)
    parser.add_argument("--minutes", default=None, help=f"per-method wall budgets, e.g. edm=55 (default {DEFAULT_MINUTES})")
    parser.add_argument("--steps", default=None, help="per-method optimizer-step caps, e.g. edm=4158,ctm=1500")
    parser.add_argument("--epochs", default=None, help="per-method num_epochs (the LR schedule), e.g. edm=36")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="config")
    parser.add_argument("--task", choices=sorted(TASKS), default="state", help="state PushT or image PushT (96x96)")
    parser.add_argument("--ct_total_steps", type=int, default=None, help="steps over which ct's grid grows")
    parser.add_argument("--parallel", action="store_true",
                        help="train the teacher-free methods at once, and score on 2 processes, 1 thread each")
    parser.add_argument("--choice_only", action="store_true",
                        help="evaluate only the README choice table's ways to act (e.g. not DDIM-3)")
    parser.add_argument("--teacher", default=None, help="an existing dp checkpoint: skip training dp")
    parser.add_argument("--reuse", action="store_true", help="do not retrain a method whose checkpoints/latest exists")
    parser.add_argument("--eval_only", action="store_true", help="evaluate what exists; train nothing")
    parser.add_argument("--runs", default=None, help="per-method run directories, e.g. edm=<dir> (default <run_root>/<method>)")
    parser.add_argument("--n_test", type=int, default=50)
    parser.add_argument("--last_k", type=int, default=1,
                        help="score each variant as the mean over the run's last K saved checkpoints "
                             "(1: checkpoints/latest), which averages out one checkpoint's luck")
    parser.add_argument("--data", type=Path, default=bench_dir("pusht_quality") / "pusht_expert.zarr",
                        help="the demos, generated there if missing (default: %(default)s)")
    parser.add_argument("--run_root", type=Path, default=bench_dir("pusht_quality"),
                        help="<run_root>/<method> is each method's run (default: %(default)s)")
    add_out_argument(parser, "pusht_quality")
    parser.add_argument("overrides", nargs="*")
    return parser


def main():
    parser = build_parser()
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    experiments = TASKS[args.task]
    if unknown := set(methods) - set(experiments):
        parser.error(f"unknown method(s) {sorted(unknown)} for --task {args.task}; known: {sorted(experiments)}")
    args.minutes, args.steps = parse_budget(args.minutes, DEFAULT_MINUTES), parse_budget(args.steps, {})
    args.epochs = parse_budget(args.epochs, {})
    # a relative path is relative to the checkout, where train.py runs
    root, args.data, args.out = REPO / args.run_root, REPO / args.data, REPO / args.out
    runs = {m: root / m for m in experiments}
    if args.teacher:
        runs["dp"] = REPO / Path(args.teacher).parents[1]
    for item in filter(None, (args.runs or "").split(",")):
        method, _, path = item.partition("=")
        runs[method] = REPO / path

    if not args.data.exists():
        root.mkdir(parents=True, exist_ok=True)
        gen = start([sys.executable, "-m", "policylab.data.generate.pusht", f"n={args.episodes}",
                     f"out={args.data}", "seed=0"], root / "generate.log")
        wait(gen)

    def needs_training(m: str) -> bool:
        done = (runs[m] / "checkpoints" / "latest").exists()
        return not args.eval_only and not (done and (args.reuse or (m == "dp" and args.teacher)))

    extra = {"ct": [f"policy.total_steps={args.ct_total_steps}"] if args.ct_total_steps else []}
    stages = ([m for m in methods if m not in TEACHER], [m for m in methods if m in TEACHER and m not in STARTS_FROM],
              [m for m in methods if m in STARTS_FROM])
    for stage in stages:
        todo = [m for m in stage if needs_training(m)]
        groups = [todo] if args.parallel else [[m] for m in todo]
        for group in groups:
            procs = {}
            for m in group:
                teacher = runs[TEACHER[m]] / "checkpoints" / "latest" if m in TEACHER else None
                if m in STARTS_FROM:
                    sources = [f"distill.student={runs[STARTS_FROM[m]] / 'checkpoints' / 'latest'}",
                               f"distill.teacher={teacher}"]
                else:
                    sources = [f"policy.teacher={teacher}"] if teacher else []
                procs[m] = train(m, args, runs[m], extra.get(m, []) + sources)
            for proc in procs.values():
                wait(proc)  # the cost is read from each run's logs.jsonl (training_cost)

    # every (method, inference, checkpoint) scored first, in parallel with --parallel; then each
    # variant's latency, one process alone, so no score run shares the CPU with a timing
    variants = [(m, label, nfe, settings) for m in methods for label, nfe, settings in VARIANTS[m]
                if not args.choice_only or (m, label) in CHOICES]
    ckpts = {m: last_checkpoints(runs[m], args.last_k) for m in methods}
    jobs = [(ckpt, settings, args.n_test, runs[m] / f"eval_{args.n_test}_{nfe}_{ckpt.name}")
            for m, _, nfe, settings in variants for ckpt in ckpts[m]]
    scores = iter(score_all(jobs, 2 if args.parallel else 1))
    rows = []
    for m, label, nfe, settings in variants:
        costs = [training_cost(runs[up]) for up in lineage(m)]
        results = [next(scores) for _ in ckpts[m]]
        result = {k: statistics.mean(r[k] for r in results) for k in results[0]}
        result["latency_ms"] = latency_ms(ckpts[m][-1], settings)
        if len(ckpts[m]) > 1:
            result["checkpoints"] = {ckpt.name: r["mean_score"] for ckpt, r in zip(ckpts[m], results)}
        row = {"method": m, "experiment": experiments[m], "inference": label, "nfe": nfe, **result,
               "run": shown(runs[m]), "train_steps": costs[0]["steps"], "train_cpu_minutes": costs[0]["minutes"],
               "cost_clocks": [c["clock"] for c in costs], "teacher": TEACHER.get(m),
               "total_steps": sum(c["steps"] for c in costs),
               "total_cpu_minutes": sum(c["minutes"] for c in costs), "curve": curve(runs[m])}
        if TEACHER.get(m) == "edm" and nfe == 1:  # the jump from the very noise the teacher solves from
            row["one_step_error"] = one_step_error(ckpts[m][-1], runs[TEACHER[m]] / "checkpoints" / "latest",
                                                   str(args.data))
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    kept = [r for r in previous.get("rows", []) if r.get("method") not in methods and "nfe" in r]
    # rows of the earlier benchmark (one inference budget per method, before this table existed)
    earlier = previous.get("earlier_runs") or [r for r in previous.get("rows", []) if "nfe" not in r]
    for row in rows:
        row["backbone"], row["task"] = args.backbone, args.task
    result = {"episodes": args.episodes, "n_test": args.n_test, "last_k": args.last_k, "rows": kept + rows,
              "earlier_runs": earlier}
    write_json(args.out, result)
    print_table(result["rows"])
    print_choices(result["rows"])


def print_choices(rows: list[dict]) -> None:
    """The README's choice table (markdown): one row per way to act that this run measured."""
    chosen = [(CHOICES[(r["method"], r["inference"])], r) for r in rows if (r["method"], r["inference"]) in CHOICES]
    if not chosen:
        return
    print("\n| way to act | score | network evaluations | ms per chunk (1 thread) | training CPU min (incl. teachers) |")
    print("|---|---|---|---|---|")
    for name, r in chosen:
        print(f"| {name} | {r['mean_score']:.3f} | {r['nfe']} | {r['latency_ms']:.1f} | "
              f"{r['total_cpu_minutes']:.1f} ({r['total_steps']:,} steps) |")


def print_table(rows: list[dict]) -> None:
    best = {}
    for r in rows:
        if r["method"] not in TEACHER:
            best[r["method"]] = max(best.get(r["method"], -1), r["mean_score"] if r["nfe"] > 3 else -1)
    print(f"\n{'method':>6} {'inference':>12} {'NFE':>4} {'steps':>6} {'CPU min':>8} {'total steps':>11} "
          f"{'mean_score':>10} {'success':>8} {'ms/chunk':>9} {'vs teacher':>10}")
    for r in rows:
        ref = best.get(TEACHER.get(r["method"], r["method"]))
        delta = f"{r['mean_score'] - ref:+10.3f}" if ref is not None and ref >= 0 else f"{'-':>10}"
        print(f"{r['method']:>6} {r['inference']:>12} {r['nfe']:4d} {r['train_steps'] or 0:6d} "
              f"{r['train_cpu_minutes'] or float('nan'):8.1f} {r['total_steps']:11d} {r['mean_score']:10.3f} "
              f"{r['success_rate']:8.2f} {r['latency_ms']:9.1f} {delta}")
    for r in rows:
        if err := r.get("one_step_error"):
            print(f"{r['method']} one step vs its teacher on the same noise ({err['windows']} held-out windows, "
                  f"action units): median {err['student_vs_teacher']['median']:.2f}, "
                  f"p90 {err['student_vs_teacher']['p90']:.2f}; the teacher vs itself on another noise: "
                  f"median {err['teacher_vs_teacher']['median']:.2f}, p90 {err['teacher_vs_teacher']['p90']:.2f}")
    for m in dict.fromkeys(r["method"] for r in rows):
        points = next(r["curve"] for r in rows if r["method"] == m)
        print(f"{m} curve (step: score@20 seeds): " + ", ".join(f"{s}: {v:.3f}" for s, v, _ in points))


if __name__ == "__main__":
    main()
