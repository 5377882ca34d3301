"""The EDM teacher and its CTM student through train.py with the tiny config: each trains,
checkpoints, resumes exactly (stopped after epoch 1, resumed to 2 == uninterrupted) and loads
from its checkpoint alone; the student refuses a teacher that is not an EDM policy."""

import pytest
import torch

from policylab.common.checkpoint import save_checkpoint
from policylab.common.logging import read_logs
from policylab.policies.base import BasePolicy
from tests.helpers import run_train, tiny
from tests.policies.test_contract import build


@pytest.fixture(scope="module")
def teachers(store, tmp_path_factory):
    """Untrained tiny EDM (to distill) and DDPM (the wrong kind of teacher) checkpoints, with the
    dataset's normalizer: what the student loads is the same whether the teacher trained or not."""
    out = {}
    for name in ("diffusion_edm", "diffusion_unet"):
        cfg, policy, _ = build(name, "pusht_lowdim", None, store)
        out[name] = save_checkpoint(tmp_path_factory.mktemp(name) / "teacher", cfg, policy)
    return out


def by_step(run_dir, key):
    return {r["global_step"]: r[key] for r in read_logs(run_dir / "logs.jsonl") if key in r}


@pytest.mark.parametrize("policy", ["diffusion_edm", "consistency_ctm"])
def test_train_resume_load(policy, store, teachers, tmp_path):
    args = [f"policy={policy}", "training.rollout_every=0"]
    if policy == "consistency_ctm":
        args.append(f"policy.teacher={teachers['diffusion_edm']}")
    full = run_train(timeout=900, overrides=tiny(store, tmp_path / "full", *args))
    assert full.returncode == 0, full.stderr[-3000:]
    epoch_one = next(r["global_step"] for r in read_logs(tmp_path / "full" / "logs.jsonl") if r.get("epoch") == 1)
    part = run_train(timeout=900, overrides=tiny(store, tmp_path / "part", *args, f"training.max_train_steps={epoch_one}"))
    assert part.returncode == 0, part.stderr[-3000:]
    resumed = run_train(timeout=900, overrides=tiny(store, tmp_path / "part", *args, "training.resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = by_step(tmp_path / "full", "train_loss"), by_step(tmp_path / "part", "train_loss")
    assert got.keys() == want.keys() and len(want) > epoch_one
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-6), f"step {step}"

    loaded = BasePolicy.from_checkpoint(tmp_path / "part" / "checkpoints" / "latest")
    obs = {"keypoint": torch.rand(2, 2, 18) * 512, "agent_pos": torch.rand(2, 2, 2) * 512}
    a = loaded.predict_action(obs, generator=torch.Generator().manual_seed(0))["action"]
    assert a.shape == (2, 4, 2) and torch.isfinite(a).all()


def test_ctm_refuses_a_ddpm_teacher(store, teachers, tmp_path):
    result = run_train(timeout=900, overrides=tiny(store, tmp_path / "run", "policy=consistency_ctm", "training.num_epochs=1",
                            f"policy.teacher={teachers['diffusion_unet']}"))
    assert result.returncode != 0 and "distills an EDMDiffusionPolicy" in result.stderr
