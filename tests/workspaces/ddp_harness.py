"""Test harness: `torchrun ... ddp_harness.py <dump_dir> <train.py overrides>` runs train.py unchanged
and, when each rank's workspace finishes, writes that rank's view of the run to `<dump_dir>`:

    rank<r>.safetensors   the rank's final policy weights (the DDP replica, not a checkpoint)
    rank<r>.json          global step, the dataset indices it trained on per epoch, a checksum of
                          its initial weights

Only the test reads these files; train.py and the workspace know nothing about them.
"""

import json
import os
import runpy
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from policylab.workspaces.supervised import SupervisedWorkspace

REPO = Path(__file__).resolve().parents[2]


def _checksum(module: torch.nn.Module) -> float:
    return float(sum(p.double().sum() for p in module.parameters()))


def install(dump_dir: Path) -> None:
    rank = int(os.environ.get("RANK", "0"))
    record = {"rank": rank, "indices": []}
    init, train_epoch, run = SupervisedWorkspace.__init__, SupervisedWorkspace._train_epoch, SupervisedWorkspace.run

    def patched_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        record["init_checksum"] = _checksum(self.policy)

    def patched_train_epoch(self, model, loader, *args, **kwargs):
        loss = train_epoch(self, model, loader, *args, **kwargs)
        # The sampler is seeded by (seed, epoch): iterating it again replays the epoch's order.
        record["indices"].append([int(i) for i in loader.dist_sampler])
        return loss

    def patched_run(self):
        metrics = run(self)
        record["global_step"] = self.global_step
        save_file({k: v.contiguous() for k, v in self.policy.state_dict().items()}, str(dump_dir / f"rank{rank}.safetensors"))
        (dump_dir / f"rank{rank}.json").write_text(json.dumps(record))
        return metrics

    SupervisedWorkspace.__init__ = patched_init
    SupervisedWorkspace._train_epoch = patched_train_epoch
    SupervisedWorkspace.run = patched_run


if __name__ == "__main__":
    dump = Path(sys.argv[1])
    dump.mkdir(parents=True, exist_ok=True)
    install(dump)
    sys.argv = [str(REPO / "train.py"), *sys.argv[2:]]
    runpy.run_path(str(REPO / "train.py"), run_name="__main__")
