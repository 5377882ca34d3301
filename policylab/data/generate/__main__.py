"""One demo-generation command for every task with a scripted expert.

    python -m policylab.data.generate task=<name> n=100 [out=<store>] [mode=top_up|append] [seed=0]
                                      [images=true|false] [action_noise=0.1] [max_steps=...]
                                      [max_attempts=...]
    policylab-generate ...            (the same, installed as a console script)

`task` is a config name under config/task/ (pusht_lowdim, pick_cube_image, metaworld_push_lowdim,
robosuite_lift_lowdim, ...). `n` is the number of episodes the store should hold: a rerun of the
same command tops the store up to n and adds nothing when it is complete (`mode=top_up`, the
default); `mode=append` adds n more. PushT tasks go to `policylab.data.generate.pusht` (DP's keys
and options; `python -m policylab.data.generate.pusht` still works); every other task to the
generic generator in `policylab.data.generate.demos`, driven by the task config's `demo` entry.
Prints the success rate of the expert and episodes per minute; exits 0 on success, non-zero
when fewer episodes than asked for could be made.
"""

import importlib
import sys

from policylab.common.overrides import parse_overrides
from policylab.data.generate import common, demos

# Tasks whose data has its own generator (DP's PushT layout): task name -> that module. Imported
# only when asked for, so `--help` and the other tasks need no pusht extra (and vice versa).
CUSTOM_GENERATORS = {"pusht_lowdim": "policylab.data.generate.pusht", "pusht_image": "policylab.data.generate.pusht"}
PROG = "policylab.data.generate"


def _task(argv: list[str]) -> str:
    tasks = [a.split("=", 1)[1] for a in argv if a.startswith("task=")]
    if not tasks:
        raise SystemExit(f"{PROG}: missing required argument(s): task=..., n=... (--help for all options)")
    return tasks[-1]


def run(argv: list[str]) -> dict:
    """Generate as `argv` says and print the report; returns the stats (SystemExit on failure)."""
    task = _task(argv)
    if task in CUSTOM_GENERATORS:
        return importlib.import_module(CUSTOM_GENERATORS[task]).run([a for a in argv if not a.startswith("task=")])
    cfg = parse_overrides(demos.DemoConfig, argv, prog=PROG)
    stats = demos.generate(cfg)
    common.report(stats, stats["out"])
    return stats


def main(argv: list[str] | None = None) -> int:
    """Console entry: 0 after success; failures exit non-zero with a message (SystemExit)."""
    argv = sys.argv[1:] if argv is None else argv
    if not common.wants_help(argv, __doc__):
        run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
