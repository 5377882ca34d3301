"""Learning curves from runs' `logs.jsonl` to one PNG: train and validation loss, the rollout
score (`checkpoint.monitor_key`, default `test/mean_score`) and the learning rate, against the
optimizer step.

    python -m policylab.plot <run dir> [<run dir> ...] [--out curves.png] [--keys train_loss,val_loss,...]
                             [--smooth 50] [--band std|minmax]

Each argument is a run directory (it holds `logs.jsonl`) or a directory of runs: a ray sweep
(`seed_42/`, `seed_43/`, ...), a Hydra multirun (`0/`, `1/`, ...). Runs are overlaid; the runs of a
directory of runs are one curve, their mean, with a band (the standard deviation across them, or
their min and max) where two or more have the point. `--out` defaults to `curves.png` in the first
directory given. Needs matplotlib (`pip install -e ".[plot]"`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from policylab.common.logging import read_logs

DEFAULT_KEYS = ("train_loss", "val_loss", "test/mean_score", "lr")
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


def plot(paths: Sequence[str | Path], out: str | Path | None = None, keys: Sequence[str] = DEFAULT_KEYS,
         smooth_window: int = 50, band: str = "std") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = find_groups(paths)
    logs = {label: [read_logs(run / LOG) for run in runs] for label, runs in groups.items()}
    keys = [k for k in keys if any(series(r, k)[0].size for runs in logs.values() for r in runs)]
    if not keys:
        raise ValueError(f"none of the keys were logged in {list(map(str, paths))}")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of = {label: colors[i % len(colors)] for i, label in enumerate(logs)}  # one colour per run everywhere
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2.6 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        window = smooth_window if key == "train_loss" else 1
        for label, runs in logs.items():
            curves = [series(r, key) for r in runs]
            curves = [(s, smooth(v, window)) for s, v in curves]
            if len(runs) == 1:
                steps, mean = curves[0]
                low = high = None
            else:
                steps, mean, low, high = aggregate(curves, band)
            if not len(steps):
                continue
            name = label if len(runs) == 1 else f"{label} (mean of {len(runs)})"
            marker = "o" if len(steps) < 30 else None
            ax.plot(steps, mean, label=name, marker=marker, markersize=3, color=color_of[label])
            if low is not None:
                ax.fill_between(steps, low, high, color=color_of[label], alpha=0.2, linewidth=0)
        ax.set_ylabel(key + (f"\n(mean of {window})" if window > 1 else ""))
        if key.endswith("loss"):
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


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories, or directories of runs (a sweep)")
    parser.add_argument("--out", default=None, help="PNG path (default: <first dir>/curves.png)")
    parser.add_argument("--keys", default=",".join(DEFAULT_KEYS), help="comma-separated logged keys")
    parser.add_argument("--smooth", type=int, default=50, help="moving average of train_loss, in points")
    parser.add_argument("--band", choices=("std", "minmax"), default="std")
    args = parser.parse_args(argv)
    try:
        out = plot(args.runs, args.out, args.keys.split(","), args.smooth, args.band)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
