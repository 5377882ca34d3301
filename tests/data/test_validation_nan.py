"""NaN in a validation episode is an error naming the episode and key (it gave `val_loss: nan` silently)."""

import numpy as np
import pytest

from policylab.data.datasets.sequence import SequenceDataset
from policylab.data.replay_buffer import ReplayBuffer

META = {"obs": {"agent_pos": {"shape": [2], "type": "low_dim", "zarr_key": "state"}}, "action": {"shape": [2]}}


def _dataset(bad_key):
    rb = ReplayBuffer.create_empty_numpy()
    for e in range(5):
        rb.add_episode({"state": np.full((8, 2), e, np.float32), "action": np.full((8, 2), e, np.float32)})
    ds = SequenceDataset(META, horizon=4, n_obs_steps=2, replay_buffer=rb, val_ratio=0.4, seed=0)
    val_episode = int(np.flatnonzero(ds.val_mask)[0])
    start = int(rb.episode_ends[val_episode - 1]) if val_episode else 0
    rb[bad_key][start + 3, 1] = np.nan
    return ds, val_episode


@pytest.mark.parametrize("key", ["action", "state"])
def test_nan_in_a_validation_episode_is_named(key):
    ds, episode = _dataset(key)
    ds.get_normalizer()  # the training episodes are clean
    with pytest.raises(ValueError, match=rf"validation episode {episode}: key '{key}'.*first: step 3"):
        ds.get_validation_dataset()
