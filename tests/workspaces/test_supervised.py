"""End to end through Hydra: train a few steps, checkpoint, resume exactly, evaluate."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from eval import main as eval_main
from policylab.common.checkpoint import CheckpointError, load_training_state
from policylab.common.logging import read_logs
from policylab.policies.base import BasePolicy
from tests.helpers import REPO, run_train, tiny


def test_train_checkpoint_eval(store, tmp_path):
    run_dir = tmp_path / "run"
    result = run_train(tiny(store, run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    logs = read_logs(run_dir / "logs.jsonl")
    epochs = [r for r in logs if "test/mean_score" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(0 <= r["test/mean_score"] <= 1 and "val_loss" in r and "train_action_mse" in r for r in epochs)
    assert sum("lr" in r for r in logs) == logs[-1]["global_step"]
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest" / "model.safetensors").exists() and (ckpts / "latest" / "ema_model.safetensors").exists()
    topk = json.loads((ckpts / "topk.json").read_text())
    assert len(topk) == 2 and all((ckpts / name / "config.yaml").exists() for name in topk)
    state = torch.load(ckpts / "latest" / "training_state.pt", weights_only=True)
    assert state["epoch"] == 2 and state["global_step"] == logs[-1]["global_step"]
    assert not [p for p in ckpts.iterdir() if ".tmp-" in p.name or ".old-" in p.name or ".link-" in p.name]
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".")], "no hidden directories left"
    assert all(p.is_dir() and not p.is_symlink() for p in ckpts.iterdir() if p.name != "topk.json"), \
        "every checkpoint name is a plain folder"

    # the checkpoint alone rebuilds the policy, wherever it is moved
    moved = shutil.copytree(ckpts / "latest", tmp_path / "elsewhere")
    policy = BasePolicy.from_checkpoint(moved)
    obs = {"keypoint": torch.rand(3, 2, 18) * 512, "agent_pos": torch.rand(3, 2, 2) * 512}
    out = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    assert out["action"].shape == (3, 4, 2) and out["action_pred"].shape == (3, 8, 2)
    again = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["action"], again["action"], rtol=0, atol=0)

    log = eval_main(["--checkpoint", str(moved), "--output_dir", str(tmp_path / "eval"), "n_test=2", "n_train=0"])
    saved = json.loads((tmp_path / "eval" / "eval_log.json").read_text())
    assert saved["test/mean_score"] == pytest.approx(log["test/mean_score"])
    videos = [v for k, v in saved.items() if "video" in k]
    assert videos and all(os.path.getsize(v) > 0 for v in videos)


def test_image_task_trains(store, tmp_path):
    result = run_train(tiny(store, tmp_path / "run", "task=pusht_image", "training.num_epochs=1",
                            "training.max_train_steps=2", "dataloader.batch_size=4", "val_dataloader.batch_size=4"))
    assert result.returncode == 0, result.stderr[-3000:]
    record = read_logs(tmp_path / "run" / "logs.jsonl")[-1]
    assert record["global_step"] == 2 and "test/mean_score" in record


def _last_by_step(records, key):
    """The last logged value of `key` at each global step (a resumed run's lines come last)."""
    return {r["global_step"]: r[key] for r in records if key in r}


def test_resume_after_sigkill_equals_uninterrupted(store, tmp_path):
    args = ["training.num_epochs=4", "training.rollout_every=0", "training.sample_every=2",
            "training.checkpoint_every=1", "training.gradient_accumulate_every=2"]
    full = run_train(tiny(store, tmp_path / "full", *args))
    assert full.returncode == 0, full.stderr[-3000:]

    run_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *tiny(store, run_dir, *args)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run_dir / "checkpoints" / "latest" / "training_state.pt"
    deadline = time.time() + 240
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_training_state(latest.parent)["epoch"]
    assert killed_at < 4, "the run finished before it could be killed"

    resumed = run_train(tiny(store, run_dir, *args, "training.resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want = _last_by_step(read_logs(tmp_path / "full" / "logs.jsonl"), "train_loss")
    got = _last_by_step(read_logs(run_dir / "logs.jsonl"), "train_loss")
    assert got.keys() == want.keys()
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-6), f"step {step}"
    for key in ("val_loss", "train_action_mse"):
        w, g = _last_by_step(read_logs(tmp_path / "full" / "logs.jsonl"), key), _last_by_step(read_logs(run_dir / "logs.jsonl"), key)
        assert g.keys() == w.keys() and all(g[s] == pytest.approx(w[s], abs=1e-6) for s in w)


def test_resume_after_a_stop_mid_epoch_equals_uninterrupted(store, tmp_path):
    """A run stopped mid-epoch (max_train_steps here; the time budget stops the same way) and then
    resumed finishes that epoch in its order from the next batch, with the RNG as training left it
    (not as the stop's evaluation rollouts left it): every step's loss equals the uninterrupted run's."""
    args = ["training.num_epochs=3", "training.checkpoint_every=1", "training.gradient_accumulate_every=2"]
    full = run_train(tiny(store, tmp_path / "full", *args))
    assert full.returncode == 0, full.stderr[-3000:]
    want = read_logs(tmp_path / "full" / "logs.jsonl")
    per_epoch = sum(1 for r in want if "lr" in r and r["epoch"] == 0)
    assert per_epoch >= 2
    stop = per_epoch + per_epoch // 2  # inside the second epoch

    run_dir = tmp_path / "stopped"
    stopped = run_train(tiny(store, run_dir, *args, f"training.max_train_steps={stop}"))
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    state = load_training_state(run_dir / "checkpoints" / "latest")
    assert (state["global_step"], state["epoch"], state["batches_into_epoch"]) == (stop, 2, 2 * (stop - per_epoch))
    resumed = run_train(tiny(store, run_dir, *args, "training.resume=true", "training.max_train_steps=null"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = read_logs(run_dir / "logs.jsonl")
    steps = [r for r in got if "lr" in r]  # per optimizer step: its loss, lr and epoch
    assert [(r["global_step"], r["epoch"]) for r in steps] == [(r["global_step"], r["epoch"]) for r in want if "lr" in r]
    for r, w in zip(steps, (r for r in want if "lr" in r)):
        assert r["train_loss"] == pytest.approx(w["train_loss"], abs=1e-6), f"step {r['global_step']}"
    ends = [r for r in got if "val_loss" in r and r["global_step"] != stop]  # the epochs' ends
    assert len(ends) == 3
    for r, w in zip(ends, (r for r in want if "val_loss" in r)):
        for key in ("train_loss", "val_loss", "test/mean_score"):
            assert r[key] == pytest.approx(w[key], abs=1e-6), f"{key} at step {r['global_step']}"
    assert load_training_state(run_dir / "checkpoints" / "latest")["epoch"] == 3
    assert [r["epoch"] for r in got if "test/mean_score" in r] == [1, 2, 2, 3]  # the stop's evaluation counts epoch 2


def test_config_typo_fails_naming_the_key(store, tmp_path):
    result = run_train(tiny(store, tmp_path / "run", "training.num_epoch=3"))
    assert result.returncode != 0 and "num_epoch" in result.stderr


def test_corrupt_checkpoint_is_a_clear_error(store, tmp_path):
    run_dir = tmp_path / "run"
    assert run_train(tiny(store, run_dir, "training.num_epochs=1", "training.max_train_steps=1")).returncode == 0
    ckpt = shutil.copytree(run_dir / "checkpoints" / "latest", tmp_path / "bad")
    (ckpt / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes()[:100])
    (ckpt / "ema_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        BasePolicy.from_checkpoint(ckpt)
    torch.save({"bad": object()}, ckpt / "training_state.pt")  # a pickled object: refused
    with pytest.raises(CheckpointError, match="training_state.pt"):
        load_training_state(ckpt)
    with pytest.raises(CheckpointError, match="no config.yaml"):
        BasePolicy.from_checkpoint(tmp_path)


def test_second_run_on_a_live_run_directory_is_refused(store, tmp_path):
    """Two train.py on one run directory: the second fails naming the first; the first's logs stay whole."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    first = subprocess.Popen([sys.executable, str(REPO / "train.py"),
                              *tiny(store, run_dir, "training.num_epochs=1000", "training.rollout_every=0")],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "logs.jsonl").exists() or not read_logs(run_dir / "logs.jsonl"):
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start logging"
            time.sleep(0.5)
        second = run_train(tiny(store, run_dir, "training.resume=auto"))
        assert second.returncode != 0
        assert f"pid {first.pid}" in second.stderr and ".writer.lock" in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    assert all("global_step" in r for r in read_logs(run_dir / "logs.jsonl"))  # parseable, one writer
