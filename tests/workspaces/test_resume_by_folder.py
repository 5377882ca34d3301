"""`python train.py --resume <run dir>`: the run's own overrides, reused; further overrides only where
they cannot change a shape; a refused start (by folder, or the old way with a forgotten override)
names the keys that differ and leaves the run's `.hydra/` and logs byte for byte as they were."""

import pytest
from omegaconf import OmegaConf

from policylab.cli import resume_argv
from policylab.common import resume
from policylab.common.checkpoint import load_training_state
from policylab.common.logging import read_logs
from tests.helpers import run_train, tiny

STEPS = ["training.num_epochs=3", "training.checkpoint_every=1", "training.gradient_accumulate_every=2"]


def _record(run_dir):
    """The bytes a refused start must not change: Hydra's record, the logs, the checkpoint names."""
    files = [*sorted((run_dir / ".hydra").iterdir()), run_dir / "logs.jsonl", run_dir / "train.log"]
    return {p.name: p.read_bytes() for p in files} | {"checkpoints": sorted(p.name for p in (run_dir / "checkpoints").iterdir())}


@pytest.fixture(scope="module")
def stopped(store, tmp_path_factory):
    """A run stopped by max_train_steps inside its second epoch, and the uninterrupted run's logs."""
    tmp = tmp_path_factory.mktemp("resume")
    full = run_train(tiny(store, tmp / "full", *STEPS))
    assert full.returncode == 0, full.stderr[-3000:]
    want = [r for r in read_logs(tmp / "full" / "logs.jsonl") if "lr" in r]
    per_epoch = sum(1 for r in want if r["epoch"] == 0)
    run_dir = tmp / "stopped"
    result = run_train(tiny(store, run_dir, *STEPS, f"training.max_train_steps={per_epoch + per_epoch // 2}"))
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, want


def test_shape_changing_override_is_refused_with_the_diff_and_nothing_written(stopped):
    run_dir, _ = stopped
    before = _record(run_dir)
    refused = run_train(["--resume", str(run_dir), "training.max_train_steps=null", "optimizer.lr=0.5",
                         "policy.model.down_dims=[8,16]"])
    assert refused.returncode != 0
    assert "optimizer.lr: 0.0001 -> 0.5   (refused)" in refused.stderr
    assert "policy.model.down_dims: [16, 32] -> [8, 16]   (refused)" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _record(run_dir) == before
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").optimizer.lr == pytest.approx(1e-4)


def test_forgotten_override_the_old_way_is_the_keys_diff_not_size_mismatches(stopped, store):
    """Resumed the long way without `debug=tiny`: a short error naming the differing keys; the run's
    `.hydra/` record and logs are untouched (Hydra wrote its record elsewhere, then dropped it)."""
    run_dir, _ = stopped
    before = _record(run_dir)
    old_way = [a for a in tiny(store, run_dir, *STEPS, "training.resume=true") if a != "debug=tiny"]
    result = run_train(old_way)
    assert result.returncode != 0
    assert "differs from the checkpoint's (old -> new)" in result.stderr
    assert "horizon: 8 -> 16" in result.stderr and "--resume <run dir>" in result.stderr
    assert "size mismatch for" not in result.stderr.split("The loader said:")[0]
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) < 60
    assert _record(run_dir) == before
    assert not list(run_dir.glob(".hydra-*"))


def test_resume_by_folder_equals_the_uninterrupted_run(stopped, tmp_path):
    """The stopped run resumed by its folder alone (plus lifting its step limit) trains every
    remaining step with the uninterrupted run's losses, and its record says how it was resumed."""
    run_dir, want = stopped
    resumed = run_train(["--resume", str(run_dir), "training.max_train_steps=null"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = [r for r in read_logs(run_dir / "logs.jsonl") if "lr" in r]
    assert [(r["global_step"], r["epoch"]) for r in got] == [(r["global_step"], r["epoch"]) for r in want]
    for r, w in zip(got, want):
        assert r["train_loss"] == pytest.approx(w["train_loss"], abs=1e-6), f"step {r['global_step']}"
    assert load_training_state(run_dir / "checkpoints" / "latest")["epoch"] == 3
    overrides = list(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))
    assert "debug=tiny" in overrides and overrides[-2:] == ["training.max_train_steps=null", "training.resume=true"]
    assert not any(o.startswith("training.max_train_steps=") and o != "training.max_train_steps=null" for o in overrides)
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").training.resume is True
    assert not list(run_dir.glob(".hydra-*"))


def test_resumable_keys_and_merged_overrides():
    assert resume.resumable("training.num_epochs") and resume.resumable("logging.mode")
    assert resume.resumable("training.max_train_minutes")
    assert not resume.resumable("training.num_epochs_x") and not resume.resumable("optimizer.lr")
    assert not resume.resumable("policy.down_dims") and not resume.resumable("dataloader.batch_size")
    merged = resume.merge_overrides(["debug=tiny", "training.num_epochs=3", "+x.y=1"],
                                    ["training.num_epochs=9", "training.resume=true"])
    assert merged == ["debug=tiny", "+x.y=1", "training.num_epochs=9", "training.resume=true"]
    diff = resume.config_diff({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"b": 2, "c": [1, 2]}, "e": 1})
    assert diff == {"a.b": (1, 2), "d": (1, "<absent>"), "e": ("<absent>", 1)}


@pytest.mark.parametrize("override", ["hydra.run.dir=/elsewhere", "hydra/job_logging=none",
                                      "policy._target_=os.system", "x=${oc.env:HOME}", "+a._args_=[1]"])
def test_overrides_from_a_run_folder_cannot_reach_code_or_hydra(tmp_path, override):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(["debug=tiny", override]))
    with pytest.raises(resume.ResumeRefused, match="is not one train.py resumes"):
        resume.read_run_overrides(tmp_path)
    (tmp_path / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(["debug=tiny", "n=${calc:2 * 3}"]))
    assert resume.read_run_overrides(tmp_path) == ["debug=tiny", "n=${calc:2 * 3}"]


def test_resume_of_a_folder_that_is_not_a_run_names_it(tmp_path):
    result = run_train(["--resume", str(tmp_path)])
    assert result.returncode != 0 and f"--resume {tmp_path}: no .hydra/overrides.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_resume_argv_forms(tmp_path):
    """`--resume <dir>`, `--resume=<dir>` and `training.resume=<dir>` all resume by folder; the
    values true/false/auto keep their meaning; argv without a folder passes through unchanged."""
    for argv in (["--resume", str(tmp_path)], [f"--resume={tmp_path}"], [f"training.resume={tmp_path}"]):
        with pytest.raises(resume.ResumeRefused, match=f"--resume {tmp_path}: no .hydra/overrides.yaml"):
            resume_argv([*argv, "training.num_epochs=5"])
    for value in ("true", "false", "auto", "True"):
        assert resume_argv(["debug=tiny", f"training.resume={value}"]) == ["debug=tiny", f"training.resume={value}"]
    with pytest.raises(resume.ResumeRefused, match="needs a run directory"):
        resume_argv(["--resume"])
