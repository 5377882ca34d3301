"""Each consistency variant through train.py with the tiny config: trains, checkpoints, resumes
exactly (stopped after epoch 1, resumed to 2 == uninterrupted), and evaluates with eval.py.
Same workspace and task code as Diffusion Policy: only `policy=` changes."""

import json

import pytest
import torch

from eval import main as eval_main
from policylab.common.logging import read_logs
from policylab.policies.base import BasePolicy
from tests.helpers import run_train, tiny


@pytest.fixture(scope="module")
def teacher(store, tmp_path_factory):
    """A tiny trained Diffusion Policy checkpoint to distill."""
    run_dir = tmp_path_factory.mktemp("teacher")
    result = run_train(tiny(store, run_dir, "policy=diffusion_unet", "training.num_epochs=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir / "checkpoints" / "latest"


def by_step(run_dir, key):
    return {r["global_step"]: r[key] for r in read_logs(run_dir / "logs.jsonl") if key in r}


@pytest.mark.parametrize("policy", ["consistency_training", "consistency_distill", "consistency_bc"])
def test_train_resume_eval(policy, store, teacher, tmp_path):
    args = [f"policy={policy}"] + ([f"policy.teacher={teacher}"] if policy == "consistency_distill" else [])
    full = run_train(tiny(store, tmp_path / "full", *args))
    assert full.returncode == 0, full.stderr[-3000:]
    epoch_one = next(r["global_step"] for r in read_logs(tmp_path / "full" / "logs.jsonl") if r.get("epoch") == 1)

    part = run_train(tiny(store, tmp_path / "part", *args, f"training.max_train_steps={epoch_one}"))
    assert part.returncode == 0, part.stderr[-3000:]
    resumed = run_train(tiny(store, tmp_path / "part", *args, "training.resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = by_step(tmp_path / "full", "train_loss"), by_step(tmp_path / "part", "train_loss")
    assert got.keys() == want.keys() and len(want) > epoch_one
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-6), f"step {step}"

    ckpt = tmp_path / "part" / "checkpoints" / "latest"
    loaded = BasePolicy.from_checkpoint(ckpt)
    assert type(loaded).__name__.startswith("Consistency")
    obs = {"keypoint": torch.rand(2, 2, 18) * 512, "agent_pos": torch.rand(2, 2, 2) * 512}
    a = loaded.predict_action(obs, generator=torch.Generator().manual_seed(0))["action"]
    assert a.shape == (2, 4, 2) and torch.isfinite(a).all()
    log = eval_main(["--checkpoint", str(ckpt), "--output_dir", str(tmp_path / "eval"), "n_test=1", "n_train=0"])
    assert 0 <= log["test/mean_score"] <= 1
    assert json.loads((tmp_path / "eval" / "eval_log.json").read_text())["test/mean_score"] == log["test/mean_score"]


def test_distill_names_a_mismatched_teacher(store, teacher, tmp_path):
    result = run_train(tiny(store, tmp_path / "run", "policy=consistency_distill", f"policy.teacher={teacher}",
                            "policy.model.down_dims=[8,16]", "training.num_epochs=1"))
    assert result.returncode != 0 and "does not match the student's backbone" in result.stderr


def test_distill_without_teacher_says_so(store, tmp_path):
    result = run_train(tiny(store, tmp_path / "run", "policy=consistency_distill", "training.num_epochs=1"))
    assert result.returncode != 0 and "policy.teacher" in result.stderr


def test_target_network_updates_once_per_optimizer_step(store, tmp_path):
    """With gradient_accumulate_every=2 the consistency target moves once per optimizer step
    (it moved once per micro-batch when the update lived in compute_loss)."""
    from policylab.workspaces.supervised import SupervisedWorkspace
    from tests.helpers import compose_config

    cfg = compose_config(["debug=tiny", "policy=consistency_training", f"task.dataset.zarr_path={store}",
                          "logging.mode=disabled", "training.gradient_accumulate_every=2",
                          "training.max_train_steps=3", "training.num_epochs=1", "training.rollout_every=0",
                          "training.checkpoint_every=0", "training.use_ema=false"])
    workspace = SupervisedWorkspace(cfg, tmp_path / "run")
    policy = workspace.policy
    targets = []
    original = policy.on_optimizer_step

    def spy():
        before = [p.detach().clone() for p in policy.target_model.parameters()]
        live = [p.detach().clone() for p in policy.model.parameters()]
        original()
        decay = policy.target_ema_decay
        for b, m, t in zip(before, live, policy.target_model.parameters()):
            torch.testing.assert_close(t, decay * b + (1 - decay) * m)
        targets.append(int(policy.train_step))

    policy.on_optimizer_step = spy
    workspace.run()
    assert workspace.global_step == 3 and targets == [1, 2, 3]
