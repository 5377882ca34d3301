"""`python -m policylab.data.generate`: argument errors, PushT delegation, resumable stores."""

import subprocess
import sys

import numpy as np
import pytest

from policylab.data.generate.__main__ import main
from policylab.data.replay_buffer import ReplayBuffer
from tests.helpers import REPO


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


def test_pusht_goes_to_its_own_generator(tmp_path):
    out = tmp_path / "pusht.zarr"
    main(["task=pusht_lowdim", "n=1", f"out={out}", "max_steps=300"])
    rb = ReplayBuffer.create_from_path(out)
    assert rb.n_episodes == 1
    assert {"img", "keypoint", "state", "action"} <= set(rb.keys())
    # the old entry point still works (and appends n more)
    result = subprocess.run([sys.executable, "-m", "policylab.data.generate.pusht", "n=1", f"out={out}"],
                            cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ReplayBuffer.create_from_path(out).n_episodes == 2


def test_rerun_only_adds_missing_episodes(tmp_path):
    out = tmp_path / "push.zarr"
    first = main(["task=metaworld_push_lowdim", "n=1", f"out={out}", "images=false"])
    second = main(["task=metaworld_push_lowdim", "n=2", f"out={out}", "images=false"])
    assert first["saved"] == 1
    assert second["saved"] == 2
    assert second["n_episodes"] == 3
    rb = ReplayBuffer.create_from_path(out)
    assert list(rb.meta["episode_seeds"][:]) == [0, 1, 2]
    assert "image" not in rb
    assert rb["state"].shape[1:] == (39,)
    assert np.all(rb["reward"][:] >= 0)
