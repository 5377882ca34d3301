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

import dataclasses
import sys

from policylab.data.generate import demos, pusht
from policylab.data.importers.common import parse_cli

# Tasks whose data has its own generator (DP's PushT layout): task name -> that module's main
CUSTOM_GENERATORS = {"pusht_lowdim": pusht.main, "pusht_image": pusht.main}


def _parse_value(key: str, text: str, field: dataclasses.Field):
    kind = str(field.type)
    if "bool" in kind:
        if text.lower() not in ("true", "false", "1", "0"):
            raise SystemExit(f"{key}: expected true/false, got {text!r}")
        return text.lower() in ("true", "1")
    try:
        if "int" in kind:
            return int(text)
        if "float" in kind:
            return float(text)
    except ValueError:
        raise SystemExit(f"{key}: expected a number, got {text!r}") from None
    return text


def parse_args(argv: list[str]) -> dict:
    """`key=value` arguments -> a dict; unknown keys raise with their name."""
    names = [f.name for f in dataclasses.fields(demos.DemoConfig)]
    required = ("task", "n")
    return parse_cli(argv, required, tuple(name for name in names if name not in required))


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    values = parse_args(argv)
    if values["task"] in CUSTOM_GENERATORS:
        rest = [a for a in argv if not a.startswith("task=")]
        return CUSTOM_GENERATORS[values["task"]](rest)
    fields = {f.name: f for f in dataclasses.fields(demos.DemoConfig)}
    cfg = demos.DemoConfig(**{k: _parse_value(k, v, fields[k]) for k, v in values.items()})
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
