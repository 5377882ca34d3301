"""One demo-generation command for every task with a scripted expert.

    python -m policylab.data.generate task=<name> n=100 [out=<store>] [seed=0] [images=true|false]
                                      [action_noise=0.1] [max_steps=...] [max_attempts=...]

`task` is a config name under config/task/ (pusht_lowdim, pick_cube_image, metaworld_push_lowdim,
robosuite_lift_lowdim, ...). PushT tasks go to `policylab.data.generate.pusht` (DP's keys and
options; `python -m policylab.data.generate.pusht` still works); every other task to the
generic generator in `policylab.data.generate.demos`, driven by the task config's `demo` entry.
Prints the success rate of the expert and episodes per minute; exits non-zero when fewer than
n episodes could be made.
"""

import sys

from policylab.common.overrides import parse_overrides
from policylab.data.generate import demos, pusht

# Tasks whose data has its own generator (DP's PushT layout): task name -> that module's main
CUSTOM_GENERATORS = {"pusht_lowdim": pusht.main, "pusht_image": pusht.main}
PROG = "policylab.data.generate"


def _task(argv: list[str]) -> str:
    tasks = [a.split("=", 1)[1] for a in argv if a.startswith("task=")]
    if not tasks:
        raise SystemExit(f"{PROG}: missing required argument(s): task=..., n=...")
    return tasks[-1]


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    task = _task(argv)
    if task in CUSTOM_GENERATORS:
        rest = [a for a in argv if not a.startswith("task=")]
        return CUSTOM_GENERATORS[task](rest)
    cfg = parse_overrides(demos.DemoConfig, argv, prog=PROG)
    stats = demos.generate(cfg)
    print(f"saved {stats['saved']} episodes to {stats['out']} "
          f"({stats['n_episodes']} episodes, {stats['n_steps']} steps in the store)")
    print(f"expert success rate: {stats['success_rate']:.3f} ({stats['saved']}/{stats['attempts']} attempts)")
    print(f"episodes/minute: {stats['episodes_per_minute']:.1f}")
    if stats["saved"] < cfg.n:
        raise SystemExit(f"only {stats['saved']} of {cfg.n} episodes after {stats['attempts']} attempts")
    return stats


if __name__ == "__main__":
    main()
