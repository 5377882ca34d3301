"""What a reader holds stays valid while episodes are appended (RL: a learner samples while actors
add episodes), and both backends answer the same interface."""

import numpy as np
import pytest

from policylab.data.replay_buffer import ReplayBuffer
from policylab.data.sampler import SequenceSampler


def make(backend: str) -> ReplayBuffer:
    return ReplayBuffer.create_empty_numpy() if backend == "numpy" else ReplayBuffer.create_empty_zarr()


def episode(first: int, length: int) -> dict[str, np.ndarray]:
    steps = np.arange(first, first + length, dtype=np.float32)
    return {"obs": np.repeat(steps[:, None], 256, axis=1), "action": steps[:, None].copy()}


@pytest.mark.parametrize("backend", ["numpy", "zarr"])
def test_a_readers_views_and_batches_stay_valid_across_appends(backend):
    rb = make(backend)
    rb.add_episode(episode(0, 6))
    held = rb["obs"]
    first = rb.get_episode(0)  # copy=False: views on the numpy backend
    sampler = SequenceSampler(rb, sequence_length=3, pad_before=1, pad_after=1)
    batch = sampler.sample_batch(np.arange(len(sampler)))
    want = {"held": np.array(held[:6]), "first": np.array(first["obs"]),
            "batch": {k: v.copy() for k, v in batch.items()}}
    for i in range(40):  # grows every array well past its first allocation
        rb.add_episode(episode(100 * (i + 1), 50))
    np.testing.assert_array_equal(np.asarray(held[:6]), want["held"])
    np.testing.assert_array_equal(first["obs"], want["first"])
    for key, value in batch.items():
        np.testing.assert_array_equal(value, want["batch"][key])
    np.testing.assert_array_equal(np.asarray(rb["obs"][:6]), want["held"])
    np.testing.assert_array_equal(np.asarray(rb["action"][-50:, 0]), np.arange(4000, 4050, dtype=np.float32))


@pytest.mark.parametrize("backend", ["numpy", "zarr"])
def test_a_dropped_episode_never_changes_what_a_reader_holds(backend):
    rb = make(backend)
    rb.add_episode(episode(0, 4))
    rb.add_episode(episode(10, 4))
    last = rb.get_episode(1)
    want = np.array(last["obs"])
    rb.drop_episode()
    rb.add_episode(episode(50, 4))
    np.testing.assert_array_equal(last["obs"], want)
    assert rb.episode_ends.tolist() == [4, 8]
    assert float(rb["action"][4, 0]) == 50.0


@pytest.mark.parametrize("backend", ["numpy", "zarr"])
def test_both_backends_answer_one_interface(backend):
    rb = make(backend)
    rb.add_episode(episode(0, 3))
    assert rb.keys() == ["obs", "action"] or rb.keys() == ["action", "obs"]
    assert isinstance(rb.keys(), list)
    assert rb.backend == backend
    assert "obs" in rb
    assert [k for k, _ in rb.items()] == rb.keys()
    assert rb.get_steps_slice(0, 2, copy=True)["action"].tolist() == [[0.0], [1.0]]
