"""Per-episode checksums: bytes that change on disk and still decode are an error naming key and
episode; stores without checksums open unchecked and say so; checksums commit with the episode."""

import contextlib
import shutil
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr
from imagecodecs.numcodecs import Jpeg2k

from policylab.data.checksums import (
    CHECKSUMS_KEY,
    ChecksumError,
    digest,
    encoded_digests,
)
from policylab.data.inspect import main as inspect_main
from policylab.data.replay_buffer import ReplayBuffer, ReplayBufferError
from tests.data.test_replay_buffer_meta import Killed, _kill_after
from tests.data.zarr_v2_fixtures import (
    BLOSC_LZ4,
    JPEG2K,
    pusht_like_arrays,
    write_v2_store,
)

LENGTH = 30  # steps per episode; chunks of 50 rows span episode boundaries on purpose


def _store(path, n_episodes=4, zarr_format=2):
    rng = np.random.default_rng(0)
    with ReplayBuffer.create_from_path(path, mode="w", zarr_format=zarr_format) as rb:
        for e in range(n_episodes):
            # random floats do not compress: blosc-lz4 stores them as they are, so flipped bytes decode
            rb.add_episode({"action": rng.normal(size=(LENGTH, 2)).astype(np.float32),
                            "step": np.arange(LENGTH, dtype=np.int64)},
                           chunks={"action": (50, 2), "step": (50,)}, episode_meta={"episode_seeds": 10 + e})
    return path


def _flip(path, key, chunk, start=200, n=20):
    """Flip n bytes inside a chunk file, past the blosc header."""
    f = path / "data" / key / chunk
    raw = bytearray(f.read_bytes())
    for i in range(start, start + n):
        raw[i] ^= 0x5A
    f.write_bytes(bytes(raw))


def test_flipped_bytes_in_a_blosc_lz4_chunk_name_key_and_episode(tmp_path):
    path = _store(tmp_path / "demos.zarr")
    rb = ReplayBuffer.create_from_path(path)
    assert rb.checksum_status() == {"algorithm": "crc32c", "episodes": 4, "checked": ["action", "step"],
                                    "encoded": [], "unchecked": {}}
    before = ReplayBuffer.copy_from_path(path)["action"].copy()
    assert numcodecs.get_codec(BLOSC_LZ4.get_config()) == rb["action"].compressors[0]
    _flip(path, "action", "1.0")  # rows 50..99: bytes 200..219 of the file are rows ~ 73..75
    changed = np.flatnonzero(np.any(ReplayBuffer.create_from_path(path)["action"][:] != before, axis=1))
    assert len(changed) and set(changed) <= set(range(60, 90)), "the flip decodes silently inside episode 2"
    with pytest.raises(ChecksumError, match=r"demos.zarr: data/action episode 2 \(rows 60..89\) does not match"):
        ReplayBuffer.copy_from_path(path)
    with pytest.raises(ReplayBufferError, match="data/action episode 2"):
        ReplayBuffer.copy_from_path(path, keys=["action"])
    ReplayBuffer.copy_from_path(path, keys=["step"])  # the undamaged key loads
    rb = ReplayBuffer.create_from_path(path)
    np.testing.assert_array_equal(rb.get_episode(1)["action"], before[30:60])  # other episodes read
    with pytest.raises(ChecksumError, match="episode 2"):
        rb.get_episode(2)
    damaged = rb.find_damaged_episodes()
    assert [(key, episode) for key, episode, _ in damaged] == [("action", 2)]
    assert "data/action episode 2 (rows 60..89)" in damaged[0][2]
    with pytest.raises(ChecksumError):  # a damaged store is never re-saved with fresh checksums
        rb.save_to_path(tmp_path / "copy.zarr")


def test_zarr_v3_store_is_checked_too(tmp_path):
    path = _store(tmp_path / "v3.zarr", zarr_format=3)
    _flip(path, "action", "c/1/0")
    with pytest.raises(ChecksumError, match=r"data/action episode 2 "):
        ReplayBuffer.copy_from_path(path)


def test_store_without_checksums_opens_unchecked_and_says_so(tmp_path, capsys):
    lengths = [20, 25]
    path = write_v2_store(tmp_path / "dp.zarr", pusht_like_arrays(lengths, image_size=8), np.cumsum(lengths))
    assert inspect_main([str(path)]) == 0
    assert "checksums: none (a store from Diffusion Policy or an older policylab)" in capsys.readouterr().out
    rb = ReplayBuffer.create_from_path(path, mode="a")
    status = rb.checksum_status()
    assert status["algorithm"] is None and status["checked"] == []
    assert "no checksums" in status["unchecked"]["action"]
    assert ReplayBuffer.copy_from_path(path).n_episodes == 2
    # appending keeps it unchecked: no checksum table that would cover only the new episodes
    rb.add_episode({k: v[:5] for k, v in rb.get_episode(0).items()})
    assert CHECKSUMS_KEY not in rb.meta
    assert rb.find_damaged_episodes() == []


IMG_LENGTH = 3  # steps per episode of the image stores


def _image_store(path, n_episodes=3, img_chunk_rows=1, zarr_format=2):
    """A store as the demo generators write one: images with the "image" compressor (Jpeg2k) in
    chunks of one row, low-dim keys with "disk"."""
    rng = np.random.default_rng(1)
    with ReplayBuffer.create_from_path(path, mode="w", zarr_format=zarr_format) as rb:
        for e in range(n_episodes):
            rb.add_episode({"img": rng.integers(0, 255, (IMG_LENGTH, 16, 16, 3), dtype=np.uint8),
                            "action": rng.normal(size=(IMG_LENGTH, 2)).astype(np.float32)},
                           chunks={"img": (img_chunk_rows, 16, 16, 3)},
                           compressors={"img": "image", "action": "disk"}, episode_meta={"episode_seeds": e})
    return path


def _flip_middle(f, n=8):
    """Flip n bytes in the middle of a file (inside a Jpeg2k codestream: it still decodes, to other pixels)."""
    raw = bytearray(f.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + n):
        raw[i] ^= 0x5A
    f.write_bytes(bytes(raw))


def test_flipped_bytes_in_a_jpeg2k_chunk_name_key_and_episode(tmp_path, capsys):
    path = _image_store(tmp_path / "img.zarr")
    assert ReplayBuffer.create_from_path(path).checksum_status() == {
        "algorithm": "crc32c", "episodes": 3, "checked": ["action", "img"], "encoded": ["img"], "unchecked": {}}
    assert inspect_main([str(path)]) == 0
    assert "checksums: crc32c of 3 episodes x action, img (encoded), verified on load\n" in capsys.readouterr().out
    before = ReplayBuffer.copy_from_path(path)["img"].copy()  # a healthy store verifies
    _flip_middle(path / "data" / "img" / "4.0.0.0")  # row 4: episode 1
    rb = ReplayBuffer.create_from_path(path)
    assert np.any(rb["img"][4] != before[4]), "the flip decodes silently to other pixels"
    message = r"img.zarr: data/img episode 1 \(rows 3..5\) does not match its crc32c checksum of encoded chunk bytes"
    with pytest.raises(ChecksumError, match=message):
        ReplayBuffer.copy_from_path(path)
    with pytest.raises(ChecksumError, match=message):
        rb.get_episode(1)
    np.testing.assert_array_equal(rb.get_episode(2)["img"], before[6:9])  # other episodes read
    assert [(key, episode) for key, episode, _ in rb.find_damaged_episodes()] == [("img", 1)]
    ReplayBuffer.copy_from_path(path, keys=["action"])  # the undamaged key loads
    with pytest.raises(ChecksumError, match="data/img episode 1"):  # never re-saved with fresh checksums
        rb.save_to_path(tmp_path / "copy.zarr")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_encoded_checksums_read_the_chunk_files_the_format_names(tmp_path, zarr_format):
    rb = ReplayBuffer.create_from_path(tmp_path / "s.zarr", mode="w", zarr_format=zarr_format)
    rb.add_episode({"x": np.arange(4 * 6, dtype=np.uint8).reshape(4, 2, 3)}, chunks={"x": (1, 1, 3)})
    files = [f"{r}.{c}.0" if zarr_format == 2 else f"c/{r}/{c}/0" for r in (1, 2) for c in (0, 1)]
    raw = b"".join((tmp_path / "s.zarr" / "data" / "x" / f).read_bytes() for f in files)
    assert encoded_digests(rb["x"], [(1, 3)]) == [digest(np.frombuffer(raw, np.uint8))]


def test_lossy_keys_with_chunks_of_several_rows_stay_unchecked_with_the_reason(tmp_path):
    # Jpeg2k encodes one image per chunk; a lossy codec that takes several rows: quantization.
    rb = ReplayBuffer.create_from_path(tmp_path / "q.zarr", mode="w")
    rb.add_episode({"depth": np.linspace(0, 1, 12, dtype=np.float32).reshape(4, 3)}, chunks={"depth": (2, 3)},
                   compressors={"depth": numcodecs.Quantize(digits=1, dtype="<f4")})
    status = rb.checksum_status()
    assert (status["checked"], status["encoded"]) == ([], [])
    assert status["unchecked"]["depth"].startswith("lossy codec with chunks of 2 rows")


def test_saved_copy_of_images_carries_encoded_checksums(tmp_path):
    source = ReplayBuffer.copy_from_path(_image_store(tmp_path / "img.zarr"))
    for name in ("copy.zarr", "copy.zarr.zip"):
        saved = source.save_to_path(tmp_path / name, compressors={"img": JPEG2K}, chunks={"img": (1, 16, 16, 3)})
        rb = ReplayBuffer.create_from_path(saved)
        assert (rb.checksum_status()["encoded"], rb.find_damaged_episodes()) == (["img"], [])
        assert ReplayBuffer.copy_from_path(saved).n_episodes == 3  # a zip store verifies too


def test_re_encoded_images_are_unchecked_not_damaged(tmp_path):
    rb = ReplayBuffer.create_from_path(_image_store(tmp_path / "img.zarr"), mode="a")
    rb.set_compressors({"img": Jpeg2k(level=40)})  # not the generators' level 50: every chunk re-encoded
    status = rb.checksum_status()
    assert status["checked"] == ["action"] and status["unchecked"]["img"].startswith("re-encoded")
    assert rb.find_damaged_episodes() == []
    rb.close()


def test_a_store_with_the_decoded_only_table_opens_and_verifies_as_before(tmp_path):
    # The layout before encoded checksums: columns of lossless keys only, no "encoded_keys" attr.
    path = _image_store(tmp_path / "old.zarr")
    meta = zarr.open_group(path, mode="r+")["meta"]
    action = np.asarray(meta[CHECKSUMS_KEY][:, 0:1])
    assert meta[CHECKSUMS_KEY].attrs["keys"] == ["action", "img"]
    meta.create_array(CHECKSUMS_KEY, data=action, chunks=(1024, 1), overwrite=True)
    meta[CHECKSUMS_KEY].attrs.update({"keys": ["action"], "algorithm": "crc32c"})
    with ReplayBuffer.create_from_path(path, mode="a") as rb:
        status = rb.checksum_status()
        assert (status["checked"], status["encoded"], status["episodes"]) == (["action"], [], 3)
        assert status["unchecked"]["img"].startswith("lossy codec: decoded bytes differ between decoder builds")
        rb.add_episode({k: v for k, v in rb.get_episode(0).items()}, episode_meta={"episode_seeds": 3})
        assert dict(rb.meta[CHECKSUMS_KEY].attrs) == {"keys": ["action"], "algorithm": "crc32c"}
        assert rb.checksum_status()["episodes"] == 4 and rb.find_damaged_episodes() == []
    _flip_middle(path / "data" / "img" / "4.0.0.0")
    assert ReplayBuffer.copy_from_path(path).n_episodes == 4  # images unchecked, as before
    _flip(path, "action", "0.0", start=20, n=4)
    with pytest.raises(ChecksumError, match="data/action episode 0"):
        ReplayBuffer.copy_from_path(path)


def test_killed_at_any_write_of_an_image_episode_leaves_old_or_new_with_checksums(tmp_path, monkeypatch):
    base, finished = _image_store(tmp_path / "base.zarr", n_episodes=1), False
    for k in range(1, 30):
        path = Path(shutil.copytree(base, tmp_path / f"k{k}.zarr"))
        rb = ReplayBuffer.create_from_path(path, mode="a")
        with monkeypatch.context() as m, contextlib.suppress(Killed):
            _kill_after(m, k)
            rb.add_episode({"img": np.full((IMG_LENGTH, 16, 16, 3), 9, np.uint8),
                            "action": np.zeros((IMG_LENGTH, 2), np.float32)}, episode_meta={"episode_seeds": 1})
            finished = True
        rb.close()
        with ReplayBuffer.create_from_path(path, mode="a") as reopened:
            assert reopened.n_episodes in (1, 2), f"killed at write {k}"
            assert reopened.find_damaged_episodes() == [], f"killed at write {k}"
            reopened.add_episode({"img": np.ones((2, 16, 16, 3), np.uint8), "action": np.ones((2, 2), np.float32)},
                                 episode_meta={"episode_seeds": 7})
            assert reopened.find_damaged_episodes() == [] and reopened.checksum_status()["encoded"] == ["img"]
        if finished:
            break
    assert finished


def test_saved_copy_carries_checksums_of_what_it_holds(tmp_path):
    memory = ReplayBuffer.copy_from_path(_store(tmp_path / "a.zarr"))
    assert CHECKSUMS_KEY not in memory.meta  # verified on load; memory needs none
    memory.add_episode({"action": np.ones((7, 2), np.float32), "step": np.arange(7)})
    saved = ReplayBuffer.create_from_path(memory.save_to_path(tmp_path / "b.zarr"))
    assert saved.checksum_status()["episodes"] == 5
    assert saved.find_damaged_episodes() == []
    np.testing.assert_array_equal(saved.get_episode(4)["step"], np.arange(7))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_killed_at_any_write_of_an_append_leaves_old_or_new_episode_with_seed_and_checksums(
        tmp_path, monkeypatch, zarr_format):
    finished, base = False, _store(tmp_path / "base.zarr", n_episodes=2, zarr_format=zarr_format)
    for k in range(1, 40):
        path = Path(shutil.copytree(base, tmp_path / f"k{k}.zarr"))
        rb = ReplayBuffer.create_from_path(path, mode="a")
        with monkeypatch.context() as m:
            _kill_after(m, k)
            try:
                rb.add_episode({"action": np.full((LENGTH, 2), 7, np.float32), "step": np.arange(LENGTH)},
                               episode_meta={"episode_seeds": 12})
                finished = True
            except Killed:
                pass
        rb.close()
        reopened = ReplayBuffer.create_from_path(path, mode="a")
        n = reopened.n_episodes
        assert n in (2, 3), f"killed at write {k}"
        np.testing.assert_array_equal(reopened.episode_meta("episode_seeds"), [10, 11, 12][:n])
        assert reopened.find_damaged_episodes() == []
        reopened.add_episode({"action": np.zeros((4, 2), np.float32), "step": np.arange(4)},
                             episode_meta={"episode_seeds": 99})
        assert reopened.episode_meta("episode_seeds")[-1] == 99
        reopened.close()
        if finished:
            break
    assert finished


def test_episode_meta_must_cover_every_episode(tmp_path):
    rb = ReplayBuffer.create_from_path(tmp_path / "s.zarr", mode="w")
    rb.add_episode({"action": np.ones((3, 2), np.float32)})
    with pytest.raises(ReplayBufferError, match="meta/episode_seeds has 0 entries for 1 episodes"):
        rb.add_episode({"action": np.ones((3, 2), np.float32)}, episode_meta={"episode_seeds": 1})
    with pytest.raises(ReplayBufferError, match="named episode_<name>"):
        rb.add_episode({"action": np.ones((3, 2), np.float32)}, episode_meta={"seed": 1})
    assert rb.n_episodes == 1


@pytest.mark.parametrize("backend", ["numpy", "zarr"])
def test_an_emptied_store_takes_episodes_with_other_keys(tmp_path, backend):
    rb = ReplayBuffer.create_empty_numpy() if backend == "numpy" else ReplayBuffer.create_from_path(
        tmp_path / "s.zarr", mode="w")
    rb.add_episode({"a": np.ones((3, 2), np.float32)}, episode_meta={"episode_seeds": 1})
    rb.drop_episode()
    rb.add_episode({"a": np.ones((4, 2), np.float32), "b": np.zeros(4, np.uint8)},
                   episode_meta={"episode_seeds": np.array([5, 6])})
    assert rb.episode_meta("episode_seeds").tolist() == [[5, 6]]
    if backend == "zarr":
        assert rb.checksum_status()["checked"] == ["a", "b"]
        assert rb.find_damaged_episodes() == []
