import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policylab.rl.returns import episode_mc_returns, mc_returns


def test_terminal_episode_by_hand():
    # G_2 = 1, G_1 = 0 + 0.5 * 1, G_0 = 2 + 0.5 * 0.5
    np.testing.assert_allclose(mc_returns(np.array([2.0, 0.0, 1.0]), True, 0.5), [2.25, 0.5, 1.0])


def test_timeout_tail_repeats_last_reward():
    # not terminal: the last reward continues for ever, G_1 = 1 + 0.5 * (1 / (1 - 0.5)) = 2
    np.testing.assert_allclose(mc_returns(np.array([0.0, 1.0]), False, 0.5), [1.0, 2.0])
    # a failing sparse timeout has the infinite-horizon value whether or not is_sparse is set
    rewards = np.full(5, -0.05, dtype=np.float32)
    np.testing.assert_allclose(mc_returns(rewards, False, 0.9), -0.5, rtol=1e-6)


def test_sparse_special_case_is_unconditional():
    rewards = np.full(3, -0.05, dtype=np.float32)  # float32 storage rounding must still match
    got = mc_returns(rewards, True, 0.98, reward_neg=-0.05, is_sparse=True)
    np.testing.assert_allclose(got, -0.05 / 0.02)
    # one success reward: the ordinary rule
    got = mc_returns(np.array([-0.05, 10.0]), True, 0.5, reward_neg=-0.05, is_sparse=True)
    np.testing.assert_allclose(got, [-0.05 + 5.0, 10.0])
    with pytest.raises(ValueError, match="reward_neg"):
        mc_returns(rewards, True, 0.9, is_sparse=True)
    with pytest.raises(ValueError, match="gamma"):
        mc_returns(rewards, True, 1.0)


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 7), min_size=1, max_size=5), data=st.data(),
       gamma=st.floats(0.0, 0.99), sparse=st.booleans())
def test_episode_mc_returns_matches_per_episode(lengths, data, gamma, sparse):
    n = sum(lengths)
    rewards = np.array(data.draw(st.lists(st.sampled_from([-1.0, 0.0, 2.5]), min_size=n, max_size=n)),
                       dtype=np.float32)
    ends = np.cumsum(lengths)
    terminal = np.zeros(n, np.uint8)
    terminal[ends - 1] = data.draw(st.lists(st.integers(0, 1), min_size=len(ends), max_size=len(ends)))
    got = episode_mc_returns(rewards, ends, terminal, gamma, reward_neg=-1.0, is_sparse=sparse)
    starts = np.concatenate([[0], ends[:-1]])
    for s, e in zip(starts, ends):
        want = mc_returns(rewards[s:e], bool(terminal[e - 1]), gamma, reward_neg=-1.0, is_sparse=sparse)
        np.testing.assert_allclose(got[s:e], want, rtol=1e-12)
    # a store without `terminal` reads every episode as terminal
    np.testing.assert_allclose(episode_mc_returns(rewards, ends, None, gamma),
                               episode_mc_returns(rewards, ends, np.ones(n), gamma))
