import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from omegaconf import OmegaConf

from policylab.common.checkpoint import (
    CheckpointError,
    TopKCheckpointManager,
    get_rng_state,
    save_checkpoint,
    set_rng_state,
)
from policylab.policies.loading import load_policy

pytestmark = pytest.mark.usefixtures("allow_torch_linear")

CFG = OmegaConf.create({"policy": {"_target_": "torch.nn.Linear", "in_features": 64, "out_features": 64}})

SAVER = textwrap.dedent("""
    import sys, torch
    from omegaconf import OmegaConf
    from policylab.common.checkpoint import save_checkpoint
    cfg = OmegaConf.create({"policy": {"_target_": "torch.nn.Linear", "in_features": 64, "out_features": 64}})
    model = torch.nn.Linear(64, 64)
    i = 0
    while True:
        with torch.no_grad():
            model.weight.fill_(i); model.bias.fill_(i)
        save_checkpoint(sys.argv[1], cfg, model, training_state={"step": i})
        print(i, flush=True)
        i += 1
""")


@pytest.mark.parametrize("delay", [0.0, 0.001, 0.004, 0.013])
def test_sigkill_during_save_leaves_a_complete_checkpoint(tmp_path, delay):
    latest = tmp_path / "checkpoints" / "latest"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(latest)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        for _ in range(3):
            assert proc.stdout.readline()
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    model = load_policy(latest)
    value = model.weight[0, 0].item()
    assert value >= 2
    assert torch.all(model.weight == value)
    assert torch.all(model.bias == value)
    state = torch.load(latest / "training_state.pt", weights_only=True)
    assert state["step"] == value


def test_resave_keeps_one_directory_per_name(tmp_path):
    model = torch.nn.Linear(64, 64)
    for _ in range(3):
        save_checkpoint(tmp_path / "latest", CFG, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]  # a plain folder, nothing hidden left
    assert (tmp_path / "latest").is_dir() and not (tmp_path / "latest").is_symlink()


def test_topk_keeps_the_best(tmp_path):
    topk = TopKCheckpointManager(tmp_path, "test/mean_score", mode="max", k=2)
    paths = []
    for epoch, score in enumerate([0.1, 0.5, 0.3, 0.05, 0.9]):
        path = topk.get_ckpt_path({"epoch": epoch, "test/mean_score": score})
        if path is not None:
            save_checkpoint(path, CFG, torch.nn.Linear(64, 64))
            paths.append(path.name)
    assert paths == ["epoch=0000-test_mean_score=0.100", "epoch=0001-test_mean_score=0.500",
                     "epoch=0002-test_mean_score=0.300", "epoch=0004-test_mean_score=0.900"]
    assert sorted(topk.entries) == ["epoch=0001-test_mean_score=0.500", "epoch=0004-test_mean_score=0.900"]
    on_disk = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".") and p.name != "topk.json")
    assert on_disk == sorted(topk.entries)
    assert TopKCheckpointManager(tmp_path, "test/mean_score", k=2).entries == topk.entries  # reloaded
    assert topk.get_ckpt_path({"epoch": 9}) is None  # metric not measured this epoch


def test_rng_state_round_trip_is_weights_only_safe(tmp_path):
    torch.manual_seed(0)
    state = get_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    import random

    import numpy as np
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no config.yaml"):
        load_policy(tmp_path)
