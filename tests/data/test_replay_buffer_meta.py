"""update_meta survives a kill at any store write; stores broken by the old delete-then-rewrite are repaired."""

import subprocess
import sys

import numpy as np
import pytest
import zarr

from policylab.data.repair import main as repair_main
from policylab.data.replay_buffer import ReplayBuffer

SEEDS = "episode_seeds"


class Killed(BaseException):
    """Stands for kill -9: raised from inside a store write, nothing after it runs."""


def _store(path, n_episodes=3, zarr_format=2):
    rb = ReplayBuffer.create_from_path(path, mode="w", zarr_format=zarr_format)
    for i in range(n_episodes):
        rb.add_episode({"obs": np.full((4, 2), i, np.float32)})
        rb.update_meta({SEEDS: np.arange(100, 101 + i)})
    return rb


def _kill_after(monkeypatch, n_writes):
    """Make the n-th store mutation (set / delete) of LocalStore raise Killed."""
    count = {"n": 0}
    for name in ("set", "delete", "delete_dir", "set_if_not_exists"):
        original = getattr(zarr.storage.LocalStore, name)

        async def wrapped(self, *args, _original=original, **kwargs):
            count["n"] += 1
            if count["n"] == n_writes:
                raise Killed
            return await _original(self, *args, **kwargs)

        monkeypatch.setattr(zarr.storage.LocalStore, name, wrapped)
    return count


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_update_meta_killed_at_any_write_leaves_old_or_new_seeds(tmp_path, monkeypatch, zarr_format):
    n_writes = None
    for k in range(1, 20):
        path = tmp_path / f"k{k}.zarr"
        rb = _store(path, zarr_format=zarr_format)
        with monkeypatch.context() as m:
            count = _kill_after(m, k)
            try:
                rb.update_meta({SEEDS: np.arange(100, 104)})
            except Killed:
                pass
            else:
                n_writes = count["n"]
        rb.close()
        seeds = ReplayBuffer.create_from_path(path).meta[SEEDS][:]
        assert seeds.tolist() in ([100, 101, 102], [100, 101, 102, 103]), f"killed at write {k}: {seeds}"
        if n_writes is not None:
            break
    assert n_writes is not None
    assert n_writes >= 2  # every write of the update was a kill point


def _broken_store(path, seeds_len):
    """A store as the old update_meta left it after a kill between delete and rewrite (or a shorter list)."""
    rb = _store(path, n_episodes=4)
    if seeds_len is None:
        del rb.meta[SEEDS]
    else:
        rb.update_meta({SEEDS: np.arange(100, 100 + seeds_len)})
    rb.close()


def test_repair_notes_then_fills_missing_seeds(tmp_path, capsys):
    # No seeds is what every store from elsewhere looks like: a note, not a problem (issue 26: a
    # "problem" here led users to `fix=truncate`, which dropped every episode).
    path = tmp_path / "broken.zarr"
    _broken_store(path, seeds_len=None)
    assert repair_main([str(path)]) == 0  # report only: nothing changed
    out = capsys.readouterr().out
    assert "meta/episode_seeds" in out
    assert "no meta/episode_seeds" in out
    assert "fix=fill" in out
    assert SEEDS not in ReplayBuffer.create_from_path(path).meta
    assert repair_main([str(path), "fix=fill"]) == 0
    rb = ReplayBuffer.create_from_path(path)
    assert rb.n_episodes == 4
    assert rb.meta[SEEDS][:].tolist() == [-1, -1, -1, -1]
    assert repair_main([str(path)]) == 0
    assert "no problems" in capsys.readouterr().out


def test_repair_truncates_episodes_to_the_seeds(tmp_path, capsys):
    path = tmp_path / "short.zarr"
    _broken_store(path, seeds_len=2)
    assert repair_main([str(path)]) == 1
    assert "fix=truncate" in capsys.readouterr().out
    assert repair_main([str(path), "fix=truncate", f"backup={tmp_path / 'backup.zarr'}"]) == 0
    rb = ReplayBuffer.create_from_path(path)
    assert rb.n_episodes == 2
    assert rb.meta[SEEDS][:].tolist() == [100, 101]
    assert rb.n_steps == 8
    assert "dropped episodes 2..3 (2)" in capsys.readouterr().out
    assert ReplayBuffer.create_from_path(tmp_path / "backup.zarr").n_episodes == 4


def test_surplus_seeds_are_cut_and_the_cli_runs(tmp_path):
    path = tmp_path / "long.zarr"
    _broken_store(path, seeds_len=6)
    result = subprocess.run([sys.executable, "-m", "policylab.data.repair", str(path), "fix=fill"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert ReplayBuffer.create_from_path(path).meta[SEEDS][:].tolist() == [100, 101, 102, 103]
