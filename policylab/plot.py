"""Learning curves from runs' `logs.jsonl` to one PNG, against the optimizer step. By default, for
a supervised run: train and validation loss, the rollout score (`test/mean_score`) and the learning
rate; for an RL run (it logs a critic): the evaluated success rate, the online success rate and
intervention rate (over the last 20 episodes), the Q values of the data and of the policy's
actions, the critic and actor losses, and the episode length. Keys a run did not log are left out.

    python -m policylab.plot <run dir> [<run dir> ...] [--out curves.png] [--keys train_loss,val_loss,...]
                             [--smooth 50] [--band std|minmax]

Each argument is a run directory (it holds `logs.jsonl`) or a directory of runs: a ray sweep
(`seed_42/`, `seed_43/`, ...), a Hydra multirun (`0/`, `1/`, ...). Runs are overlaid; the runs of a
directory of runs are one curve, their mean, with a band (the standard deviation across them, or
their min and max) where two or more have the point. `--out` defaults to `curves.png` in the first
directory given. Per-step signals (losses, Q values, episode length) are smoothed over `--smooth`
points. Options are `--flags`, as for every utility that reads existing files (the rule is in
policylab/common/overrides.py): `plot <run> out=x.png` is refused, not read as a run.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from policylab.common.logging import read_logs

DEFAULT_KEYS = ("train_loss", "val_loss", "test/mean_score", "lr")
RL_KEYS = ("test/success_rate", "rollout/success_rate_20", "rollout/intervention_rate_20", "q_data", "q_pi",
           "critic_loss", "actor_loss", "episode/length")
RL_MARKERS = ("critic_loss", "td_loss")  # what only an RL run logs
SMOOTHED = ("train_loss", "td_loss", "critic_loss", "actor_loss", "bc_loss", "q_data", "q_pi", "q_target",
            "episode/length", "episode/return", "episode/intervention_rate")  # noisy per-step signals
LOG = "logs.jsonl"


def find_groups(paths: Sequence[str | Path]) -> dict[str, list[Path]]:
    """{label: [run dir, ...]}: a run directory is its own group, a directory of runs one group."""
    groups: dict[str, list[Path]] = {}
    for path in map(Path, paths):
        if (path / LOG).is_file():
            runs = [path]
        else:
            runs = sorted(p.parent for p in path.glob(f"*/{LOG}"))
            if not runs:
                raise FileNotFoundError(f"{path}: no {LOG} in it nor in any directory directly below it")
        label = path.resolve().name
        while label in groups:
            label += "'"
        groups[label] = runs
    return groups


def series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key`, the last value kept where a step was logged twice (a resume)."""
    points = {int(r["global_step"]): float(r[key]) for r in records
              if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) and "global_step" in r}
    steps = np.array(sorted(points), dtype=np.int64)
    return steps, np.array([points[s] for s in steps], dtype=np.float64)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over `window` points (shorter at the start)."""
    if window <= 1 or len(values) == 0:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def aggregate(curves: list[tuple[np.ndarray, np.ndarray]], band: str = "std"):
    """Mean and band of several runs' (steps, values) on the union of their steps; a run counts at
    the steps inside its own range (interpolated between its points). Returns steps, mean, low, high."""
    curves = [c for c in curves if len(c[0])]
    if not curves:
        return (np.array([]),) * 4
    steps = np.unique(np.concatenate([s for s, _ in curves]))
    grid = np.full((len(curves), len(steps)), np.nan)
    for i, (s, v) in enumerate(curves):
        inside = (steps >= s[0]) & (steps <= s[-1])
        grid[i, inside] = np.interp(steps[inside], s, v)
    count = np.sum(~np.isnan(grid), axis=0)
    mean = np.nanmean(grid, axis=0)
    if band == "minmax":
        low, high = np.nanmin(grid, axis=0), np.nanmax(grid, axis=0)
    else:
        std = np.where(count > 1, np.nanstd(grid, axis=0), 0.0)
        low, high = mean - std, mean + std
    return steps, mean, low, high


def choose_keys(logs: Sequence[list[dict]], keys: Sequence[str] | None = None) -> list[str]:
    """The keys to plot for these runs' records: `keys`, or by default RL_KEYS for RL runs and
    DEFAULT_KEYS for the others (both, RL first, when both kinds are overlaid); only those logged."""
    if keys is None:
        rl = [any(k in r for r in records for k in RL_MARKERS) for records in logs]
        keys = (RL_KEYS if any(rl) else ()) + (DEFAULT_KEYS if not all(rl) else ())
    return [k for k in keys if any(series(records, k)[0].size for records in logs)]


def plot(paths: Sequence[str | Path], out: str | Path | None = None, keys: Sequence[str] | None = None,
         smooth_window: int = 50, band: str = "std") -> Path:
    """Write the curves of `keys` (None: `choose_keys`'s default) to `out` (default <first path>/curves.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = find_groups(paths)
    logs = {label: [read_logs(run / LOG) for run in runs] for label, runs in groups.items()}
    keys = choose_keys([r for runs in logs.values() for r in runs], keys)
    if not keys:
        raise ValueError(f"none of the keys were logged in {list(map(str, paths))}")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of = {label: colors[i % len(colors)] for i, label in enumerate(logs)}  # one colour per run everywhere
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2.6 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        window = smooth_window if key in SMOOTHED else 1
        lowest = _panel(ax, key, logs, color_of, window, band)
        ax.set_ylabel(key + (f"\n(mean of {window})" if window > 1 else ""))
        if key.endswith("loss") and lowest > 0:  # a CQL critic loss can go below 0: linear then
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=color_of[label], label=label if len(runs) == 1 else
                          f"{label} (mean of {len(runs)})") for label, runs in logs.items()]
    axes[0, 0].legend(handles=handles, fontsize=8)
    axes[-1, 0].set_xlabel("optimizer step")
    fig.tight_layout()
    out = Path(out) if out else Path(paths[0]) / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _panel(ax, key: str, logs: dict[str, list[list[dict]]], color_of: dict[str, str], window: int,
           band: str) -> float:
    """Draw `key` of every group on `ax` (a group of several runs: mean and band); returns the lowest
    value drawn (inf if none)."""
    lowest = np.inf
    for label, runs in logs.items():
        curves = [(s, smooth(v, window)) for s, v in (series(r, key) for r in runs)]
        if len(runs) == 1:
            (steps, mean), low, high = curves[0], None, None
        else:
            steps, mean, low, high = aggregate(curves, band)
        if not len(steps):
            continue
        name = label if len(runs) == 1 else f"{label} (mean of {len(runs)})"
        ax.plot(steps, mean, label=name, marker="o" if len(steps) < 30 else None, markersize=3,
                color=color_of[label])
        if low is not None:
            ax.fill_between(steps, low, high, color=color_of[label], alpha=0.2, linewidth=0)
        lowest = min(lowest, float(np.min(mean if low is None else low)))
    return lowest


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories, or directories of runs (a sweep)")
    parser.add_argument("--out", default=None, help="PNG path (default: <first dir>/curves.png)")
    parser.add_argument("--keys", default=None, help="comma-separated logged keys (default: by the kind of run)")
    parser.add_argument("--smooth", type=int, default=50, help="moving average of per-step signals, in points")
    parser.add_argument("--band", choices=("std", "minmax"), default="std")
    args = parser.parse_args(argv)
    for run in args.runs:  # `out=x.png`, key=value style, is an option here, not a run
        key, sep, value = run.partition("=")
        if sep and not Path(run).exists():
            parser.error(f"{run!r} is not a run directory; options are flags here: --{key} {value}")
    try:
        out = plot(args.runs, args.out, args.keys.split(",") if args.keys else None, args.smooth, args.band)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
