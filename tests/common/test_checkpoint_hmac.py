"""Opt-in authenticity for checkpoints that travel: with a key configured, a folder changed by someone
without the key (weights and checksums.json edited together, checksums.json deleted) is refused.
Without a key, the checksums catch accidents only; the first test shows that limit."""

import hashlib
import json
import warnings

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from policylab.common import checkpoint as ckpt_mod
from policylab.policies.loading import load_policy

pytestmark = pytest.mark.usefixtures("allow_torch_linear")

CFG = OmegaConf.create({"policy": {"_target_": "torch.nn.Linear", "in_features": 8, "out_features": 8}})
KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv(ckpt_mod.KEY_ENV, raising=False)
    monkeypatch.delenv(ckpt_mod.KEY_FILE_ENV, raising=False)
    monkeypatch.setattr(ckpt_mod, "_warned_unverified", set())


def _tamper(ckpt):
    """What someone who can write the folder does: new weights, and checksums.json made to agree."""
    with torch.no_grad():
        evil = torch.nn.Linear(8, 8).weight.fill_(7.0)
    state = {"weight": evil, "bias": torch.zeros(8)}
    save_file(state, str(ckpt / "model.safetensors"))
    sums = json.loads((ckpt / "checksums.json").read_text())
    sums["model.safetensors"] = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    (ckpt / "checksums.json").write_text(json.dumps(sums, indent=2))


def test_without_a_key_checksums_catch_accidents_not_a_consistent_edit(tmp_path):
    ckpt = ckpt_mod.save_checkpoint(tmp_path / "c", CFG, torch.nn.Linear(8, 8))
    assert not (ckpt / ckpt_mod.SIGNATURE).exists()
    _tamper(ckpt)
    assert load_policy(ckpt).weight[0, 0].item() == 7.0  # what a key is for


@pytest.mark.parametrize("how", ["env", "file"])
def test_with_a_key_a_tampered_folder_is_refused(tmp_path, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv(ckpt_mod.KEY_ENV, KEY)
    else:
        (tmp_path / "key").write_text(KEY + "\n")
        monkeypatch.setenv(ckpt_mod.KEY_FILE_ENV, str(tmp_path / "key"))
    policy = torch.nn.Linear(8, 8)
    ckpt = ckpt_mod.save_checkpoint(tmp_path / "c", CFG, policy, training_state={"step": 3})
    assert torch.equal(load_policy(ckpt).weight, policy.weight)
    assert ckpt_mod.load_training_state(ckpt)["step"] == 3
    _tamper(ckpt)
    with pytest.raises(ckpt_mod.CheckpointError, match=r"checksums.json.hmac does not match checksums.json"):
        load_policy(ckpt)
    (ckpt / "checksums.json").unlink()
    with pytest.raises(ckpt_mod.CheckpointError, match=r"has no checksums.json and a checkpoint key is configured"):
        load_policy(ckpt)


def test_with_a_key_an_unsigned_or_otherwise_signed_checkpoint_is_refused(tmp_path, monkeypatch):
    ckpt = ckpt_mod.save_checkpoint(tmp_path / "c", CFG, torch.nn.Linear(8, 8), training_state={"step": 1})
    monkeypatch.setenv(ckpt_mod.KEY_ENV, KEY)
    with pytest.raises(ckpt_mod.CheckpointError, match=r"is not signed \(no checksums.json.hmac\)"):
        ckpt_mod.load_training_state(ckpt)
    ckpt_mod.sign_checkpoint(ckpt)  # the owner vouches for a checkpoint written before the key was set
    assert ckpt_mod.load_training_state(ckpt)["step"] == 1
    monkeypatch.setenv(ckpt_mod.KEY_ENV, KEY[::-1])
    with pytest.raises(ckpt_mod.CheckpointError, match="signed with another key"):
        load_policy(ckpt)


def test_signing_refuses_a_damaged_folder_and_bad_keys(tmp_path, monkeypatch):
    ckpt = ckpt_mod.save_checkpoint(tmp_path / "c", CFG, torch.nn.Linear(8, 8))
    with pytest.raises(ckpt_mod.CheckpointError, match=ckpt_mod.KEY_ENV):
        ckpt_mod.sign_checkpoint(ckpt)
    monkeypatch.setenv(ckpt_mod.KEY_ENV, KEY)
    (ckpt / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(ckpt_mod.CheckpointError, match="model.safetensors does not match"):
        ckpt_mod.sign_checkpoint(ckpt)
    monkeypatch.setenv(ckpt_mod.KEY_ENV, "short")
    with pytest.raises(ckpt_mod.CheckpointError, match="5 bytes; use at least 16"):
        ckpt_mod.save_checkpoint(tmp_path / "d", CFG, torch.nn.Linear(8, 8))
    assert not (tmp_path / "d").exists()
    monkeypatch.setenv(ckpt_mod.KEY_ENV, "")
    monkeypatch.setenv(ckpt_mod.KEY_FILE_ENV, str(tmp_path / "missing"))
    with pytest.raises(ckpt_mod.CheckpointError, match=f"cannot read the checkpoint key file {ckpt_mod.KEY_FILE_ENV}="):
        load_policy(ckpt)


def test_without_a_key_a_missing_checksums_file_still_only_warns(tmp_path):
    ckpt = ckpt_mod.save_checkpoint(tmp_path / "c", CFG, torch.nn.Linear(8, 8))
    (ckpt / "checksums.json").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_policy(ckpt)
    assert any("loaded without verification" in str(w.message) for w in caught)
