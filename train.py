"""Train a policy: `python train.py task=<task> policy=<method> [experiment=...] [debug=tiny] key=value`.

Resume a run exactly: `python train.py <same overrides> training.resume=true hydra.run.dir=<run dir>`.
Multi-GPU: `torchrun --nproc_per_node=N train.py ...` (only rank 0 logs and writes checkpoints).
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import policylab.common.config  # noqa: F401  (registers ${calc:...})
from policylab.workspaces.base import hydra_overrides_for_worker, train


@hydra.main(version_base=None, config_path="config", config_name="train")
def main(cfg: DictConfig) -> None:
    OmegaConf.resolve(cfg)
    train(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    sys.argv += hydra_overrides_for_worker(sys.argv[1:])  # torchrun ranks > 0
    main()
