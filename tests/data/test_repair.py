"""`python -m policylab.data.repair` never loses good data: a store from elsewhere is fine, the
destructive fix needs a backup (or an explicit no_backup=true), and each fix mode keeps exactly the
episodes it says."""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from policylab.data.repair import main as repair_main
from policylab.data.replay_buffer import ReplayBuffer
from tests.data.zarr_v2_fixtures import pusht_like_arrays, write_v2_store
from tests.helpers import REPO

DP_LENGTHS = [20 + i for i in range(12)]


def _dp_store(path):
    """A Diffusion Policy store: PushT keys, 12 episodes, no seeds, no checksums (json + numcodecs only)."""
    arrays = pusht_like_arrays(DP_LENGTHS, image_size=8)
    return write_v2_store(path, arrays, np.cumsum(DP_LENGTHS), chunks={"img": (1, 8, 8, 3), "action": (64, 2)})


def _own_store(path, n=4, seeds=None, images=False):
    """A policylab store, episode i holding the value i; `seeds` entries of meta/episode_seeds (default all);
    `images`: also an "img" key as the generators write it (Jpeg2k, chunks of one row)."""
    rng = np.random.default_rng(0)
    with ReplayBuffer.create_from_path(path, mode="w") as rb:
        for i in range(n):
            images_of = {"img": rng.integers(0, 255, (10, 8, 8, 3), dtype=np.uint8)} if images else {}
            rb.add_episode({"action": np.full((10, 2), i, np.float32), **images_of},
                           chunks={"action": (16, 2), "img": (1, 8, 8, 3)}, compressors={"img": "image"},
                           episode_meta={"episode_seeds": 100 + i})
        if seeds is not None:
            rb.update_meta({"episode_seeds": np.arange(100, 100 + seeds)})
    return path


def _episode_values(path):
    rb = ReplayBuffer.copy_from_path(path)
    return [int(rb.get_episode(i)["action"][0, 0]) for i in range(rb.n_episodes)]


def test_a_healthy_dp_store_is_fine_and_truncate_keeps_all_12_episodes(tmp_path):
    # On 5af9142 the report exited 1 and `fix=truncate` dropped 12 of 12 episodes, exit 0, no backup.
    path = _dp_store(tmp_path / "dp.zarr")
    before = ReplayBuffer.copy_from_path(path)
    report = subprocess.run([sys.executable, "-m", "policylab.data.repair", str(path)], cwd=REPO,
                            capture_output=True, text=True, check=False)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "12 episodes" in report.stdout and "fine: no problems found" in report.stdout
    assert "checked: meta/episode_ends against 5 data arrays" in report.stdout
    assert "unchecked: data/action: the store has no checksums" in report.stdout
    assert repair_main([str(path), "fix=truncate", "no_backup=true"]) == 0
    after = ReplayBuffer.copy_from_path(path)
    assert after.n_episodes == 12
    for key in before.keys():  # noqa: SIM118 - a ReplayBuffer is not a dict
        np.testing.assert_array_equal(after[key], before[key])


def test_truncate_is_refused_without_backup_or_no_backup(tmp_path, capsys):
    path = _own_store(tmp_path / "short.zarr", seeds=2)
    with pytest.raises(SystemExit) as exit_info:
        repair_main([str(path), "fix=truncate"])
    assert exit_info.value.code == 2
    assert "backup=" in capsys.readouterr().err
    assert ReplayBuffer.create_from_path(path).n_episodes == 4
    taken = tmp_path / "taken.zarr"
    taken.mkdir()
    with pytest.raises(SystemExit, match="backup path .*taken.zarr exists"):
        repair_main([str(path), "fix=truncate", f"backup={taken}"])
    assert _episode_values(path) == [0, 1, 2, 3]


@pytest.mark.parametrize(("args", "named"), [(["fix=trunc"], "fix='trunc'"), (["fixx=fill"], "fixx"),
                                             (["--fix", "fill"], "--fix")])
def test_a_bad_argument_is_refused_naming_it(tmp_path, capsys, args, named):
    path = _own_store(tmp_path / "short.zarr", seeds=2)
    with pytest.raises(SystemExit) as exit_info:
        repair_main([str(path), *args])
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err
    assert _episode_values(path) == [0, 1, 2, 3]
    assert ReplayBuffer.create_from_path(path).meta["episode_seeds"][:].tolist() == [100, 101]

def test_fill_keeps_every_episode(tmp_path):
    path = _own_store(tmp_path / "short.zarr", seeds=2)
    assert repair_main([str(path), "fix=fill"]) == 0
    assert _episode_values(path) == [0, 1, 2, 3]
    assert ReplayBuffer.create_from_path(path).episode_meta("episode_seeds").tolist() == [100, 101, -1, -1]


def test_truncate_keeps_the_episodes_before_the_first_without_a_seed(tmp_path):
    path = _own_store(tmp_path / "short.zarr", seeds=2)
    assert repair_main([str(path), "fix=truncate", f"backup={tmp_path / 'b.zarr'}"]) == 0
    assert _episode_values(path) == [0, 1]
    assert _episode_values(tmp_path / "b.zarr") == [0, 1, 2, 3]


@pytest.mark.parametrize("damage", ["checksum", "encoded_checksum", "missing_chunk"])
def test_truncate_keeps_the_episodes_before_the_first_damaged_one(tmp_path, capsys, damage):
    path = _own_store(tmp_path / "s.zarr", n=6, images=damage == "encoded_checksum")
    if damage == "encoded_checksum":  # bytes flipped inside a Jpeg2k chunk file of row 25: episode 2
        chunk = path / "data" / "img" / "25.0.0.0"
        chunk.write_bytes(bytes(b ^ 0x5A if 100 <= i < 108 else b for i, b in enumerate(chunk.read_bytes())))
    elif damage == "checksum":
        rb = ReplayBuffer.create_from_path(path, mode="a")
        raw = rb["action"][:]
        raw[25, 1] = 7.0  # episode 2, written behind the checksums' back (what a flipped bit does)
        rb["action"][25] = raw[25]
        rb.close()
    else:
        (path / "data" / "action" / "2.0").unlink()  # rows 32..47: episodes 3, 4
    first_bad = 3 if damage == "missing_chunk" else 2
    original = tmp_path / "original.zarr"
    shutil.copytree(path, original)
    assert repair_main([str(path)]) == 1
    assert repair_main([str(path), "fix=fill"]) == 1  # fill never drops data: the damage stays
    out = capsys.readouterr().out
    assert f"episode {first_bad}" in out
    if damage == "encoded_checksum":
        assert "data/img episode 2 (rows 20..29) does not match its crc32c checksum of encoded chunk bytes" in out
    assert repair_main([str(path), "fix=truncate", f"backup={tmp_path / 'b.zarr'}"]) == 0
    assert _episode_values(path) == list(range(first_bad))
    assert ReplayBuffer.create_from_path(path).episode_meta("episode_seeds").tolist() == list(
        range(100, 100 + first_bad))
    backup = tmp_path / "b.zarr"  # byte for byte the damaged store
    for f in original.rglob("*"):
        if f.is_file():
            assert (backup / f.relative_to(original)).read_bytes() == f.read_bytes()
    assert repair_main([str(path)]) == 0
