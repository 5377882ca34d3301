"""Console entry points: `policylab-train` is `python train.py` for an installed package (the
same Hydra overrides; configs from `policylab.paths.config_dir()`). `policylab-eval` and
`policylab-generate` are `policylab.evaluate` and `policylab.data.generate`."""

from __future__ import annotations

import sys

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


def train() -> None:
    sys.argv += hydra_overrides_for_worker(sys.argv[1:])  # torchrun ranks > 0
    _train()
