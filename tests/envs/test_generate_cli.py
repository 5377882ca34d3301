"""`python -m policylab.data.generate` / `policylab-generate`: argument errors, PushT delegation,
top-up reruns, exit codes of the console script, `--help` without the pusht extra."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from policylab.data.generate.__main__ import main, run
from policylab.data.replay_buffer import ReplayBuffer
from tests.helpers import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
# What a console script does (pip's wrapper): sys.exit(main()); the installed script when there is one.
SCRIPT = Path(sys.executable).parent / "policylab-generate"
WRAPPER = [str(SCRIPT)] if SCRIPT.exists() else [
    sys.executable, "-c", "import sys; from policylab.data.generate.__main__ import main; sys.exit(main())"]
# Imports of the pusht extra fail as if it were not installed.
NO_PUSHT = "import sys; sys.modules.update(pymunk=None, pygame=None, shapely=None); "


def _cli(args, prefix=None, timeout=300):
    cmd = WRAPPER + args if prefix is None else [sys.executable, "-c", prefix + "import runpy; sys.argv[1:] = "
                                                 f"{args!r}; runpy.run_module('policylab.data.generate', "
                                                 "run_name='__main__')"]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout, check=False)


def test_argument_errors_name_the_problem(tmp_path):
    with pytest.raises(SystemExit, match="missing required argument.*n=..."):
        main(["task=pick_cube_lowdim"])
    with pytest.raises(SystemExit, match="unknown key 'episodes'"):
        main(["task=pick_cube_lowdim", "n=1", "episodes=3"])
    with pytest.raises(SystemExit, match="unknown task 'nope'.*pick_cube_lowdim"):
        main(["task=nope", "n=1", f"out={tmp_path / 'x.zarr'}"])
    with pytest.raises(SystemExit, match="images: .*not a valid bool"):
        main(["task=pick_cube_lowdim", "n=1", "images=maybe"])
    with pytest.raises(SystemExit, match="robosuite_can_lowdim' has no `demo` entry"):
        main(["task=robosuite_can_lowdim", "n=1", f"out={tmp_path / 'x.zarr'}"])
    with pytest.raises(SystemExit, match="mode='twice'.*top_up.*append"):
        main(["task=pick_cube_lowdim", "n=1", "mode=twice", f"out={tmp_path / 'y.zarr'}"])


def test_pusht_goes_to_its_own_generator(tmp_path):
    out = tmp_path / "pusht.zarr"
    assert main(["task=pusht_lowdim", "n=1", f"out={out}", "max_steps=300"]) == 0
    rb = ReplayBuffer.create_from_path(out)
    assert rb.n_episodes == 1
    assert {"img", "keypoint", "state", "action"} <= set(rb.keys())
    # the old entry point still works (and tops the store up to n)
    result = subprocess.run([sys.executable, "-m", "policylab.data.generate.pusht", "n=2", f"out={out}"],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ReplayBuffer.create_from_path(out).n_episodes == 2


def test_rerun_tops_up_to_n_and_append_adds_n(tmp_path):
    out = tmp_path / "push.zarr"
    args = ["task=metaworld_push_lowdim", f"out={out}", "images=false"]
    first = run([*args, "n=1"])
    second = run([*args, "n=2"])
    again = run([*args, "n=2"])  # the same command twice: the store is complete, nothing is added
    assert (first["saved"], second["saved"], again["saved"], again["attempts"]) == (1, 1, 0, 0)
    assert again["n_episodes"] == 2
    appended = run([*args, "n=1", "mode=append"])
    assert (appended["saved"], appended["n_episodes"]) == (1, 3)
    rb = ReplayBuffer.create_from_path(out)
    assert list(rb.episode_meta("episode_seeds")) == [0, 1, 2]
    assert "image" not in rb
    assert rb["state"].shape[1:] == (39,)
    assert np.all(rb["reward"][:] >= 0)


def test_console_script_exits_0_after_success_and_1_on_failure(tmp_path):
    out = tmp_path / "push.zarr"
    ok = _cli(["task=metaworld_push_lowdim", "n=1", f"out={out}", "images=false"])
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "saved 1 episodes" in ok.stdout
    assert "'saved'" not in ok.stderr + ok.stdout  # no stats dict printed by the wrapper
    bad = _cli(["task=nope", "n=1", f"out={out}"])
    assert bad.returncode == 1 and "unknown task 'nope'" in bad.stderr
    few = _cli(["task=metaworld_push_lowdim", "n=3", f"out={out}", "images=false", "max_attempts=1"])
    assert few.returncode == 1 and "only 1 of 2 episodes after 1 attempts" in few.stderr


def test_help_works_without_the_pusht_extra(tmp_path):
    for args in (["--help"], ["-h"]):
        result = _cli(args, prefix=NO_PUSHT, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "task=<name>" in result.stdout and "mode=top_up" in result.stdout
    result = subprocess.run([sys.executable, "-c", NO_PUSHT + "import runpy; sys.argv[1:] = ['--help']; "
                             "runpy.run_module('policylab.data.generate.pusht', run_name='__main__')"],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "render_size" in result.stdout
    missing = _cli(["task=pusht_lowdim", "n=1", f"out={tmp_path / 'p.zarr'}"], prefix=NO_PUSHT, timeout=120)
    assert missing.returncode == 1
    assert "pip install 'policylab[pusht]'" in missing.stderr
