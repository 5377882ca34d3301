"""`python -m policylab.data.inspect`: the printout, exact stats, integrity, and the episode files."""

import av
import cv2
import numpy as np
import pytest

from policylab.data.inspect import key_stats, main
from policylab.data.replay_buffer import ReplayBuffer
from tests.data.zarr_v2_fixtures import pusht_like_arrays, write_v2_store

LENGTHS = [5, 12, 7]
SIZE = 16


def frame_colour(t: int) -> np.ndarray:
    """A flat colour per step, so a lossy video still tells frames apart."""
    return np.array([10 + 20 * (t % 12), 240 - 15 * (t % 12), 60 + 5 * t], np.uint8)


def make_store(path, seeds=True):
    """Three episodes: low-dim `action` (L, 2) and `state` (L, 3), two cameras (L, 16, 16, 3) uint8."""
    rng = np.random.default_rng(0)
    truth = []
    with ReplayBuffer.create_from_path(path, mode="w") as buffer:
        for length in LENGTHS:
            front = np.stack([np.broadcast_to(frame_colour(t), (SIZE, SIZE, 3)) for t in range(length)])
            episode = {"action": rng.normal(size=(length, 2)).astype(np.float32),
                       "state": rng.uniform(-3, 3, size=(length, 3)).astype(np.float32),
                       "front": np.ascontiguousarray(front), "wrist": np.ascontiguousarray(255 - front)}
            buffer.add_episode(episode)
            truth.append(episode)
        if seeds:
            buffer.update_meta({"episode_seeds": np.array([7, 8, 9][: 3 if seeds is True else seeds], np.int64)})
    return truth


def test_stats_are_exact(tmp_path):
    truth = make_store(tmp_path / "s.zarr")
    buffer = ReplayBuffer.create_from_path(tmp_path / "s.zarr")
    every = {k: np.concatenate([e[k] for e in truth]).astype(np.float64) for k in truth[0]}
    for key in ("action", "state"):
        stats = key_stats(buffer.data[key], buffer.n_steps)
        assert stats["samples"] == sum(LENGTHS)
        np.testing.assert_array_equal(stats["min"], every[key].min(0))
        np.testing.assert_array_equal(stats["max"], every[key].max(0))
        np.testing.assert_allclose(stats["mean"], every[key].mean(0), rtol=1e-12)
        np.testing.assert_allclose(stats["std"], every[key].std(0), rtol=1e-12)
    image = key_stats(buffer.data["front"], buffer.n_steps)  # fewer frames than image_samples: all of them
    pixels = every["front"].reshape(-1, 3)
    np.testing.assert_array_equal(image["min"], pixels.min(0))
    np.testing.assert_allclose(image["mean"], pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(image["std"], pixels.std(0), rtol=1e-12)
    sampled = key_stats(buffer.data["front"], buffer.n_steps, image_samples=3)  # steps 0, 12, 23
    assert sampled["samples"] == 3
    np.testing.assert_array_equal(sampled["max"], every["front"][[0, 12, 23]].reshape(-1, 3).max(0))


def test_printout(tmp_path, capsys):
    make_store(tmp_path / "s.zarr")
    assert main([str(tmp_path / "s.zarr")]) == 0
    out = capsys.readouterr().out
    assert "episodes: 3, lengths min 5 / mean 8.0 / max 12, 24 steps" in out
    assert "      1      12            5..16  8" in out  # episode, length, steps, seed
    assert "  front            (24, 16, 16, 3)        uint8" in out
    assert "(per channel, 24 frames)" in out and "action           min [" in out
    assert "meta: episode_seeds (3,) int64" in out
    assert "integrity: ok" in out


def test_zip_and_diffusion_policy_layouts(tmp_path, capsys):
    """DP's published layout (float32 images 0..255, zarr v2 written by another implementation), as a
    .zarr.zip and as a real-robot dataset folder holding replay_buffer.zarr."""
    arrays = pusht_like_arrays([6, 4], image_size=24)
    write_v2_store(tmp_path / "dp.zarr.zip", arrays, [6, 10], as_zip=True)
    assert main([str(tmp_path / "dp.zarr.zip"), "episode=1", f"out={tmp_path / 'o'}"]) == 0
    out = capsys.readouterr().out
    assert "zarr v2 zip" in out and "stats of episode 1 (4 steps):" in out
    assert "keypoint         min" in out and "(over all 18 dims)" in out
    frames = _decode(tmp_path / "o" / "episode_001.mp4")
    assert frames.shape == (4, 24 * 11, 24 * 11, 3)  # auto scale: ceil(256 / 24)

    write_v2_store(tmp_path / "real" / "replay_buffer.zarr", arrays, [6, 10])
    assert main([str(tmp_path / "real")]) == 0
    assert "replay_buffer.zarr (zarr v2 directory)" in capsys.readouterr().out


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])


def test_episode_video_and_contact_sheet(tmp_path, capsys):
    truth = make_store(tmp_path / "s.zarr")
    assert main([str(tmp_path / "s.zarr"), "episode=1", f"out={tmp_path / 'o'}", "scale=4", "fps=5"]) == 0
    assert f"wrote {tmp_path / 'o' / 'episode_001.png'}" in capsys.readouterr().out
    frames = _decode(tmp_path / "o" / "episode_001.mp4")
    # every step, both cameras side by side (sorted: front, wrist), 4x magnified
    assert frames.shape == (12, SIZE * 4, 2 * SIZE * 4, 3)
    for t in range(12):
        assert np.abs(frames[t, 32, 32].astype(int) - truth[1]["front"][t, 0, 0]).max() <= 6
        assert np.abs(frames[t, 32, 96].astype(int) - truth[1]["wrist"][t, 0, 0]).max() <= 6
    sheet = cv2.cvtColor(cv2.imread(str(tmp_path / "o" / "episode_001.png")), cv2.COLOR_BGR2RGB)
    thumb = SIZE * 2  # the sheet's magnification is 2/3 of the video's
    # 8 frames in 2 rows of 4 under a 28-px title, over a 260-px action plot
    assert sheet.shape == (28 + 2 * thumb + 260, 4 * 2 * thumb, 3)
    steps = np.linspace(0, 11, 8).round().astype(int)
    for i, t in enumerate(steps):  # bottom-right pixel of each thumbnail's front camera (below the label)
        y, x = 28 + (i // 4) * thumb + thumb - 1, (i % 4) * 2 * thumb + thumb - 1
        np.testing.assert_array_equal(sheet[y, x], truth[1]["front"][t, 0, 0])
    plot = sheet[28 + 2 * thumb:]
    assert (plot != 255).any(axis=-1).mean() > 0.02, "the action plot is drawn"


def test_integrity_problems(tmp_path, capsys):
    make_store(tmp_path / "s.zarr", seeds=2)
    assert main([str(tmp_path / "s.zarr")]) == 1
    out = capsys.readouterr().out
    assert "problem: meta/episode_seeds has 2 entries for 3 episodes" in out
    assert "python -m policylab.data.repair" in out

    arrays = {"action": np.zeros((10, 2), np.float32)}
    write_v2_store(tmp_path / "long.zarr", arrays, [4, 8])  # steps 8..9 belong to no episode
    assert main([str(tmp_path / "long.zarr")]) == 1
    assert "data/action has 10 steps but meta/episode_ends ends at 8" in capsys.readouterr().out

    write_v2_store(tmp_path / "short.zarr", arrays, [4, 12])
    assert main([str(tmp_path / "short.zarr")]) == 1
    assert "data/action has 10 steps but meta/episode_ends ends at 12" in capsys.readouterr().out


def test_lowdim_store_writes_only_the_plot(tmp_path, capsys):
    write_v2_store(tmp_path / "l.zarr", {"action": np.random.default_rng(0).normal(size=(9, 3)).astype(np.float32)}, [9])
    assert main([str(tmp_path / "l.zarr"), "episode=0", f"out={tmp_path / 'o'}"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["episode_000.png"]
    assert cv2.imread(str(tmp_path / "o" / "episode_000.png")).shape == (28 + 260, 800, 3)


def test_cli_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "python -m policylab.data.inspect <store>" in capsys.readouterr().out
    make_store(tmp_path / "s.zarr")
    with pytest.raises(SystemExit, match="episod"):
        main([str(tmp_path / "s.zarr"), "episod=1"])
    with pytest.raises(SystemExit, match="out= needs episode="):
        main([str(tmp_path / "s.zarr"), f"out={tmp_path}"])
    with pytest.raises(SystemExit, match="episode=3 is out of range; the store has 3 episodes"):
        main([str(tmp_path / "s.zarr"), "episode=3"])
    assert main([str(tmp_path / "missing.zarr")]) == 1
    assert "no ReplayBuffer store at" in capsys.readouterr().out
