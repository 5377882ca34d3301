"""bf16 autocast and torch.compile give the loss of eager fp32 (to a tolerance) on the CPU, and the
workspace flags that switch them on train and checkpoint as usual."""

import hydra
import pytest
import torch

from policylab.common.config import compose
from policylab.common.logging import read_logs
from tests.helpers import run_train, tiny


@pytest.fixture(scope="module")
def policy_and_batch(store):
    cfg = compose(["debug=tiny", f"task.dataset.zarr_path={store}"], resolve=True)
    torch.manual_seed(0)
    dataset = hydra.utils.instantiate(cfg.task.dataset)
    policy = hydra.utils.instantiate(cfg.policy)
    policy.set_normalizer(dataset.get_normalizer())
    return policy, dataset.get_batch(list(range(16)))


def _loss(policy, batch, autocast=False):
    torch.manual_seed(123)  # the same noise and timesteps every time
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, _ = policy.compute_loss(batch)
    return loss.float().item()


def test_bf16_autocast_loss_matches_fp32(policy_and_batch):
    policy, batch = policy_and_batch
    fp32, bf16 = _loss(policy, batch), _loss(policy, batch, autocast=True)
    assert fp32 > 0
    assert bf16 == pytest.approx(fp32, rel=0.03)
    assert bf16 != fp32  # autocast did run in bf16


def test_compiled_loss_and_gradients_match_eager(policy_and_batch):
    policy, batch = policy_and_batch
    eager = _loss(policy, batch)
    torch.manual_seed(123)
    policy.compute_loss(batch)[0].backward()
    grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}
    policy.zero_grad()
    keys_before = set(policy.state_dict())
    policy.model.compile()
    try:
        assert _loss(policy, batch) == pytest.approx(eager, rel=1e-4)
        torch.manual_seed(123)
        policy.compute_loss(batch)[0].backward()
        for name, param in policy.model.named_parameters():
            if name in grads:
                torch.testing.assert_close(param.grad, grads[name], rtol=1e-3, atol=1e-5)
        assert set(policy.state_dict()) == keys_before  # checkpoints keep their keys
    finally:
        policy.zero_grad()


def test_workspace_flags_train(store, tmp_path):
    run_dir = tmp_path / "run"
    result = run_train(tiny(store, run_dir, "training.num_epochs=1", "training.max_train_steps=3",
                            "training.mixed_precision=bf16", "optimizer.fused=false", "training.rollout_every=0"))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [r["train_loss"] for r in read_logs(run_dir / "logs.jsonl") if "lr" in r]
    assert len(losses) == 3
    assert all(0 < x < 10 for x in losses)
    assert (run_dir / "checkpoints" / "latest" / "model.safetensors").exists()
    bad = run_train(tiny(store, tmp_path / "bad", "training.mixed_precision=fp8"))
    assert bad.returncode != 0
    assert "mixed_precision" in bad.stderr


def test_fused_adamw_trains_like_the_default_adamw(store, tmp_path):
    """optimizer.fused=true (the fastest CPU setting measured, with bf16) follows the same losses."""
    losses = {}
    for fused in ("true", "false"):
        run_dir = tmp_path / f"fused_{fused}"
        result = run_train(tiny(store, run_dir, "training.num_epochs=1", "training.max_train_steps=4",
                                f"optimizer.fused={fused}", "training.rollout_every=0"))
        assert result.returncode == 0, result.stderr[-3000:]
        losses[fused] = [r["train_loss"] for r in read_logs(run_dir / "logs.jsonl") if "lr" in r]
    assert len(losses["true"]) == 4
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)
