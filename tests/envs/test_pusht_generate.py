"""The PushT demo CLI: DP's keys, shapes and dtypes; seeds recorded and skipped on re-runs."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from policylab.data.generate import pusht as gen
from policylab.data.replay_buffer import ReplayBuffer
from tests.helpers import REPO


def test_parse_args():
    cfg = gen.parse_args(["n=3", "out=x.zarr", "seed=5", "legacy=true"])
    assert (cfg.n, cfg.out, cfg.seed, cfg.legacy, cfg.max_steps) == (3, "x.zarr", 5, True, 300)
    with pytest.raises(SystemExit, match="unknown key .sed."):
        gen.parse_args(["n=3", "out=x", "sed=1"])
    with pytest.raises(SystemExit, match="out="):
        gen.parse_args(["n=3"])


def test_generate_writes_dp_keys_and_skips_done_seeds(tmp_path, capsys):
    out = str(tmp_path / "demo.zarr")
    assert gen.main(["n=1", f"out={out}", "seed=0"]) == 0
    assert "episodes/minute" in capsys.readouterr().out
    buffer = ReplayBuffer.create_from_path(out)
    n = buffer.n_steps
    expected = {"img": ((n, 96, 96, 3), np.uint8), "state": ((n, 5), np.float32),
                "keypoint": ((n, 9, 2), np.float32), "action": ((n, 2), np.float32),
                "n_contacts": ((n, 1), np.float32)}
    assert {k: (v.shape, v.dtype) for k, v in buffer.items()} == expected
    assert buffer.n_episodes == 1
    assert 0 < n <= 300
    np.testing.assert_array_equal(buffer.meta["episode_seeds"][:], [0])
    # the first step is the reset observation of seed 0 (legacy False): block xy = drawn xy
    np.testing.assert_array_equal(buffer["state"][0, 2:4], [217, 292])
    # topping up to 2 with the same first seed moves on to seed 1
    stats = gen.generate(gen.parse_args(["n=2", f"out={out}", "seed=0"]))
    assert stats["saved"] == 1
    buffer = ReplayBuffer.create_from_path(out)
    np.testing.assert_array_equal(buffer.meta["episode_seeds"][:], [0, 1])


def test_key_value_syntax_is_hydra_s():
    cfg = gen.parse_args(["n=2", "out=x.zarr", "max_attempts=null", "images=false"])
    assert cfg.max_attempts is None and cfg.images is False
    with pytest.raises(SystemExit, match="n: .*could not be converted"):
        gen.parse_args(["n=two", "out=x"])


def test_without_images_the_store_has_no_img(tmp_path):
    out = tmp_path / "state.zarr"
    gen.main(["n=1", f"out={out}", "seed=0", "images=false"])
    from policylab.data.replay_buffer import ReplayBuffer

    buffer = ReplayBuffer.create_from_path(out, mode="r")
    assert "img" not in set(buffer.keys()) and {"state", "keypoint", "action"} <= set(buffer.keys())


# Kill -9 the generator around the commit of its 3rd episode: just before `episode_ends` takes it
# (its rows and seed written), or just after (the old generator then had not written the seed yet).
KILLED_GENERATOR = """
import os, signal, sys
from policylab.data.generate import pusht
from policylab.data.replay_buffer import ReplayBuffer

when, original = sys.argv.pop(1), ReplayBuffer._append_episode_end

def commit(self, stop):
    if when == "before_commit" and self.n_episodes == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    original(self, stop)
    if when == "after_commit" and self.n_episodes == 3:
        os.kill(os.getpid(), signal.SIGKILL)

ReplayBuffer._append_episode_end = commit
pusht.main(sys.argv[1:])
"""


@pytest.mark.parametrize(("when", "committed"), [("before_commit", 2), ("after_commit", 3)])
def test_generator_killed_at_the_commit_leaves_episodes_and_seeds_equal(tmp_path, when, committed):
    out = tmp_path / "killed.zarr"
    result = subprocess.run([sys.executable, "-c", KILLED_GENERATOR, when, "n=5", f"out={out}", "images=false"],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    buffer = ReplayBuffer.create_from_path(out)
    assert buffer.n_episodes == committed
    np.testing.assert_array_equal(buffer.episode_meta("episode_seeds"), np.arange(committed))
    # the next run appends (it used to refuse: "3 episodes but 2 seeds")
    stats = gen.generate(gen.parse_args([f"n={committed + 1}", f"out={out}", "images=false"]))
    assert (stats["saved"], stats["n_episodes"]) == (1, committed + 1)
    seeds = ReplayBuffer.create_from_path(out).episode_meta("episode_seeds")
    np.testing.assert_array_equal(seeds, np.arange(committed + 1))
