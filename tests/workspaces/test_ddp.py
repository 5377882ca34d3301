"""Multi-process training: `torchrun --nproc_per_node=2 train.py ...` with DDP over gloo on CPU."""

import json
import math
import os
import subprocess
import sys

import hydra
import pytest
import torch
from safetensors.torch import load_file

from policylab.common.logging import read_logs
from tests.helpers import REPO, compose_config, make_pusht_store

HARNESS = REPO / "tests" / "workspaces" / "ddp_harness.py"


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One 2-rank run of train.py (debug=tiny) from a fresh working directory, without hydra.run.dir:
    the `${now:}` run dir is left to Hydra, as a user would."""
    root = tmp_path_factory.mktemp("ddp")
    store = make_pusht_store(root / "pusht.zarr")
    overrides = ["debug=tiny", f"task.dataset.zarr_path={store}", "logging.mode=disabled", "training.device=cpu",
                 "task.dataset.val_ratio=0.2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HARNESS), str(root / "dump"), *overrides]
    result = subprocess.run(cmd, check=False, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return root, overrides


def _epoch_batches(overrides) -> tuple[int, int]:
    """(epochs, optimizer steps per epoch per rank) of the tiny config: each rank gets ceil(N / 2) samples."""
    cfg = compose_config(overrides)
    n = len(hydra.utils.instantiate(cfg.task.dataset))
    return cfg.training.num_epochs, math.ceil(math.ceil(n / 2) / cfg.dataloader.batch_size)


def test_one_run_dir_written_by_rank_zero_only(ddp_run):
    root, _ = ddp_run
    run_dirs = [p for p in (root / "outputs").glob("*/*") if p.is_dir()]
    assert len(run_dirs) == 1, f"rank 1 wrote a run dir of its own: {run_dirs}"
    run_dir = run_dirs[0]
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert [p.name for p in root.rglob("logs.jsonl")] == ["logs.jsonl"]
    assert all(run_dir in path.parents for path in root.rglob("model.safetensors"))
    assert (run_dir / "checkpoints" / "latest" / "model.safetensors").exists()
    assert not list(root.glob("*.log")) and not (root / ".hydra").exists()


def test_both_ranks_trained_on_disjoint_shards(ddp_run):
    root, overrides = ddp_run
    epochs, steps_per_epoch = _epoch_batches(overrides)
    records = [json.loads((root / "dump" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [rec["global_step"] for rec in records] == [epochs * steps_per_epoch] * 2
    n = len(set(records[0]["indices"][0]) | set(records[1]["indices"][0]))
    for epoch in range(epochs):
        shard0, shard1 = (set(rec["indices"][epoch]) for rec in records)
        assert shard0 and shard1
        # DistributedSampler pads the shorter shard by repeating one index when N is odd.
        assert len(shard0 & shard1) <= 1 and len(shard0 | shard1) == n
    assert records[0]["indices"][0] != records[0]["indices"][1], "set_epoch reshuffles each epoch"
    # every rank built the same initial weights (the EMA copy is taken before DDP's broadcast)
    assert records[0]["init_checksum"] == records[1]["init_checksum"]

    logs = read_logs(next(root.rglob("logs.jsonl")))
    assert logs[-1]["global_step"] == epochs * steps_per_epoch and logs[-1]["epoch"] == epochs


def test_gradients_synced_and_checkpoint_matches_every_rank(ddp_run):
    root, _ = ddp_run
    rank0, rank1 = (load_file(str(root / "dump" / f"rank{r}.safetensors")) for r in (0, 1))
    ckpt_dir = next(root.rglob("checkpoints/latest"))
    ckpt = load_file(str(ckpt_dir / "model.safetensors"))
    assert rank0.keys() == rank1.keys() == ckpt.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between ranks: gradients not synced"
        assert torch.equal(rank0[key], ckpt[key]), key
    records = [json.loads((root / "dump" / f"rank{r}.json").read_text()) for r in (0, 1)]
    trained = float(sum(v.double().sum() for k, v in rank0.items() if not k.startswith("normalizer.")))
    assert trained != records[0]["init_checksum"], "weights never changed"

    state = torch.load(ckpt_dir / "training_state.pt", weights_only=True)
    per_rank = state["rng_per_rank"]
    assert len(per_rank) == 2 and not torch.equal(per_rank[0]["torch"], per_rank[1]["torch"])
