"""Every console script of pyproject.toml exits 0 when it succeeds and non-zero when it fails,
run as pip's wrapper runs it (`sys.exit(<entry point>())`) in a subprocess."""

import json
import os
import subprocess
import sys
import tomllib

import pytest

from tests.helpers import REPO, make_pusht_store, tiny

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def run_script(name: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    """`name args...` as the installed console script would run (pip writes exactly this wrapper)."""
    module, func = SCRIPTS[name].split(":")
    code = f"import sys; from {module} import {func}; sys.exit({func}())"
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-c", code, *args], check=False, cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_scripts_are_these():
    assert set(SCRIPTS) == {"policylab-train", "policylab-eval", "policylab-generate"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_exits_0(name):
    result = run_script(name, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() and not result.stderr.strip()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny training run through `policylab-train` (exit code checked by the test that uses it)."""
    root = tmp_path_factory.mktemp("console")
    store = make_pusht_store(root / "store.zarr", lengths=[20, 20, 20])
    result = run_script("policylab-train", *tiny(store, root / "run", "training.num_epochs=1",
                                                 "training.max_train_steps=2", "task.env_runner.n_test=1",
                                                 "task.env_runner.n_train=0", "task.env_runner.max_steps=4"))
    return root / "run", result


def test_train_and_eval_exit_0_on_success(run_dir, tmp_path):
    run, train = run_dir
    assert train.returncode == 0, train.stderr[-3000:]
    result = run_script("policylab-eval", f"checkpoint={run}/checkpoints/latest", f"output_dir={tmp_path}",
                        "n_test=1", "n_train=0", "max_steps=4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/mean_score" in json.loads((tmp_path / "eval_log.json").read_text())
    assert "{" not in result.stderr  # the old bug: the returned dict printed to stderr by sys.exit


def test_generate_exits_0_on_success_for_both_generators(tmp_path):
    for task in ("pusht_lowdim", "pick_cube_lowdim"):
        result = run_script("policylab-generate", f"task={task}", "n=1", f"out={tmp_path / task}.zarr")
        assert result.returncode == 0, f"{task}: {result.stderr[-3000:]}"
        assert "saved 1 episodes" in result.stdout


@pytest.mark.parametrize("name, args, message", [
    ("policylab-train", ["training.no_such_key=1"], "no_such_key"),
    ("policylab-eval", ["checkpoint=does/not/exist"], "does/not/exist"),
    ("policylab-eval", ["n_test=1"], "checkpoint=..."),
    ("policylab-generate", ["task=no_such_task", "n=1"], "no_such_task"),
    ("policylab-generate", ["task=pick_cube_lowdim", "n=one"], "n: "),
])
def test_failure_exits_non_zero_naming_the_cause(name, args, message, tmp_path):
    result = run_script(name, *args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
