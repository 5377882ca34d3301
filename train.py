"""Train a policy: `python train.py task=<task> policy=<method> [experiment=...] [debug=tiny] key=value`.

Resume a run exactly: `python train.py --resume <run dir>` (its own overrides, from `.hydra/`); more
epochs, a time budget, cadences or logging may be changed on top (`training.num_epochs=200`), anything
that could change a shape is refused with the keys' diff. The long way still works:
`python train.py <same overrides> training.resume=true hydra.run.dir=<run dir>`.
Multi-GPU: `torchrun --nproc_per_node=N train.py ...` (only rank 0 logs and writes checkpoints).
Installed as a package, the same command is `policylab-train ...`.
"""

from policylab.cli import train

if __name__ == "__main__":
    train()
