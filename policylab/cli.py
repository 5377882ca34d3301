"""Console entry points (pyproject's `[project.scripts]`). Each returns None on success, so the
console-script wrapper's `sys.exit(main())` exits 0, and raises SystemExit (non-zero, with a
message) or an exception on failure, which exits 1. Imports are inside the functions: `--help`
stays fast and works with only the core installed.

- `policylab-train`: `python train.py` for an installed package (the same Hydra overrides;
  configs from `policylab.paths.config_dir()`).
- `policylab-eval`: `python eval.py` (`policylab.evaluate`).
- `policylab-generate`: `python -m policylab.data.generate`.
"""

from __future__ import annotations

import sys


def train() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    import policylab.common.config  # noqa: F401  (registers ${calc:...})
    from policylab.paths import config_dir
    from policylab.workspaces.base import hydra_overrides_for_worker
    from policylab.workspaces.base import train as train_workspace

    @hydra.main(version_base=None, config_path=str(config_dir()), config_name="train")
    def _train(cfg: DictConfig) -> None:
        OmegaConf.resolve(cfg)
        train_workspace(cfg, HydraConfig.get().runtime.output_dir)

    sys.argv += hydra_overrides_for_worker(sys.argv[1:])  # torchrun ranks > 0
    _train()


def evaluate() -> None:
    from policylab.evaluate import main

    main()


def generate() -> None:
    from policylab.data.generate.__main__ import main

    main()
