"""Checkpoint folders: plain directories a user can copy, swapped in atomically, and nothing outside
the checkpoint folder is ever removed (topk.json keys and symlink targets are not followed)."""

import json
import os
import subprocess

import pytest
import torch
from omegaconf import OmegaConf

from policylab.common import checkpoint as ckpt_mod
from policylab.evaluate import default_output_dir
from policylab.policies.loading import load_policy

pytestmark = pytest.mark.usefixtures("allow_torch_linear")

CFG = OmegaConf.create({"policy": {"_target_": "torch.nn.Linear", "in_features": 8, "out_features": 8}})


def _linear(value: float) -> torch.nn.Linear:
    model = torch.nn.Linear(8, 8)
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.fill_(value)
    return model


def _victim(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    return victim


def _old_style(ckpt_root, name, value):
    """A checkpoint as versions before plain folders wrote it: `<name> -> .<name>.<id>`."""
    hidden = ckpt_root / f".{name}.0123abcd"
    ckpt_mod.save_checkpoint(hidden, CFG, _linear(value), training_state={"step": int(value)})
    os.symlink(hidden.name, ckpt_root / name)
    return ckpt_root / name


def test_topk_keys_that_leave_the_folder_are_ignored_and_nothing_outside_is_removed(tmp_path):
    victim = _victim(tmp_path)
    root = tmp_path / "run" / "checkpoints"
    ckpt_mod.save_checkpoint(root / "latest", CFG, _linear(1))
    hostile = {"../../victim": 0.0, str(victim): 0.0, "latest": 0.0, ".latest.old-0123abcd": 0.0,
               "epoch=0001-test_mean_score=0.100": 0.1}
    (root / "topk.json").write_text(json.dumps(hostile))
    with pytest.warns(UserWarning, match=r"ignoring entries .*'\.\./\.\./victim'.*'latest'") as caught:
        topk = ckpt_mod.TopKCheckpointManager(root, "test/mean_score", mode="max", k=1)
    assert str(victim) in str(caught[0].message)
    assert topk.entries == {"epoch=0001-test_mean_score=0.100": 0.1}
    path = topk.get_ckpt_path({"epoch": 2, "test/mean_score": 0.9})  # drops everything else
    ckpt_mod.save_checkpoint(path, CFG, _linear(2))
    assert (victim / "precious.txt").read_text() == "keep me"
    assert load_policy(root / "latest").weight[0, 0].item() == 1
    assert json.loads((root / "topk.json").read_text()) == {"epoch=0002-test_mean_score=0.900": 0.9}


def test_a_format_str_that_makes_a_path_is_refused(tmp_path):
    topk = ckpt_mod.TopKCheckpointManager(tmp_path, "loss", mode="min", k=2, format_str="../{epoch}")
    with pytest.raises(ValueError, match=r"format_str '\.\./\{epoch\}'"):
        topk.get_ckpt_path({"epoch": 1, "loss": 0.5})


@pytest.mark.parametrize("link", ["absolute", "relative"])
def test_a_latest_symlink_to_a_folder_outside_is_replaced_not_followed(tmp_path, link):
    victim = _victim(tmp_path)
    root = tmp_path / "run" / "checkpoints"
    root.mkdir(parents=True)
    os.symlink(victim if link == "absolute" else "../../victim", root / "latest")
    ckpt_mod.save_checkpoint(root / "latest", CFG, _linear(3))
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not (root / "latest").is_symlink()
    os.symlink(victim, root / "epoch=0001-x=0.5")
    ckpt_mod.remove_checkpoint(root / "epoch=0001-x=0.5")
    assert (victim / "precious.txt").read_text() == "keep me"
    os.symlink(victim, root / ".latest.89abcdef")  # a hidden link that looks like scratch
    ckpt_mod.clean_orphans(root)
    assert (victim / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in root.iterdir()) == ["latest"]


def test_checkpoints_are_plain_folders_that_cp_and_tar_copy(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    for value in range(3):
        ckpt_mod.save_checkpoint(root / "latest", CFG, _linear(value), training_state={"step": value})
    assert sorted(p.name for p in root.iterdir()) == ["latest"]
    assert (root / "latest").is_dir() and not (root / "latest").is_symlink()
    subprocess.run(["cp", "-r", str(root / "latest"), str(tmp_path / "copied")], check=True)
    subprocess.run(["tar", "-cf", str(tmp_path / "c.tar"), "-C", str(root), "latest"], check=True)
    (tmp_path / "untarred").mkdir()
    subprocess.run(["tar", "-xf", str(tmp_path / "c.tar"), "-C", str(tmp_path / "untarred")], check=True)
    for copy in (tmp_path / "copied", tmp_path / "untarred" / "latest"):
        assert load_policy(copy).weight[0, 0].item() == 2
        assert ckpt_mod.load_training_state(copy)["step"] == 2


def test_old_symlinked_runs_load_and_their_next_save_becomes_a_folder(tmp_path):
    root = tmp_path / "checkpoints"
    latest = _old_style(root, "latest", 4)
    entry = _old_style(root, "epoch=0001-test_mean_score=0.400", 5)
    assert load_policy(latest).weight[0, 0].item() == 4
    assert ckpt_mod.load_training_state(latest)["step"] == 4
    ckpt_mod.save_checkpoint(latest, CFG, _linear(6))
    ckpt_mod.remove_checkpoint(entry)
    assert sorted(p.name for p in root.iterdir()) == ["latest"]
    assert not latest.is_symlink()
    assert load_policy(latest).weight[0, 0].item() == 6


def _killed_at(monkeypatch, name, call):
    """Make the `call`-th call of checkpoint.`name` die as a SIGKILL would (nothing after it runs)."""
    real, calls = getattr(ckpt_mod, name) if name != "os.replace" else os.replace, []

    def dying(*args):
        calls.append(args)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args)
    if name == "os.replace":
        monkeypatch.setattr(ckpt_mod.os, "replace", dying)
    else:
        monkeypatch.setattr(ckpt_mod, name, dying)


def test_a_kill_between_the_two_renames_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    ckpt_mod.save_checkpoint(root / "latest", CFG, _linear(1), training_state={"step": 1})
    with monkeypatch.context() as patch:
        _killed_at(patch, "os.replace", 2)  # the old one is aside, the new one not yet in place
        with pytest.raises(KeyboardInterrupt):
            ckpt_mod.save_checkpoint(root / "latest", CFG, _linear(2), training_state={"step": 2})
    assert not (root / "latest").exists()
    assert load_policy(root / "latest").weight[0, 0].item() == 1  # readers find the old one
    assert ckpt_mod.load_training_state(root / "latest")["step"] == 1
    ckpt_mod.clean_orphans(root)  # a run's start renames it back
    assert sorted(p.name for p in root.iterdir()) == ["latest"]
    assert ckpt_mod.load_training_state(root / "latest")["step"] == 1


def test_a_kill_before_the_old_checkpoint_is_removed_leaves_the_new_one(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    ckpt_mod.save_checkpoint(root / "latest", CFG, _linear(1), training_state={"step": 1})
    with monkeypatch.context() as patch:
        _killed_at(patch, "_discard", 1)
        with pytest.raises(KeyboardInterrupt):
            ckpt_mod.save_checkpoint(root / "latest", CFG, _linear(2), training_state={"step": 2})
    assert ckpt_mod.load_training_state(root / "latest")["step"] == 2
    assert [p.name.startswith(".latest.old-") for p in root.iterdir()].count(True) == 1
    ckpt_mod.clean_orphans(root)
    assert sorted(p.name for p in root.iterdir()) == ["latest"]
    assert ckpt_mod.load_training_state(root / "latest")["step"] == 2


@pytest.mark.parametrize("old_style", [False, True])
def test_eval_output_is_named_after_the_folder_given(tmp_path, old_style):
    root = tmp_path / "run" / "checkpoints"
    if old_style:
        _old_style(root, "latest", 1)
    else:
        ckpt_mod.save_checkpoint(root / "latest", CFG, _linear(1))
    assert default_output_dir(root / "latest") == tmp_path / "run" / "eval" / "latest"
