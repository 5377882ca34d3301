"""Console entry points (pyproject's `[project.scripts]`). Each returns None on success, so the
console-script wrapper's `sys.exit(main())` exits 0, and raises SystemExit (non-zero, with a
message) or an exception on failure, which exits 1. Imports are inside the functions: `--help`
stays fast and works with only the core installed.

- `policylab-train`: `python train.py` for an installed package (the same Hydra overrides;
  configs from `policylab.paths.config_dir()`; `--resume <run dir>`).
- `policylab-eval`: `python eval.py` (`policylab.evaluate`).
- `policylab-generate`: `python -m policylab.data.generate`.
"""

from __future__ import annotations

import sys


def train() -> None:
    """`python train.py [--resume <run dir>] key=value ...` (see policylab/common/resume.py)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    import policylab.common.config  # noqa: F401  (registers ${calc:...})
    from policylab.common import resume
    from policylab.paths import config_dir
    from policylab.workspaces.base import hydra_overrides_for_worker
    from policylab.workspaces.base import train as train_workspace

    @hydra.main(version_base=None, config_path=str(config_dir()), config_name="train")
    def _train(cfg: DictConfig) -> None:
        output_dir = HydraConfig.get().runtime.output_dir
        try:
            OmegaConf.resolve(cfg)
            train_workspace(cfg, output_dir)
        except resume.ResumeRefused as err:  # its message is the whole story: no traceback
            raise SystemExit(f"error: {err}") from None
        finally:  # a refused or failed start leaves the run's .hydra/ as it was
            resume.discard_hydra_record(output_dir)

    try:
        argv = resume_argv(sys.argv[1:])
    except resume.ResumeRefused as err:
        raise SystemExit(f"error: {err}") from None
    check_quoting(argv)
    extra = hydra_overrides_for_worker(argv)  # torchrun ranks > 0
    if not any(arg.startswith("hydra.output_subdir=") for arg in argv):
        extra.append(f"hydra.output_subdir={resume.pending_record_dir()}")  # .hydra/ once the start is accepted
    sys.argv = [sys.argv[0], *with_overrides(argv, extra)]
    _train()


def with_overrides(argv: list[str], extra: list[str]) -> list[str]:
    """`argv` with `extra` placed right after its last override: Hydra's parser takes the overrides as
    one run of positional arguments, so overrides split by a flag (`task=x --cfg job hydra.a=b`) fail
    with `unrecognized arguments`. Without overrides, `extra` goes last (`--config-dir D hydra.a=b`)."""
    last = max((i for i, arg in enumerate(argv) if "=" in arg and not arg.startswith("-")), default=len(argv) - 1)
    return [*argv[:last + 1], *extra, *argv[last + 1:]]


def resume_argv(argv: list[str]) -> list[str]:
    """`--resume <run dir> [key=value ...]` (or `training.resume=<run dir>`) -> the run's own overrides
    with those on top; any other argv as it is. Raises ResumeRefused with the keys' diff."""
    from policylab.common import resume

    run_dir, rest = None, []
    args = iter(argv)
    for arg in args:
        key, _, value = arg.partition("=")
        if arg == "--resume":
            run_dir = next(args, None)
            if run_dir is None:
                raise resume.ResumeRefused("--resume needs a run directory")
        elif key == "--resume" or (key == "training.resume" and value.lower() not in ("true", "false", "auto", "null")):
            run_dir = value
        else:
            rest.append(arg)
    if run_dir is None:
        return argv
    return resume.resume_overrides(run_dir, rest, _compose)


def check_quoting(argv: list[str]) -> None:
    """Refuse, with the fix, a value holding an unquoted '=': a top-k checkpoint folder such as
    `distill.student=<run>/checkpoints/epoch=0012-test_mean_score=0.867`, which Hydra's grammar
    rejects with only "mismatched input '='"."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for arg in argv:
        key, sep, value = arg.partition("=")
        if arg.startswith("-") or not sep or "=" not in value or value[:1] in "'\"":
            continue
        try:
            parser.parse_override(arg)
        except HydraException:  # Hydra raises its base class for a grammar error
            raise SystemExit(f"error: the value of {key} holds an '=' ({value}): quote it for Hydra, "
                             f"e.g. \"{key}='{value}'\"") from None


def _compose(overrides: list[str]):
    """The config `train.py <overrides>` would run (unresolved); a composition error is a ResumeRefused."""
    from hydra.errors import HydraException

    from policylab.common.config import compose
    from policylab.common.resume import ResumeRefused
    from policylab.paths import config_dir

    try:
        return compose(overrides, config_dir=config_dir())
    except HydraException as err:  # e.g. an override of a key the config does not have
        raise ResumeRefused(f"cannot compose the resumed config: {err}") from None


def evaluate() -> None:
    from policylab.evaluate import main

    main()


def generate() -> None:
    from policylab.data.generate.__main__ import main

    main()
