"""Train one run per seed as ray tasks and report the seeds the paper's way.

    python ray_train_multirun.py --seeds 42,43,44 [--address <ray cluster>] [--num_cpus_per_run 1]
        [--num_gpus_per_run 0] [--last_k 5] [--progress_every 60] <hydra overrides, as for train.py>

Each run is `train.py <overrides> training.seed=<seed>` in `<hydra.sweep.dir>/seed_<seed>/`;
comma-separated override values (`policy=diffusion_unet,diffusion_transformer`) add a run per
combination. Prints, per run, the max and the mean of the last k evaluations of
`checkpoint.monitor_key` and their mean ± std across seeds, and writes `summary.json`. A run that
crashes is reported as failed, with its error, while the others finish. While they run, it prints
when each run starts and ends and, every `--progress_every` seconds, each running run's last step
and metric (each run's own output is in its `train.log`). See policylab/distributed/sweep.py.

The sweep's own options are `--flags` (a launcher; see policylab/common/overrides.py for which
commands take which style); everything else on the line is a train.py `key=value` override.
"""

import argparse
import sys

from policylab.distributed import sweep
from policylab.paths import config_dir
from policylab.workspaces.base import train

CONFIG_DIR = config_dir()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", required=True, help="comma-separated, e.g. 42,43,44")
    parser.add_argument("--address", default=None, help="ray cluster address (default: start ray locally)")
    parser.add_argument("--num_cpus_per_run", type=float, default=1.0)
    parser.add_argument("--num_gpus_per_run", type=float, default=0.0,
                        help="GPUs ray reserves per run (fractions share one); 0 hides the GPUs from a run")
    parser.add_argument("--last_k", type=int, default=5, help="report the mean of the last k evaluations")
    parser.add_argument("--progress_every", type=float, default=60.0,
                        help="seconds between progress lines of the running runs")
    args, overrides = parser.parse_known_args(argv)
    if unknown := [o for o in overrides if o.startswith("-")]:
        parser.error(f"unknown options {unknown} (Hydra overrides are key=value)")
    runs = sweep.expand_runs(sweep.parse_seeds(args.seeds), overrides)
    sweep_dir = sweep.default_sweep_dir(CONFIG_DIR, overrides).resolve()
    base = sweep.compose_config(CONFIG_DIR, runs[0].overrides)
    results = sweep.run_sweep(runs, CONFIG_DIR, sweep_dir, train, args.num_cpus_per_run, args.address,
                              num_gpus_per_run=args.num_gpus_per_run, progress_every=args.progress_every)
    summary = sweep.summarize(results, base.checkpoint.monitor_key, base.checkpoint.mode, args.last_k)
    summary["sweep_dir"] = str(sweep_dir)
    path = sweep.write_summary(summary, sweep_dir)
    print(sweep.format_table(summary))
    print(f"summary: {path}")
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
