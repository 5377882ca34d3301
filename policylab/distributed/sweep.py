"""Multi-seed sweeps as ray tasks, and the paper's way of reporting them.

    runs = expand_runs(seeds=[42, 43], overrides=["policy=diffusion_unet,diffusion_transformer", ...])
    results = run_sweep(runs, config_dir, sweep_dir, train_fn)      # one ray task per run
    summary = summarize(results, monitor_key="test/mean_score")     # per run: max, mean of last k

One run per seed (times every combination of comma-separated override values, Hydra's sweep
syntax), each composed with Hydra's compose API plus `training.seed=<seed>` and trained in
`<sweep_dir>/<run name>/`. An override may interpolate the seed, so runs can differ per seed:
`task.env_runner.test_start_seed='${calc:${training.seed}*100000+100000}'` gives each seed its own
test set, as Diffusion Policy's ray multirun did.

Diffusion Policy reports, per task, the max over checkpoints and the mean of the last k
evaluations of the monitored metric, each averaged over seeds (paper §5, "max / avg of last 10").
`summarize` computes both per run, then their mean and std across the runs that finished. A run
that raises (or whose worker dies) is reported as failed with its error; the others go on.

Runs read and write their run directories from the ray workers, so on a cluster the sweep
directory and the data must be on a file system that every node sees at the same path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from policylab.common.config import compose
from policylab.common.logging import read_logs

TrainFn = Callable[[DictConfig, str], Any]


@dataclasses.dataclass
class RunSpec:
    """One training run of a sweep."""

    name: str                 # its directory under the sweep dir, e.g. "seed_42" or "v1_seed_42"
    seed: int
    variant: dict[str, str]   # the swept overrides that pick this run's configuration ({} for seeds only)
    overrides: list[str]      # every Hydra override of the run, `training.seed=<seed>` last


@dataclasses.dataclass
class RunResult:
    spec: RunSpec
    run_dir: Path
    status: str               # "finished" | "failed"
    error: str | None = None
    seconds: float = 0.0      # from submission to the end, waiting for a free CPU included


def parse_seeds(text: str) -> list[int]:
    """"42,43,44" -> [42, 43, 44]; duplicates are an error (two runs would share a directory)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must list distinct integers, got {text!r}")
    return seeds


def expand_runs(seeds: Sequence[int], overrides: Sequence[str]) -> list[RunSpec]:
    """Seeds x every combination of swept values (`key=a,b`), in seed-major order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    if any(o.key_or_group == "training.seed" for o in parsed):
        raise ValueError("set the seeds with --seeds, not with a training.seed override")
    # Non-swept overrides are kept verbatim: re-serializing them would escape `${...}`.
    fixed = [text for text, o in zip(overrides, parsed) if not o.is_sweep_override()]
    axes = [[(o.get_key_element(), value) for value in o.sweep_string_iterator()]
            for o in parsed if o.is_sweep_override()]
    variants = [dict(choice) for choice in itertools.product(*axes)]
    runs = []
    for seed in seeds:
        for i, variant in enumerate(variants):
            name = f"seed_{seed}" if len(variants) == 1 else f"v{i}_seed_{seed}"
            swept = [f"{key}={value}" for key, value in variant.items()]
            runs.append(RunSpec(name, seed, variant, [*fixed, *swept, f"training.seed={seed}"]))
    return runs


def compose_config(config_dir: str | Path, overrides: Sequence[str], config_name: str = "train",
                   with_hydra: bool = False) -> DictConfig:
    """The config `train.py <overrides>` would run, composed with Hydra's compose API."""
    return compose(overrides, config_name=config_name, config_dir=config_dir, return_hydra_config=with_hydra)


def default_sweep_dir(config_dir: str | Path, overrides: Sequence[str]) -> Path:
    """`hydra.sweep.dir` of the composed config (`outputs/<date>/<time>_multirun` by default)."""
    from hydra.core.hydra_config import HydraConfig

    cfg = compose_config(config_dir, overrides, with_hydra=True)
    HydraConfig.instance().set_config(cfg)
    return Path(str(cfg.hydra.sweep.dir))


def resolved_run_config(config_dir: str | Path, spec: RunSpec) -> DictConfig:
    cfg = compose_config(config_dir, spec.overrides)
    OmegaConf.resolve(cfg)  # here, so a bad interpolation fails before any task starts
    return cfg


def run_sweep(runs: Sequence[RunSpec], config_dir: str | Path, sweep_dir: str | Path, train_fn: TrainFn,
              num_cpus_per_run: float = 1.0, address: str | None = None,
              log: Callable[[str], None] = print, num_gpus_per_run: float = 0.0,
              progress_every: float = 60.0) -> list[RunResult]:
    """Train every run as a ray task (a local ray instance unless `address` names a cluster). A run
    sees only the GPUs ray gives it: `num_gpus_per_run` > 0 for `training.device=cuda|auto` on GPUs.
    `log` hears when each run starts and ends, and every `progress_every` seconds how far each
    running run has got (its last step and monitored metric)."""
    import ray

    sweep_dir = Path(sweep_dir).resolve()
    configs = {spec.name: resolved_run_config(config_dir, spec) for spec in runs}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if address is None:
        ray.init(include_dashboard=False)
    else:
        ray.init(address=address)
    log(f"[sweep] {len(runs)} runs in {sweep_dir}, {num_cpus_per_run:g} CPU(s) each; each writes <run>/train.log")
    try:
        # No retries: a run that crashed once would crash again, and a retry would reuse its dir.
        task = ray.remote(_run_one).options(num_cpus=num_cpus_per_run, num_gpus=num_gpus_per_run, max_retries=0)
        pending = {}
        for spec in runs:
            run_dir = sweep_dir / spec.name
            _write_run_config(run_dir, configs[spec.name], spec.overrides)
            ref = task.remote(train_fn, OmegaConf.to_container(configs[spec.name]), str(run_dir), os.getcwd(),
                              num_cpus_per_run)
            pending[ref] = _Pending(spec, run_dir, str(configs[spec.name].checkpoint.monitor_key))
        results = _collect(pending, log, progress_every)
    finally:
        ray.shutdown()
    order = {spec.name: i for i, spec in enumerate(runs)}
    return sorted(results, key=lambda r: order[r.spec.name])


@dataclasses.dataclass
class _Pending:
    spec: RunSpec
    run_dir: Path
    monitor_key: str
    submitted: float = dataclasses.field(default_factory=time.monotonic)
    started: float | None = None
    log_size: int = -1  # of train.log at submission (-1: none); it grows once the run starts

    def __post_init__(self):
        log_file = self.run_dir / "train.log"
        self.log_size = log_file.stat().st_size if log_file.exists() else -1

    def has_started(self) -> bool:
        log_file = self.run_dir / "train.log"
        return log_file.exists() and log_file.stat().st_size != self.log_size


POLL_SECONDS = 1.0


def _collect(pending: dict, log: Callable[[str], None], progress_every: float) -> list[RunResult]:
    """Wait for every run; log each start, each end, and every `progress_every` s the running runs."""
    import ray

    results, total, last_report = [], len(pending), time.monotonic()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
        for ref in ready:
            run = pending.pop(ref)
            try:
                ray.get(ref)
                result = RunResult(run.spec, run.run_dir, "finished")
            except Exception as err:  # noqa: BLE001  (any error of the run, or a dead worker: report it)
                result = RunResult(run.spec, run.run_dir, "failed", error=_describe(err))
            result.seconds = time.monotonic() - run.submitted
            results.append(result)
            log(f"[sweep] {run.spec.name}: {result.status} after {_clock(result.seconds)}, "
                f"{progress(run.run_dir, run.monitor_key)} ({len(results)}/{total} done)"
                + (f" ({result.error})" if result.error else ""))
        for run in pending.values():
            if run.started is None and run.has_started():
                run.started = time.monotonic()
                log(f"[sweep] {run.spec.name}: started")
        if pending and time.monotonic() - last_report >= progress_every:
            last_report = time.monotonic()
            for run in (r for r in pending.values() if r.started is not None):
                log(f"[sweep] {run.spec.name}: running for {_clock(time.monotonic() - run.started)}, "
                    f"{progress(run.run_dir, run.monitor_key)}")
    return results


def progress(run_dir: str | Path, monitor_key: str) -> str:
    """How far a run has got from its logs.jsonl: "step 120, epoch 3, test/mean_score 0.61"."""
    path = Path(run_dir) / "logs.jsonl"
    records = read_logs(path) if path.exists() else []
    if not records:
        return "nothing logged yet"
    last = records[-1]
    parts = [f"step {last['global_step']}"] if "global_step" in last else []
    parts += [f"epoch {last['epoch']}"] if "epoch" in last else []
    scores = _metric_values(records, monitor_key)
    parts.append(f"{monitor_key} {scores[-1]:.3f}" if scores else f"no {monitor_key} yet")
    return ", ".join(parts)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def _write_run_config(run_dir: Path, cfg: DictConfig, overrides: Sequence[str]) -> None:
    """The same files train.py's Hydra run leaves in `.hydra/`."""
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (hydra_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))))


def _run_one(train_fn: TrainFn, cfg: dict, run_dir: str, driver_cwd: str, num_cpus: float) -> None:
    """Body of a ray task: train one run; its stdout/stderr go to `<run_dir>/train.log`."""
    import torch

    # Relative paths in the config (data) mean what they mean for `python train.py` in the driver's cwd.
    if os.path.isdir(driver_cwd):
        os.chdir(driver_cwd)
    torch.set_num_threads(max(1, int(num_cpus)))
    with open(Path(run_dir) / "train.log", "a") as out, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(out):
        try:
            train_fn(OmegaConf.create(cfg), run_dir)
        except BaseException:
            traceback.print_exc(file=sys.stderr)
            raise


def _describe(err: BaseException) -> str:
    """The run's own exception, `Type: message`, without ray's wrapping and traceback."""
    cause = getattr(err, "cause", None) or err
    # Ray ships exceptions without their __cause__; Hydra's InstantiationException names it in
    # its message, over several lines: keep them all, on one line.
    message = " ".join(line.strip() for line in str(cause).splitlines() if line.strip())
    return f"{type(cause).__name__}: {message[:500]}"


def metric_series(run_dir: str | Path, monitor_key: str) -> list[float]:
    """The monitored metric of every evaluation in `<run_dir>/logs.jsonl`, in order (NaN dropped)."""
    path = Path(run_dir) / "logs.jsonl"
    return _metric_values(read_logs(path), monitor_key) if path.exists() else []


def _metric_values(records: list[dict], key: str) -> list[float]:
    values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    return [float(v) for v in values if not math.isnan(v)]


def run_metrics(values: Sequence[float], mode: str = "max", last_k: int = 5) -> dict[str, Any]:
    """Best over evaluations (max, or min with mode="min") and the mean of the last k of them."""
    if not values:
        return {"best": None, "last_k_mean": None, "n_evals": 0}
    best = max(values) if mode == "max" else min(values)
    tail = values[-last_k:]
    return {"best": best, "last_k_mean": sum(tail) / len(tail), "n_evals": len(values)}


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; None for fewer than two values)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(results: Sequence[RunResult], monitor_key: str, mode: str = "max", last_k: int = 5) -> dict:
    """JSON-ready summary: every run, then per variant the mean/std across its finished runs."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    runs = []
    for r in results:
        metrics = run_metrics(metric_series(r.run_dir, monitor_key), mode, last_k)
        runs.append({"name": r.spec.name, "seed": r.spec.seed, "variant": r.spec.variant, "status": r.status,
                     "error": r.error, "run_dir": str(r.run_dir), "seconds": round(r.seconds, 1), **metrics})
    groups = []
    for variant in _unique([run["variant"] for run in runs]):
        members = [run for run in runs if run["variant"] == variant]
        done = [run for run in members if run["status"] == "finished" and run["best"] is not None]
        best_mean, best_std = mean_std([run["best"] for run in done])
        last_mean, last_std = mean_std([run["last_k_mean"] for run in done])
        groups.append({"variant": variant, "seeds": [run["seed"] for run in done],
                       "failed_seeds": [run["seed"] for run in members if run["status"] == "failed"],
                       "best_mean": best_mean, "best_std": best_std,
                       "last_k_mean_mean": last_mean, "last_k_mean_std": last_std})
    return {"monitor_key": monitor_key, "mode": mode, "last_k": last_k, "runs": runs, "groups": groups}


def _unique(items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def format_table(summary: dict) -> str:
    """Per-run rows, then `mean ± std` per variant; failed runs show their error."""
    best = summary["mode"]
    last = f"mean last {summary['last_k']}"
    header = ["run", "seed", "status", best, last, "evals"]
    rows = [[run["name"], str(run["seed"]), run["status"], _fmt(run["best"]), _fmt(run["last_k_mean"]),
             str(run["n_evals"])] for run in summary["runs"]]
    for group in summary["groups"]:
        label = " ".join(f"{k}={v}" for k, v in group["variant"].items()) or "all seeds"
        rows.append([f"mean ± std ({label})", f"n={len(group['seeds'])}", "",
                     _fmt_pm(group["best_mean"], group["best_std"]),
                     _fmt_pm(group["last_k_mean_mean"], group["last_k_mean_std"]), ""])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [f"{summary['monitor_key']} ({best} and mean of the last {summary['last_k']} evaluations)",
             "  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines += [f"{run['name']} failed: {run['error']}" for run in summary["runs"] if run["status"] == "failed"]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _fmt_pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def write_summary(summary: dict, sweep_dir: str | Path) -> Path:
    path = Path(sweep_dir) / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return path
