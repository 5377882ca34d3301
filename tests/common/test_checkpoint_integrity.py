"""Checkpoint integrity: named extra modules, per-file sha256, optimizer states that load weights_only."""

import json
import os
import warnings

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from policylab.common import checkpoint as ckpt_mod
from policylab.common.checkpoint import (
    CheckpointError,
    TopKCheckpointManager,
    clean_orphans,
    find_resume_checkpoint,
    load_modules,
    load_training_state,
    load_weights,
    save_checkpoint,
)
from policylab.policies.loading import load_policy

pytestmark = pytest.mark.usefixtures("allow_torch_linear")

CFG = OmegaConf.create({"policy": {"_target_": "torch.nn.Linear", "in_features": 8, "out_features": 8}})


class Critic(torch.nn.Module):
    """Two heads sharing one trunk: shared tensors must survive save_model/load."""

    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Linear(8, 8)
        self.q1 = torch.nn.Sequential(self.trunk, torch.nn.Linear(8, 1))
        self.q2 = torch.nn.Sequential(self.trunk, torch.nn.Linear(8, 1))


def _optimizer_state(module):
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    forward = module.q1 if isinstance(module, Critic) else module
    forward(torch.randn(4, 8)).sum().backward()
    opt.step()
    return opt


def test_named_modules_and_several_optimizers_round_trip(tmp_path):
    policy, critic, target = torch.nn.Linear(8, 8), Critic(), Critic()
    actor_opt, critic_opt = _optimizer_state(policy), _optimizer_state(critic)
    state = {"optimizers": {"actor": actor_opt.state_dict(), "critic": critic_opt.state_dict()},
             "global_step": 7, "alpha": torch.tensor(0.2)}
    out = save_checkpoint(tmp_path / "latest", CFG, policy, training_state=state,
                          modules={"critic": critic, "target_critic": target})
    names = json.loads((out / "checksums.json").read_text())
    assert {"critic.safetensors", "target_critic.safetensors", "model.safetensors", "config.yaml",
            "training_state.pt"} <= set(names)

    critic2, target2 = Critic(), Critic()
    load_modules(out, {"critic": critic2, "target_critic": target2})
    for a, b in ((critic, critic2), (target, target2)):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert ka == kb
            assert torch.equal(va, vb)
    assert critic2.q1[0] is critic2.q2[0]

    loaded = load_training_state(out)  # torch.load(weights_only=True) inside
    opt2 = torch.optim.Adam(critic2.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizers"]["critic"])
    assert loaded["global_step"] == 7
    exp_avg = next(iter(critic_opt.state_dict()["state"].values()))["exp_avg"]
    assert torch.equal(next(iter(opt2.state_dict()["state"].values()))["exp_avg"], exp_avg)


def test_missing_or_mismatched_module_names_the_file(tmp_path):
    out = save_checkpoint(tmp_path / "c", CFG, torch.nn.Linear(8, 8), modules={"critic": Critic()})
    with pytest.raises(CheckpointError, match="target_critic.safetensors"):
        load_modules(out, {"target_critic": Critic()})
    with pytest.raises(CheckpointError, match="critic.safetensors"):
        load_modules(out, {"critic": torch.nn.Linear(3, 3)})
    with pytest.raises(ValueError, match="module name"):
        save_checkpoint(tmp_path / "d", CFG, torch.nn.Linear(8, 8), modules={"model": Critic()})
    with pytest.raises(ValueError, match="module name"):
        save_checkpoint(tmp_path / "e", CFG, torch.nn.Linear(8, 8), modules={"../x": Critic()})


def _data_offset(path):
    """Byte offset of the tensor data in a safetensors file (8-byte header length + JSON header)."""
    with open(path, "rb") as fh:
        return 8 + int.from_bytes(fh.read(8), "little")


def test_flipped_weight_bytes_are_a_clear_error(tmp_path):
    policy = torch.nn.Linear(8, 8)
    out = save_checkpoint(tmp_path / "c", CFG, policy, training_state={"step": 1}, modules={"critic": Critic()})
    for name in ("model.safetensors", "critic.safetensors"):
        path = out / name
        raw = bytearray(path.read_bytes())
        start = _data_offset(path)
        raw[start + 5: start + 9] = b"\x7f\x7f\x7f\x7f"  # still a valid file: loads as huge weights
        path.write_bytes(bytes(raw))
        with safe_open(str(path), "pt") as f:  # the file itself is well-formed
            assert f.keys()
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        load_policy(out)
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        load_weights(torch.nn.Linear(8, 8), out / "model.safetensors")
    with pytest.raises(CheckpointError, match="critic.safetensors is corrupt"):
        load_modules(out, {"critic": Critic()})
    (out / "training_state.pt").write_bytes((out / "training_state.pt").read_bytes() + b"x")
    with pytest.raises(CheckpointError, match="training_state.pt is corrupt"):
        load_training_state(out)
    (out / "checksums.json").write_text("{")
    with pytest.raises(CheckpointError, match="checksums.json"):
        load_policy(out)


def test_old_checkpoint_without_checksums_loads_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt_mod, "_warned_unverified", set())
    policy = torch.nn.Linear(8, 8)
    out = save_checkpoint(tmp_path / "old", CFG, policy, training_state={"step": 3})
    (out / "checksums.json").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_policy(out)
        load_training_state(out)
        load_policy(out)
    assert torch.equal(loaded.weight, policy.weight)
    assert len([w for w in caught if "checksums.json" in str(w.message)]) == 1


def _topk_run(root, scores):
    topk = TopKCheckpointManager(root, "test/mean_score", mode="max", k=2)
    for epoch, score in enumerate(scores):
        path = topk.get_ckpt_path({"epoch": epoch, "test/mean_score": score})
        if path is not None:
            save_checkpoint(path, CFG, torch.nn.Linear(8, 8))
    return topk


def test_torn_topk_index_is_rebuilt_from_the_checkpoint_names(tmp_path):
    topk = _topk_run(tmp_path, [0.1, 0.912, 0.3])
    assert sorted(topk.entries) == ["epoch=0001-test_mean_score=0.912", "epoch=0002-test_mean_score=0.300"]
    (tmp_path / "topk.json").write_text('{"epoch=0001-test_mean_score=0.912": 0.9')  # a torn write
    with pytest.warns(UserWarning, match="topk.json is unreadable"):
        again = TopKCheckpointManager(tmp_path, "test/mean_score", mode="max", k=2)
    assert again.entries == {"epoch=0001-test_mean_score=0.912": 0.912, "epoch=0002-test_mean_score=0.300": 0.3}
    assert json.loads((tmp_path / "topk.json").read_text()) == again.entries  # rewritten whole
    again.get_ckpt_path({"epoch": 3, "test/mean_score": 0.5})  # keeps working: 0.3 is dropped
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "epoch=0001-test_mean_score=0.912", "topk.json"]


def test_unrecoverable_topk_index_names_the_file(tmp_path):
    _topk_run(tmp_path, [0.5])
    (tmp_path / "topk.json").write_text("{")
    with pytest.raises(CheckpointError, match="topk.json is unreadable"):
        TopKCheckpointManager(tmp_path, "val_loss", mode="min", k=2, format_str="step-{epoch}")


def test_topk_index_is_replaced_atomically(tmp_path, monkeypatch):
    topk = _topk_run(tmp_path, [0.1])
    before = (tmp_path / "topk.json").read_text()

    def killed(*args):
        raise KeyboardInterrupt  # the process dies after writing the temp file, before the rename

    monkeypatch.setattr("policylab.common.locking.os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        topk.get_ckpt_path({"epoch": 1, "test/mean_score": 0.2})
    assert (tmp_path / "topk.json").read_text() == before
    assert not [p for p in tmp_path.iterdir() if "tmp" in p.name]


def test_clean_orphans_removes_only_what_killed_writes_left(tmp_path):
    _topk_run(tmp_path, [0.1, 0.2])
    save_checkpoint(tmp_path / "latest", CFG, torch.nn.Linear(8, 8))
    live = sorted(p.name for p in tmp_path.iterdir())
    (tmp_path / ".latest.tmp-0123abcd").mkdir()  # killed inside save_checkpoint
    (tmp_path / ".latest.tmp-0123abcd" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".latest.89abcdef").mkdir()  # moved into place, but the symlink swap never happened
    (tmp_path / ".epoch=0005-test_mean_score=0.700.deadbeef").mkdir()  # its top-k entry was dropped
    os.symlink(".latest.89abcdef", tmp_path / ".latest.link-00112233")
    (tmp_path / ".topk.json.tmp-a1b2c3d4").write_text("{")
    (tmp_path / ".keep-me").write_text("not ours")
    removed = clean_orphans(tmp_path)
    assert sorted(p.name for p in removed) == [
        ".epoch=0005-test_mean_score=0.700.deadbeef", ".latest.89abcdef", ".latest.link-00112233",
        ".latest.tmp-0123abcd", ".topk.json.tmp-a1b2c3d4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*live, ".keep-me"])
    assert load_policy(tmp_path / "latest") is not None
    assert clean_orphans(tmp_path) == []


def test_resume_true_without_checkpoint_is_an_error_and_auto_is_quiet(tmp_path):
    root = tmp_path / "checkpoints"
    with pytest.raises(CheckpointError, match="training.resume=true but .*latest holds no checkpoint"):
        find_resume_checkpoint(root, True)
    assert find_resume_checkpoint(root, "auto") is None
    assert find_resume_checkpoint(root, False) is None
    save_checkpoint(root / "latest", CFG, torch.nn.Linear(8, 8))
    assert find_resume_checkpoint(root, True) == find_resume_checkpoint(root, "auto") == root / "latest"
    with pytest.raises(ValueError, match="training.resume"):
        find_resume_checkpoint(root, "yes")
