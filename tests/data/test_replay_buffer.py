import json
import logging

import numpy as np
import pytest
import zarr

from policylab.data.codecs import get_compressor
from policylab.data.replay_buffer import (
    ReplayBuffer,
    ReplayBufferError,
    get_optimal_chunks,
)
from tests.data.zarr_v2_fixtures import (
    BLOSC_ZSTD,
    JPEG2K,
    pusht_like_arrays,
    write_v2_store,
)

LENGTHS = [5, 3, 7]


def make_episode(length: int, start: int = 0) -> dict[str, np.ndarray]:
    t = np.arange(start, start + length)
    return {
        "obs": np.stack([t, -t], axis=1).astype(np.float32),
        "action": (t * 10).astype(np.int64)[:, None],
    }


@pytest.fixture(params=["numpy", "zarr_memory", "zarr_dir", "zarr_v3"])
def empty_buffer(request, tmp_path):
    if request.param == "numpy":
        return ReplayBuffer.create_empty_numpy()
    if request.param == "zarr_memory":
        return ReplayBuffer.create_empty_zarr()
    if request.param == "zarr_dir":
        return ReplayBuffer.create_from_path(tmp_path / "rb.zarr", mode="w")
    return ReplayBuffer.create_from_path(tmp_path / "rb3.zarr", mode="w", zarr_format=3)


def fill(buffer, lengths=LENGTHS):
    start = 0
    for length in lengths:
        buffer.add_episode(make_episode(length, start))
        start += length
    return buffer


def test_episode_api_exact(empty_buffer):
    rb = fill(empty_buffer)
    assert rb.n_episodes == 3
    assert rb.n_steps == 15
    assert len(rb) == 15
    np.testing.assert_array_equal(rb.episode_ends, [5, 8, 15])
    np.testing.assert_array_equal(rb.episode_lengths, LENGTHS)
    assert sorted(rb.keys()) == ["action", "obs"]
    assert rb.get_episode_slice(1) == slice(5, 8)
    assert rb.get_episode_slice(-1) == slice(8, 15)
    ep = rb.get_episode(1)
    np.testing.assert_array_equal(ep["obs"][:, 0], [5, 6, 7])
    np.testing.assert_array_equal(ep["action"][:, 0], [50, 60, 70])
    steps = rb.get_steps_slice(4, 9)
    np.testing.assert_array_equal(steps["obs"][:, 0], [4, 5, 6, 7, 8])
    np.testing.assert_array_equal(rb["obs"][:][:, 1], -np.arange(15))
    assert dict(rb.items()).keys() == set(rb.keys())


def test_pop_and_drop(empty_buffer):
    rb = fill(empty_buffer)
    last = rb.pop_episode()
    np.testing.assert_array_equal(last["obs"][:, 0], np.arange(8, 15))
    assert rb.n_episodes == 2
    assert rb.n_steps == 8
    assert rb["obs"].shape == (8, 2)
    rb.drop_episode()
    np.testing.assert_array_equal(rb.episode_ends, [5])
    rb.add_episode(make_episode(4, 100))
    np.testing.assert_array_equal(rb.episode_ends, [5, 9])
    np.testing.assert_array_equal(rb.get_episode(1)["obs"][:, 0], [100, 101, 102, 103])
    rb.drop_episode()
    rb.drop_episode()
    assert rb.n_episodes == 0
    with pytest.raises(IndexError):
        rb.drop_episode()


def test_reopen_directory_store(tmp_path):
    rb = fill(ReplayBuffer.create_from_path(tmp_path / "a.zarr", mode="w"))
    again = ReplayBuffer.create_from_path(tmp_path / "a.zarr", mode="a")
    again.add_episode(make_episode(2, 15))
    reread = ReplayBuffer.create_from_path(tmp_path / "a.zarr")
    np.testing.assert_array_equal(reread.episode_ends, [5, 8, 15, 17])
    np.testing.assert_array_equal(reread["obs"][:, 0], np.arange(17))
    assert rb.backend == "zarr"


@pytest.mark.parametrize("as_zip", [False, True])
def test_opens_diffusion_policy_v2_layout(tmp_path, as_zip):
    """PushT's published keys, Blosc zstd and Jpeg2k images, in files zarr 2 would have written."""
    arrays = pusht_like_arrays([4, 6], image_size=16)
    arrays["cam"] = np.random.default_rng(1).integers(0, 256, (10, 16, 16, 3)).astype(np.uint8)
    path = tmp_path / ("pusht.zarr.zip" if as_zip else "pusht.zarr")
    write_v2_store(path, arrays, [4, 10], chunks={"img": (1, 16, 16, 3), "cam": (1, 16, 16, 3), "state": (3, 5)},
                   codecs={"state": BLOSC_ZSTD, "cam": JPEG2K}, as_zip=as_zip)
    for rb in (ReplayBuffer.create_from_path(path), ReplayBuffer.copy_from_path(path)):
        np.testing.assert_array_equal(rb.episode_ends, [4, 10])
        for key in ("img", "state", "keypoint", "action", "n_contacts"):
            np.testing.assert_array_equal(np.asarray(rb[key][:]), arrays[key], err_msg=key)
        assert rb["keypoint"].shape == (10, 9, 2)
        assert rb["img"].dtype == np.float32
        # Jpeg2k is lossy: compare with the codec's own decode of each frame.
        expected = np.stack([JPEG2K.decode(JPEG2K.encode(frame[None])).reshape(16, 16, 3) for frame in arrays["cam"]])
        np.testing.assert_array_equal(np.asarray(rb["cam"][:]), expected)
        assert np.abs(expected.astype(int) - arrays["cam"]).mean() < 60


def test_copy_subset_into_memory_store_keeps_jpeg2k_bytes(tmp_path):
    arrays = {"cam": np.random.default_rng(2).integers(0, 256, (6, 16, 16, 3)).astype(np.uint8),
              "action": np.arange(12, dtype=np.float32).reshape(6, 2)}
    path = write_v2_store(tmp_path / "cams.zarr", arrays, [2, 6],
                          chunks={"cam": (1, 16, 16, 3)}, codecs={"cam": JPEG2K})
    store = zarr.storage.MemoryStore()
    rb = ReplayBuffer.copy_from_path(path, store=store, keys=["cam"])
    assert list(rb.keys()) == ["cam"]
    assert rb.backend == "zarr"
    assert get_compressor(rb["cam"]).codec_id == "imagecodecs_jpeg2k"
    raw = (path / "data/cam/3.0.0.0").read_bytes()
    assert store.get_sync("data/cam/3.0.0.0").to_bytes() == raw
    numpy_rb = ReplayBuffer.copy_from_path(path, keys=["action"])
    assert numpy_rb.backend == "numpy"
    assert list(numpy_rb.keys()) == ["action"]
    with pytest.raises(KeyError, match="nope"):
        ReplayBuffer.copy_from_path(path, keys=["nope"])


@pytest.mark.parametrize("suffix", [".zarr", ".zarr.zip"])
def test_save_writes_v2_by_default_and_v3_on_request(tmp_path, suffix):
    rb = fill(ReplayBuffer.create_empty_numpy())
    path = rb.save_to_path(tmp_path / f"out{suffix}", compressors={"obs": "disk"})
    back = ReplayBuffer.create_from_path(path)
    assert back.root.metadata.zarr_format == 2
    np.testing.assert_array_equal(back["obs"][:], rb["obs"][:])
    assert get_compressor(back["obs"]).cname == "zstd"
    if suffix == ".zarr":
        meta = json.loads((path / "data/obs/.zarray").read_text())
        assert meta["zarr_format"] == 2
        assert meta["compressor"]["id"] == "blosc"
        v3 = rb.save_to_path(tmp_path / "v3.zarr", zarr_format=3)
        assert (v3 / "zarr.json").exists()
        back3 = ReplayBuffer.create_from_path(v3)
        np.testing.assert_array_equal(back3["action"][:], rb["action"][:])
        np.testing.assert_array_equal(back3.episode_ends, [5, 8, 15])
    # saving over an existing store replaces it whole
    ReplayBuffer.create_from_path(path).save_to_path(tmp_path / f"copy{suffix}")
    fill(ReplayBuffer.create_empty_numpy(), [2]).save_to_path(path)
    assert ReplayBuffer.create_from_path(path).n_steps == 2


def test_jpeg2k_in_v3_is_a_clear_error(tmp_path):
    rb = ReplayBuffer.create_from_path(tmp_path / "v3.zarr", mode="w", zarr_format=3)
    with pytest.raises(ValueError, match="'cam'.*v2"):
        rb.add_episode({"cam": np.zeros((2, 8, 8, 3), np.uint8)}, compressors={"cam": "image"})


def test_chunks_and_compressors():
    rb = ReplayBuffer.create_empty_zarr()
    rb.add_episode({"img": np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3), "a": np.ones((4, 2))},
                   chunks={"img": (1, 8, 8, 3)}, compressors={"a": "disk"})
    assert rb.get_chunks()["img"] == (1, 8, 8, 3)
    assert get_compressor(rb["a"]).cname == "zstd"
    before = rb["img"][:]
    rb.set_chunks({"img": (2, 8, 8, 3)})
    rb.set_compressors({"a": "default"})
    assert rb.get_chunks()["img"] == (2, 8, 8, 3)
    assert get_compressor(rb["a"]).cname == "lz4"
    np.testing.assert_array_equal(rb["img"][:], before)
    with pytest.raises(TypeError, match="zarr backend"):
        ReplayBuffer.create_empty_numpy().get_chunks()


def test_optimal_chunks():
    assert get_optimal_chunks((10_000, 2), np.float32) == (10_000, 2)
    assert get_optimal_chunks((10_000, 96, 96, 3), np.float32) == (18, 96, 96, 3)
    assert get_optimal_chunks((0, 4), np.float64) == (1, 4)


def test_episode_lengths_must_match(empty_buffer):
    with pytest.raises(ReplayBufferError, match=r"'obs': 3.*'action': 4"):
        empty_buffer.add_episode({"obs": np.zeros((3, 2)), "action": np.zeros((4, 1))})
    assert empty_buffer.n_episodes == 0


def test_shape_change_between_episodes(empty_buffer):
    fill(empty_buffer, [2])
    with pytest.raises(ReplayBufferError, match=r"'obs'.*\(3,\).*\(2,\)"):
        empty_buffer.add_episode({"obs": np.zeros((2, 3), np.float32), "action": np.zeros((2, 1), np.int64)})
    with pytest.raises(ReplayBufferError, match="missing \\['action'\\]"):
        empty_buffer.add_episode({"obs": np.zeros((2, 2), np.float32)})
    with pytest.raises(ReplayBufferError, match="empty"):
        empty_buffer.add_episode({"obs": np.zeros((0, 2)), "action": np.zeros((0, 1))})
    assert empty_buffer.n_episodes == 1
    assert empty_buffer["obs"].shape == (2, 2)


def test_missing_episode_ends(tmp_path):
    root = zarr.open_group(tmp_path / "bad.zarr", mode="w", zarr_format=2)
    root.require_group("data").create_array("a", shape=(3,), dtype="f4")
    with pytest.raises(ReplayBufferError, match="meta/episode_ends"):
        ReplayBuffer.create_from_path(tmp_path / "bad.zarr")
    with pytest.raises(ReplayBufferError, match="meta/episode_ends"):
        ReplayBuffer({"data": {}, "meta": {}})


def test_non_increasing_episode_ends(tmp_path):
    path = write_v2_store(tmp_path / "bad.zarr", {"a": np.zeros((9, 1), np.float32)}, [4, 3, 9])
    with pytest.raises(ReplayBufferError, match=r"episode_ends\[1\] = 3 after 4"):
        ReplayBuffer.create_from_path(path)


def test_data_shorter_than_episode_ends(tmp_path):
    path = write_v2_store(tmp_path / "bad.zarr", {"a": np.zeros((5, 1), np.float32)}, [4, 9])
    with pytest.raises(ReplayBufferError, match="data/a has 5 steps but meta/episode_ends ends at 9"):
        ReplayBuffer.create_from_path(path)


def test_not_a_store(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ReplayBufferError, match="not a zarr store"):
        ReplayBuffer.create_from_path(tmp_path / "empty_dir")
    with pytest.raises(FileNotFoundError, match="no ReplayBuffer store"):
        ReplayBuffer.create_from_path(tmp_path / "missing.zarr")


def test_torn_append_is_discarded(tmp_path, caplog):
    """The two states a kill can leave: surplus data, and episode_ends resized but unwritten."""
    path = tmp_path / "torn.zarr"
    rb = fill(ReplayBuffer.create_from_path(path, mode="w"))
    rb["obs"].resize((20, 2))  # data of a 4th episode written, episode_ends not yet
    rb["action"].resize((20, 1))
    rb.meta["episode_ends"].resize((4,))  # episode_ends grown, its chunk never written
    with caplog.at_level(logging.WARNING):
        reread = ReplayBuffer.create_from_path(path, mode="a")
    assert "torn" in caplog.text
    np.testing.assert_array_equal(reread.episode_ends, [5, 8, 15])
    assert reread["obs"].shape == (15, 2)  # truncated in append mode
    reread.add_episode(make_episode(2, 15))
    np.testing.assert_array_equal(ReplayBuffer.create_from_path(path).episode_ends, [5, 8, 15, 17])


def test_dropped_entries_never_reappear_as_stale_ends(tmp_path):
    path = tmp_path / "stale.zarr"
    rb = fill(ReplayBuffer.create_from_path(path, mode="w"))
    rb.drop_episode()
    rb.meta["episode_ends"].resize((3,))  # a torn append right after the drop
    np.testing.assert_array_equal(ReplayBuffer.create_from_path(path).episode_ends, [5, 8])
