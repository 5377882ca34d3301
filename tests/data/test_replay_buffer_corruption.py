"""Corruption is loud: a deleted chunk file or a corrupt one is an error naming the store, array and chunk."""

import logging

import numpy as np
import pytest

from policylab.data.repair import main as repair_main
from policylab.data.replay_buffer import ReplayBuffer, ReplayBufferError
from tests.data.zarr_v2_fixtures import pusht_like_arrays, write_v2_store


def _store(path, zarr_format=2):
    with ReplayBuffer.create_from_path(path, mode="w", zarr_format=zarr_format) as rb:
        for e in range(3):
            rb.add_episode({"action": np.full((12, 2), e + 1, np.float32), "flag": np.zeros(12, np.uint8)},
                           chunks={"action": (10, 2), "flag": (10,)})
    return path


def _chunk_file(path, zarr_format, key, index):
    return path / "data" / key / (f"{index}.0" if zarr_format == 2 and key == "action" else
                                  str(index) if zarr_format == 2 else f"c/{index}/0" if key == "action" else
                                  f"c/{index}")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_deleted_chunk_is_an_error_naming_store_array_chunk(tmp_path, zarr_format):
    path = _store(tmp_path / "demos.zarr", zarr_format)
    assert _chunk_file(path, zarr_format, "flag", 1).exists()  # all-zero chunks are written too
    _chunk_file(path, zarr_format, "action", 1).unlink()  # rows 10..19: read as zeros before
    chunk = "1.0" if zarr_format == 2 else "c/1/0"
    for open_ in (ReplayBuffer.create_from_path, ReplayBuffer.copy_from_path):
        with pytest.raises(ReplayBufferError, match=rf"demos.zarr.*data/action.*{chunk}.*read as zeros"):
            open_(path)
    assert repair_main([str(path)]) == 1


def test_store_from_elsewhere_with_a_gap_opens_with_a_warning(tmp_path, caplog):
    lengths = [20, 25]
    path = write_v2_store(tmp_path / "dp.zarr", pusht_like_arrays(lengths, image_size=8), np.cumsum(lengths),
                          chunks={"action": (10, 2)})
    (path / "data" / "action" / "2.0").unlink()
    with caplog.at_level(logging.WARNING):
        rb = ReplayBuffer.create_from_path(path)
    assert rb.n_episodes == 2
    assert "data/action has no chunk file '2.0'" in caplog.text


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_corrupt_chunk_names_store_array_chunk(tmp_path, zarr_format):
    path = _store(tmp_path / "demos.zarr", zarr_format)
    chunk = _chunk_file(path, zarr_format, "action", 2)
    raw = bytearray(chunk.read_bytes())
    raw[12:16] = (9999).to_bytes(4, "little")  # blosc header: a compressed size the file does not have
    chunk.write_bytes(bytes(raw))
    name = "2.0" if zarr_format == 2 else "c/2/0"
    with pytest.raises(ReplayBufferError, match=rf"demos.zarr.*data/action chunk '{name}' \(rows 20\.\.29\).*corrupt"):
        ReplayBuffer.copy_from_path(path)
