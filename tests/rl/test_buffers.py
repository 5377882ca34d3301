import dataclasses

import numpy as np
import pytest
import torch

from policylab.common.shape_meta import ShapeMeta
from policylab.data.replay_buffer import ReplayBuffer
from policylab.rl.buffers import MixedSampler, OnlineReplayStore
from policylab.rl.episodes import route_episode
from policylab.rl.transitions import TransitionSpec
from tests.rl.test_transitions import SHAPE_META, make_episode

META = ShapeMeta.parse(SHAPE_META)
SPEC = TransitionSpec(3, 2, 2, 0.9)  # T, To, Ta, gamma
ARGS = (META, SPEC)


def episode(length=5, terminal=True, start=0, drop=("embedding",)):
    ep = make_episode(start, length, terminal)
    return {k: v for k, v in ep.items() if k not in drop}


def store_at(path, **kwargs) -> OnlineReplayStore:
    return OnlineReplayStore(path, META, dataclasses.replace(SPEC, **kwargs))


def clone(batch):
    return {k: clone(v) if isinstance(v, dict) else v.clone() for k, v in batch.items()}


def test_add_reopen_resumes_with_the_same_episodes(tmp_path):
    store = store_at(tmp_path / "online.zarr")
    assert store.n_episodes == 0
    assert len(store.sampler) == 0
    for i, (length, terminal) in enumerate([(5, True), (4, False), (6, True)]):
        ep = episode(length, terminal, start=100 * i)
        ep["extra"] = np.zeros(length)  # not a store key: not stored
        store.add_episode(ep)
    assert (store.n_episodes, store.n_steps) == (3, 15)
    assert len(store.sampler) > 0
    before = store.sampler.get_batch(np.arange(len(store.sampler)))
    resumed = store_at(tmp_path / "online.zarr")
    assert (resumed.n_episodes, resumed.n_steps) == (3, 15)
    assert "extra" not in resumed.replay_buffer
    torch.testing.assert_close(resumed.sampler.get_batch(np.arange(len(resumed.sampler))), before)
    with pytest.raises(ValueError, match=r"missing \['embedding'\]"):
        store_at(tmp_path / "online.zarr", embedding_key="embedding")


@pytest.mark.parametrize("key, bad, message", [
    ("reward", lambda v: np.where(np.arange(len(v)) == 2, np.nan, v), r"'reward' has non-finite .* step 2"),
    ("state", lambda v: np.where(np.arange(len(v))[:, None] == 1, np.inf, v), r"'state' has non-finite"),
    ("action", lambda v: v[:, :1], r"'action' has per-step shape \(1,\)"),
    ("img", lambda v: v[:, :1], r"'img' has per-step shape"),
    ("terminal", lambda v: np.ones_like(v), r"'terminal' is set at step 0"),
    ("intervention", lambda v: v * 2 + 1, r"'intervention' must hold 0/1"),
    ("reward", lambda v: v[:-1], r"'reward' has 4 steps but 'action' has 5"),
    ("reward", None, r"missing keys \['reward'\]"),
])
def test_bad_episodes_are_refused_and_nothing_written(tmp_path, key, bad, message):
    store = store_at(tmp_path / "online.zarr")
    store.add_episode(episode())
    ep = episode(start=50)
    if bad is None:
        del ep[key]
    else:
        ep[key] = bad(ep[key])
    with pytest.raises(ValueError, match=rf"episode 1 \(actor 3\): (key |){message}"):
        store.add_episode(ep, name="actor 3")
    assert (store.n_steps, len(store.sampler)) == (5, 5)
    assert store_at(tmp_path / "online.zarr").n_steps == 5


def test_first_episode_is_checked_against_shape_meta(tmp_path):
    ep = episode()
    ep["state"] = ep["state"][:, :1]  # index [0, 2] needs at least 2 columns
    with pytest.raises(ValueError, match=r"key 'state' .* shape_meta.obs.pos"):
        store_at(tmp_path / "online.zarr").add_episode(ep)


def test_batch_from_before_an_append_does_not_change(tmp_path):
    store = store_at(tmp_path / "online.zarr")
    store.add_episode(episode(6))
    batch = store.sampler.sample(16, torch.Generator().manual_seed(1))
    snapshot = clone(batch)
    for i in range(10):
        store.add_episode(episode(40, start=1000 + 100 * i))
    torch.testing.assert_close(batch, snapshot)


def test_mixed_batches_are_half_online_and_seeded(tmp_path):
    demo = OnlineReplayStore.from_demos(tmp_path / "demo.zarr", _old_demo_store(), *ARGS)
    online = store_at(tmp_path / "online.zarr")
    mixed = MixedSampler(demo.sampler, online.sampler)
    batch = mixed.sample(7, torch.Generator().manual_seed(0))  # online empty: all demos
    assert batch["from_online"].tolist() == [0.0] * 7
    online.add_episode(episode(5, start=500))
    a = mixed.sample(7, torch.Generator().manual_seed(0))
    b = mixed.sample(7, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert a["from_online"].tolist() == [1.0] * 4 + [0.0] * 3  # round(3.5) = 4
    assert a["obs"]["image"].shape == (7, 2, 3, 2, 2)
    assert a["action"].shape == (7, 3, 2)
    # online steps are numbered from 500, demo steps below 100
    assert (a["obs"]["pos"][:4, -1, 0] >= 500).all()
    assert (a["obs"]["pos"][4:, -1, 0] < 100).all()
    assert MixedSampler(demo.sampler, online.sampler, 0.25).sample(8, np.random.default_rng(0))[
        "from_online"].sum() == 2


def _old_demo_store() -> ReplayBuffer:
    """A demo store as written before `terminal` existed (no terminal, no intervention)."""
    rb = ReplayBuffer.create_empty_zarr()
    for length in (4, 6):
        ep = episode(length, start=rb.n_steps)
        rb.add_episode({k: v for k, v in ep.items() if k not in ("terminal", "intervention")})
    return rb


def test_demo_store_is_copied_once_with_terminal_filled(tmp_path):
    calls = []

    def add_embedding(ep):
        calls.append(1)
        return {**ep, "emb": ep["state"][:, :2] * 2}

    path = tmp_path / "run" / "demo.zarr"
    demo = OnlineReplayStore.from_demos(path, _old_demo_store(), META,
                                        dataclasses.replace(SPEC, embedding_key="emb"), transform=add_embedding)
    assert (demo.n_episodes, demo.n_steps, len(calls)) == (2, 10, 2)
    np.testing.assert_array_equal(demo.replay_buffer["terminal"], [0, 0, 0, 1, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(demo.replay_buffer["intervention"], 0)
    # no temp dir left; the store's writer lock sits beside it while it is open
    assert sorted(p.name for p in path.parent.iterdir()) == [".demo.zarr.lock", "demo.zarr"]
    again = OnlineReplayStore.from_demos(path, _old_demo_store(), META,
                                         dataclasses.replace(SPEC, embedding_key="emb"), transform=add_embedding)
    assert again.n_episodes == 2
    assert len(calls) == 2  # reopened, not copied again


def test_route_episode_cuts_intervened_runs():
    ep = episode(9, terminal=True)
    ep["intervention"] = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1], np.uint8)
    online, segments = route_episode(ep)
    assert online["action"].shape == (9, 2)
    # runs 1-2 and 5 keep the next (policy) step as a non-terminal bootstrap step; 7-8 ends the episode
    assert [s["state"][:, 0].tolist() for s in segments] == [[1, 2, 3], [5, 6], [7, 8]]
    assert [s["terminal"].tolist() for s in segments] == [[0, 0, 0], [0, 0], [0, 1]]
    ep["terminal"][:] = 0  # a time-limit end stays non-terminal
    assert route_episode(ep)[1][-1]["terminal"].tolist() == [0, 0]
    ep["intervention"][:] = 0
    assert route_episode(ep)[1] is None


def test_routed_segments_give_only_intervened_chunks(tmp_path):
    # To=2, Ta=1, T=2 (ConRFT's): every intervened step gives one transition, no policy action does
    store = OnlineReplayStore(tmp_path / "demo.zarr", META, TransitionSpec(2, 2, 1, 0.9))
    ep = episode(9, terminal=False)
    ep["intervention"] = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1], np.uint8)
    for segment in route_episode(ep)[1]:
        store.add_episode(segment)
    batch = store.sampler.get_batch(np.arange(len(store.sampler)))
    # steps 1, 2, 5, 7; step 8 ends a time-limited episode, so it has no next observation
    assert batch["intervention"].tolist() == [1.0] * 4
    assert batch["action"][:, -1, 0].tolist() == [1.5, 2.5, 5.5, 7.5]
    assert batch["next_obs"]["pos"][:, -1, 0].tolist() == [2.0, 3.0, 6.0, 8.0]


@pytest.mark.parametrize("key, row, value, message", [
    ("reward", 7, np.nan, r"episode 1: key 'reward' has non-finite values \(NaN/inf\) at 1 steps, first at step 2"),
    ("state", 1, np.inf, r"episode 0: key 'state' has non-finite"),
    ("action", 9, -np.inf, r"episode 1: key 'action' has non-finite .* first at step 4"),
    ("intervention", 3, 2, r"episode 0: key 'intervention' must hold 0/1"),
])
def test_damage_already_on_disk_is_refused_when_opened(tmp_path, key, row, value, message):
    """Issue 26: a NaN written into the store behind its back fails the open, naming key and episode."""
    path = tmp_path / "online.zarr"
    store = store_at(path)
    store.add_episode(episode(5))
    store.add_episode(episode(5, start=50))
    del store
    disk = ReplayBuffer.create_from_path(path, mode="a")
    disk[key][row] = value
    del disk
    with pytest.raises(ValueError, match=rf"store .*online.zarr: {message}"):
        store_at(path)


def test_stores_take_a_parsed_shape_meta_and_a_spec(tmp_path):
    with pytest.raises(TypeError, match="ShapeMeta"):
        OnlineReplayStore(tmp_path / "online.zarr", SHAPE_META, SPEC)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\)"):
        dataclasses.replace(SPEC, gamma=1.0)
    with pytest.raises(ValueError, match="T >= To \\+ Ta - 1"):
        TransitionSpec(2, 2, 2, 0.9)
