"""Evaluate a checkpoint in its task's simulator, with train.py's key=value override syntax.

    python eval.py checkpoint=<run>/checkpoints/latest [output_dir=<dir>] [device=auto|cpu|cuda]
                   [use_ema=true] [n_test=50 n_envs=4 max_steps=300 ...]      # env-runner settings
    policylab-eval ...                                                      # the same, installed

`output_dir` defaults to `<run dir>/eval/<checkpoint name>` (next to the run's checkpoints).
Env-runner settings may also be written `task.env_runner.n_test=50`. Values are parsed as Hydra
parses them (YAML: `true`, `3`, `0.5`, `null`). The older flags `--checkpoint`, `--output_dir`,
`--device` and `--no-ema` still work.

Writes <output_dir>/eval_log.json (scores, per-seed rewards, video paths) and the videos.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import OmegaConf

from policylab.common.checkpoint import load_config
from policylab.common.overrides import MISSING, parse_overrides
from policylab.common.safe_config import check_config
from policylab.policies.base import BasePolicy

PROG = "eval"
LEGACY_FLAGS = {"--checkpoint": "checkpoint", "--output_dir": "output_dir", "--device": "device"}
RUNNER_PREFIXES = ("task.env_runner.", "env_runner.")


@dataclasses.dataclass
class EvalArgs:
    checkpoint: str = MISSING
    output_dir: str | None = None  # default: <run>/eval/<checkpoint name>
    device: str = "auto"
    use_ema: bool = True
    # `n_test=50` is short for `env_runner.n_test=50`; checked against the checkpoint's runner config
    env_runner: dict[str, Any] = dataclasses.field(default_factory=dict)


def to_overrides(argv: list[str]) -> list[str]:
    """The command line as `key=value` overrides of EvalArgs: the legacy flags translated, and
    env-runner settings (`n_test=50`, `task.env_runner.n_test=50`) put under `env_runner.`."""
    own = {f.name for f in dataclasses.fields(EvalArgs)} - {"env_runner"}
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        flag, sep, value = arg.partition("=")
        if arg == "--no-ema":
            arg = "use_ema=false"
        elif flag in LEGACY_FLAGS:
            if not sep:
                i += 1
                if i == len(argv):
                    raise SystemExit(f"{PROG}: {flag} needs a value")
                value = argv[i]
            arg = f"{LEGACY_FLAGS[flag]}={value}"
        elif sep and not arg.startswith("-") and flag not in own:
            for prefix in RUNNER_PREFIXES:
                flag = flag.removeprefix(prefix)
            arg = f"env_runner.{flag}={value}"
        out.append(arg)
        i += 1
    return out


def parse_args(argv: list[str]) -> tuple[dict, dict]:
    """(own settings, env-runner overrides) from key=value arguments (and the legacy flags)."""
    args = parse_overrides(EvalArgs, to_overrides(argv), prog=PROG, usage=__doc__)
    own = dataclasses.asdict(args)
    return own, own.pop("env_runner")


def default_output_dir(checkpoint: Path) -> Path:
    """`<run>/eval/<name>` for `<run>/checkpoints/<name>`; else `<checkpoint>/eval`. Named after the
    folder given, not where a symlink leads (an old run's `latest` -> `.latest.<id>`)."""
    checkpoint = Path(os.path.abspath(checkpoint))
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent / "eval" / checkpoint.name
    return checkpoint / "eval"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def main(argv: list[str] | None = None) -> dict:
    own, runner_overrides = parse_args(sys.argv[1:] if argv is None else argv)
    checkpoint = Path(own["checkpoint"])
    output_dir = Path(own["output_dir"]) if own["output_dir"] else default_output_dir(checkpoint)
    device = resolve_device(str(own["device"]))
    cfg = load_config(checkpoint)
    unknown = set(runner_overrides) - set(cfg.task.env_runner)
    if unknown:
        raise SystemExit(f"{PROG}: unknown env runner setting(s) {sorted(unknown)}; known: {sorted(cfg.task.env_runner)}")
    runner_cfg = OmegaConf.merge(cfg.task.env_runner, runner_overrides, {"device": device})
    # The runner config comes from the checkpoint: checked (allow-listed targets only) before anything is built.
    runner_cfg = check_config(runner_cfg, "task.env_runner")
    output_dir.mkdir(parents=True, exist_ok=True)
    policy = BasePolicy.from_checkpoint(checkpoint, device=device, use_ema=bool(own["use_ema"]))
    runner = hydra.utils.instantiate(runner_cfg, output_dir=str(output_dir))
    log = {k: (v.item() if hasattr(v, "item") else v) for k, v in runner.run(policy).items()}
    (output_dir / "eval_log.json").write_text(json.dumps(log, indent=2, default=str))
    print(json.dumps({k: v for k, v in log.items() if "video" not in k and "sim_max_reward" not in k}, indent=2))
    print(f"eval_log.json and videos in {output_dir}")
    return log


if __name__ == "__main__":
    main()
