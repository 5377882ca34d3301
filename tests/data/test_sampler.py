import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policylab.data.replay_buffer import ReplayBuffer
from policylab.data.sampler import (
    SequenceSampler,
    create_indices,
    downsample_mask,
    get_val_mask,
)


def buffer_with(lengths, backend="numpy"):
    rb = ReplayBuffer.create_empty_numpy() if backend == "numpy" else ReplayBuffer.create_empty_zarr()
    start = 0
    for length in lengths:
        t = np.arange(start, start + length)
        rb.add_episode({"x": t.astype(np.float32)[:, None] * np.array([1.0, -1.0], np.float32),
                        "i": t.astype(np.int64)})
        start += length
    return rb


def test_indices_match_diffusion_policy_by_hand():
    # one episode of 4 steps, T=3, pad_before=1, pad_after=1: windows start at -1, 0, 1, 2
    idx = create_indices(np.array([4]), 3, np.array([True]), pad_before=1, pad_after=1)
    np.testing.assert_array_equal(idx, [[0, 2, 1, 3], [0, 3, 0, 3], [1, 4, 0, 3], [2, 4, 0, 2]])
    # pads are clamped to sequence_length - 1; masked episodes contribute nothing
    idx = create_indices(np.array([2, 5]), 2, np.array([False, True]), pad_before=9, pad_after=0)
    np.testing.assert_array_equal(idx, [[2, 3, 1, 2], [2, 4, 0, 2], [3, 5, 0, 2], [4, 5, 0, 1]][:3])
    with pytest.raises(ValueError, match="episode_mask"):
        create_indices(np.array([2, 5]), 2, np.array([True]))


def test_diffusion_policy_window_count():
    # T=16, To=2, Ta=8: pad_before 1, pad_after 7 -> L - 7 windows per episode (reference §3.2)
    rb = buffer_with([30, 50])
    sampler = SequenceSampler(rb, sequence_length=16, pad_before=1, pad_after=7)
    assert len(sampler) == (30 - 7) + (50 - 7)


def test_edge_replication():
    rb = buffer_with([4, 3])
    sampler = SequenceSampler(rb, sequence_length=4, pad_before=2, pad_after=2)
    first = sampler.sample_sequence(0)
    np.testing.assert_array_equal(first["i"], [0, 0, 0, 1])
    np.testing.assert_array_equal(first["x"][:, 1], [0, 0, 0, -1])
    last = sampler.sample_sequence(len(sampler) - 1)
    np.testing.assert_array_equal(last["i"], [5, 6, 6, 6])  # never crosses into another episode


def test_key_first_k_loads_only_k_frames():
    rb = buffer_with([6])
    sampler = SequenceSampler(rb, sequence_length=4, pad_before=1, pad_after=0, key_first_k={"x": 2, "i": 2})
    s = sampler.sample_sequence(0)  # window starting at -1: frames [0, 0, 1, 2]
    np.testing.assert_array_equal(s["x"][:3, 0], [0, 0, 1])
    assert np.isnan(s["x"][3]).all()  # floats: NaN marks frames that were not loaded
    np.testing.assert_array_equal(s["i"], [0, 0, 1, 0])  # ints cannot hold NaN: 0
    batch = sampler.sample_batch(np.arange(len(sampler)))
    for j in range(len(sampler)):
        np.testing.assert_array_equal(batch["x"][j], sampler.sample_sequence(j)["x"])


def test_val_and_downsample_masks():
    mask = get_val_mask(10, 0.2, seed=3)
    assert mask.sum() == 2
    assert np.array_equal(mask, get_val_mask(10, 0.2, seed=3))
    assert get_val_mask(10, 0.0).sum() == 0
    assert get_val_mask(3, 0.01).sum() == 1  # at least one
    assert get_val_mask(2, 0.99).sum() == 1  # at most n - 1
    train = downsample_mask(~mask, 5, seed=1)
    assert train.sum() == 5
    assert not (train & mask).any()
    np.testing.assert_array_equal(downsample_mask(~mask, None), ~mask)
    np.testing.assert_array_equal(downsample_mask(~mask, 100), ~mask)


def brute_force_window(episodes, ep, start, T):
    """Reference: index the episode with clamping, frame by frame."""
    data = episodes[ep]
    return np.stack([data[min(max(start + t, 0), len(data) - 1)] for t in range(T)])


@settings(max_examples=120, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=6), T=st.integers(1, 8),
       pad_before=st.integers(0, 8), pad_after=st.integers(0, 8), data=st.data())
def test_vectorized_equals_per_item_equals_brute_force(lengths, T, pad_before, pad_after, data):
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=len(lengths), max_size=len(lengths))))
    k = data.draw(st.one_of(st.none(), st.integers(1, 8)))
    rb = buffer_with(lengths)
    sampler = SequenceSampler(rb, T, pad_before, pad_after, key_first_k={} if k is None else {"x": k},
                              episode_mask=mask)
    # brute-force list of expected windows
    ends = np.cumsum(lengths)
    starts = ends - np.array(lengths)
    episodes = [rb["x"][s:e] for s, e in zip(starts, ends)]
    pb, pa = min(pad_before, T - 1), min(pad_after, T - 1)
    expected = [(ep, s) for ep in range(len(lengths)) if mask[ep]
                for s in range(-pb, lengths[ep] - T + pa + 1)]
    assert len(sampler) == len(expected)
    if not expected:
        return
    idxs = np.array(data.draw(st.lists(st.integers(0, len(expected) - 1), min_size=1, max_size=10)))
    batch = sampler.sample_batch(idxs)
    for row, i in enumerate(idxs):
        ep, s = expected[i]
        want = brute_force_window(episodes, ep, s, T)
        if k is not None:  # frames at window offsets >= k into the loaded data are NaN
            offsets = np.array([min(max(s + t, 0), lengths[ep] - 1) - max(s, 0) for t in range(T)])
            want[offsets >= k] = np.nan
        item = sampler.sample_sequence(int(i))
        np.testing.assert_array_equal(item["x"], want)
        np.testing.assert_array_equal(batch["x"][row], want)
        np.testing.assert_array_equal(batch["i"][row], item["i"])


def test_zarr_backend_batch_equals_numpy():
    np_sampler = SequenceSampler(buffer_with([5, 9, 4]), 6, 2, 3)
    z_sampler = SequenceSampler(buffer_with([5, 9, 4], backend="zarr"), 6, 2, 3)
    idxs = np.array([0, 3, 3, len(np_sampler) - 1])
    for key in ("x", "i"):
        np.testing.assert_array_equal(np_sampler.sample_batch(idxs)[key], z_sampler.sample_batch(idxs)[key])


def test_first_steps_reads_only_loaded_frames():
    rb = buffer_with([3, 6])
    sampler = SequenceSampler(rb, sequence_length=5, pad_before=2, pad_after=4, key_first_k={"x": 2})
    idxs = np.arange(len(sampler))
    full = sampler.sample_batch(idxs)["x"]
    head = sampler.sample_batch(idxs, first_steps={"x": 2})["x"]
    assert head.shape == (len(sampler), 2, 2)
    assert not np.isnan(head).any()
    np.testing.assert_array_equal(head, full[:, :2])
    with pytest.raises(ValueError, match="exceeds key_first_k"):
        sampler.sample_batch(idxs, first_steps={"x": 3})
