import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from policylab.common.shape_meta import ShapeMeta
from policylab.data.datasets.sequence import SequenceDataset
from policylab.data.replay_buffer import ReplayBuffer
from policylab.rl.transitions import TransitionSampler, TransitionSpec

SHAPE_META = {
    "obs": {
        "image": {"shape": [3, 2, 2], "type": "rgb", "zarr_key": "img"},
        "pos": {"shape": [2], "type": "low_dim", "zarr_key": "state", "index": [0, 2]},
    },
    "action": {"shape": [2]},
}
META = ShapeMeta.parse(SHAPE_META)
REWARD_NEG = -0.05


def make_episode(start: int, length: int, terminal: bool, rewards=None, rng=None) -> dict:
    """Steps numbered from `start` so every field says which buffer step it came from."""
    rng = rng or np.random.default_rng(start)
    step = np.arange(start, start + length)
    term = np.zeros(length, np.uint8)
    term[-1] = terminal
    return {
        "img": (step[:, None, None, None] * 7 + np.arange(12).reshape(2, 2, 3)).astype(np.uint8),
        "state": np.stack([step, -step, step * 10], axis=1).astype(np.float32),
        "action": np.stack([step + 0.5, -step - 0.5], axis=1).astype(np.float32),
        "reward": np.asarray(rng.normal(size=length) if rewards is None else rewards, np.float32),
        "terminal": term,
        "intervention": (step % 3 == 0).astype(np.uint8),
        "embedding": np.stack([step, step * 2], axis=1).astype(np.float32),
    }


def make_buffer(specs, backend="numpy") -> ReplayBuffer:
    """specs: [(length, terminal, rewards or None)]."""
    rb = ReplayBuffer.create_empty_numpy() if backend == "numpy" else ReplayBuffer.create_empty_zarr()
    for length, terminal, rewards in specs:
        rb.add_episode(make_episode(rb.n_steps, length, terminal, rewards))
    return rb


def reference(rb, To, Ta, T, gamma, scale, bias, reward_neg, is_sparse):
    """Per-item: every kept transition, straight from the definitions, slicing the raw arrays."""
    ends = rb.episode_ends
    return [item for s, end in zip(np.concatenate([[0], ends[:-1]]), ends)
            for item in reference_episode({k: np.asarray(v[s:end]) for k, v in rb.items()},
                                          To, Ta, T, gamma, scale, bias, reward_neg, is_sparse)]


def reference_episode(ep, To, Ta, T, gamma, scale, bias, reward_neg, is_sparse):
    L = len(ep["reward"])
    terminal = bool(ep["terminal"][-1]) if "terminal" in ep else True
    r = scale * ep["reward"].astype(np.float64) + bias
    all_neg = is_sparse and np.allclose(ep["reward"], reward_neg, rtol=1e-6, atol=1e-7)

    def G(t):
        if all_neg:
            return (scale * reward_neg + bias) / (1 - gamma)
        tail = 0.0 if terminal else gamma ** (L - t) * r[-1] / (1 - gamma)
        return sum(gamma ** (j - t) * r[j] for j in range(t, L)) + tail

    def obs_window(last):
        steps = [max(last - To + 1 + i, 0) for i in range(To)]
        return {"image": np.moveaxis(ep["img"][steps], -1, 1) / np.float32(255), "pos": ep["state"][steps, :2]}

    out = []
    for idx in range(-(To - 1), L - T + Ta):
        t = idx + To - 1
        done = t + Ta > L - 1
        if done and not terminal:
            continue
        k = min(Ta, L - t)
        nxt = L - 1 if done else t + Ta
        out.append({
            "obs": obs_window(t), "next_obs": obs_window(nxt),
            "action": ep["action"][[min(max(idx + i, 0), L - 1) for i in range(T)]],
            "reward": sum(gamma ** i * r[t + i] for i in range(k)), "discount": gamma ** k,
            "done": float(done), "mc_return": G(t),
            "intervention": float(ep["intervention"][t]) if "intervention" in ep else 0.0,
            "embedding": ep["embedding"][t], "next_embedding": ep["embedding"][nxt],
        })
    return out


def assert_batch_equals_reference(batch, ref):
    assert len(batch["reward"]) == len(ref)
    for i, item in enumerate(ref):
        for group in ("obs", "next_obs"):
            for key, want in item[group].items():
                np.testing.assert_allclose(batch[group][key][i].numpy(), want, rtol=1e-6, err_msg=f"{group}.{key}")
        for key in ("action", "embedding", "next_embedding"):
            np.testing.assert_array_equal(batch[key][i].numpy(), item[key], err_msg=key)
        for key in ("reward", "discount", "done", "mc_return", "intervention"):
            np.testing.assert_allclose(batch[key][i].item(), item[key], rtol=1e-5, atol=1e-5, err_msg=key)


@settings(max_examples=60, deadline=None)
@given(episodes=st.lists(st.tuples(st.integers(1, 7), st.booleans(), st.booleans()), min_size=1, max_size=4),
       To=st.integers(1, 3), Ta=st.integers(1, 4), extra=st.integers(0, 2), gamma=st.floats(0.0, 0.99),
       scale=st.sampled_from([1.0, 2.0]), bias=st.sampled_from([0.0, -1.0]), is_sparse=st.booleans(),
       drop=st.sampled_from([(), ("terminal",), ("intervention",)]))
def test_matches_per_item_reference(episodes, To, Ta, extra, gamma, scale, bias, is_sparse, drop):
    specs = [(length, terminal, np.full(length, REWARD_NEG) if all_neg else None)
             for length, terminal, all_neg in episodes]
    rb = make_buffer(specs)
    for key in drop:
        del rb.data[key]
    T = To + Ta - 1 + extra
    sampler = TransitionSampler(rb, META, TransitionSpec(T, To, Ta, gamma, reward_scale=scale, reward_bias=bias,
                                                         reward_neg=REWARD_NEG, is_sparse_reward=is_sparse,
                                                         embedding_key="embedding"))
    ref = reference(rb, To, Ta, T, gamma, scale, bias, REWARD_NEG, is_sparse)
    assert len(sampler) == len(ref)
    if ref:
        assert_batch_equals_reference(sampler.get_batch(np.arange(len(sampler))), ref)


@pytest.mark.parametrize("backend", ["numpy", "zarr"])
def test_obs_and_action_equal_sequence_dataset(backend):
    rb = make_buffer([(6, True, None), (2, False, None), (5, False, None)], backend)
    To, Ta, T = 2, 3, 5
    sampler = TransitionSampler(rb, META, TransitionSpec(T, To, Ta, 0.9))
    dataset = SequenceDataset(SHAPE_META, T, To, replay_buffer=rb, n_action_steps=Ta)
    assert 0 < len(sampler) < len(dataset)  # the time-limit ends lose their last windows
    batch = sampler.get_batch(np.arange(len(sampler)))
    want = dataset.get_batch(sampler.window_index)
    torch.testing.assert_close(batch["action"], want["action"], rtol=0, atol=0)
    for key in SHAPE_META["obs"]:
        torch.testing.assert_close(batch["obs"][key], want["obs"][key], rtol=0, atol=0)
        assert batch["obs"][key].dtype == torch.float32


def test_extend_equals_rebuilding():
    specs = [(4, True, None), (3, False, None), (6, True, None), (1, True, None), (5, False, None)]
    rb = make_buffer(specs[:2])
    spec = TransitionSpec(4, 2, 2, 0.8, embedding_key="embedding")
    sampler = TransitionSampler(rb, META, spec, episode_mask=np.array([True, False]))
    for length, terminal, rewards in specs[2:]:
        rb.add_episode(make_episode(rb.n_steps, length, terminal, rewards))
        sampler.extend()
    assert sampler.extend() == 0
    full = TransitionSampler(rb, META, spec,
                             episode_mask=np.array([True, False, True, True, True]))
    assert len(sampler) == len(full)
    got, want = sampler.get_batch(np.arange(len(full))), full.get_batch(np.arange(len(full)))
    for key, value in want.items():
        for k, v in (value.items() if isinstance(value, dict) else [(key, value)]):
            torch.testing.assert_close(got[key][k] if isinstance(value, dict) else got[key], v)


def test_sample_is_seeded_and_batch_survives_growth():
    rb = make_buffer([(5, True, None), (4, True, None)])
    sampler = TransitionSampler(rb, META, TransitionSpec(3, 2, 2, 0.9))
    a = sampler.sample(8, torch.Generator().manual_seed(0))
    b = sampler.sample(8, torch.Generator().manual_seed(0))
    c = sampler.sample(8, np.random.default_rng(0))
    torch.testing.assert_close(a, b)
    snapshot = {k: (v.clone() if torch.is_tensor(v) else {kk: vv.clone() for kk, vv in v.items()})
                for k, v in c.items()}
    for _ in range(20):  # numpy backend grows by realloc: views into it would dangle
        rb.add_episode(make_episode(rb.n_steps, 50, True))
        sampler.extend()
    torch.testing.assert_close(c, snapshot)


def test_errors_name_the_key():
    rb = make_buffer([(3, True, None)])
    with pytest.raises(KeyError, match="embedding_x"):
        TransitionSampler(rb, META, TransitionSpec(2, 1, 2, 0.9, embedding_key="embedding_x"))
    rb.data["terminal"][0] = 1
    with pytest.raises(ValueError, match="episode 0: key 'terminal' is set at step 0"):
        TransitionSampler(rb, META, TransitionSpec(2, 1, 2, 0.9))
    empty = TransitionSampler(ReplayBuffer.create_empty_numpy(), META, TransitionSpec(2, 1, 2, 0.9))
    assert len(empty) == 0
    with pytest.raises(ValueError, match="no transitions"):
        empty.sample(4, np.random.default_rng(0))
