import numpy as np
import pytest
import torch

from policylab.data.datasets.base import make_dataloader
from policylab.data.datasets.sequence import SequenceDataset
from policylab.data.replay_buffer import ReplayBuffer
from tests.data.zarr_v2_fixtures import pusht_like_arrays, write_v2_store

LENGTHS = [20, 25, 18, 30, 22]
IMAGE_META = {
    "obs": {"image": {"shape": [3, 16, 16], "type": "rgb", "zarr_key": "img"},
            "agent_pos": {"shape": [2], "type": "low_dim", "zarr_key": "state", "index": [0, 2]}},
    "action": {"shape": [2]},
}
KEYPOINT_META = {
    "obs": {"keypoint": {"shape": [18], "type": "low_dim"},
            "agent_pos": {"shape": [2], "zarr_key": "state", "index": [0, 2]}},
    "action": {"shape": [2]},
}


@pytest.fixture(scope="module")
def pusht_path(tmp_path_factory):
    arrays = pusht_like_arrays(LENGTHS, image_size=16)
    path = tmp_path_factory.mktemp("pusht") / "pusht.zarr"
    write_v2_store(path, arrays, np.cumsum(LENGTHS), chunks={"img": (1, 16, 16, 3)})
    return path, arrays


def test_contract_shapes_and_ranges(pusht_path):
    path, arrays = pusht_path
    ds = SequenceDataset(IMAGE_META, horizon=16, n_obs_steps=2, zarr_path=path)
    item = ds[0]
    assert item["obs"]["image"].shape == (2, 3, 16, 16)
    assert item["obs"]["image"].dtype == torch.float32
    assert item["obs"]["agent_pos"].shape == (2, 2)
    assert item["action"].shape == (16, 2)
    assert 0 <= item["obs"]["image"].min()
    assert item["obs"]["image"].max() <= 1
    # window 0 starts one step before episode 0: frame 0 repeated
    np.testing.assert_array_equal(item["obs"]["agent_pos"].numpy(), arrays["state"][[0, 0], :2])
    np.testing.assert_allclose(item["obs"]["image"][1].numpy(), arrays["img"][0].transpose(2, 0, 1) / 255, rtol=1e-6)
    np.testing.assert_array_equal(item["action"].numpy(), arrays["action"][[0] + list(range(15))])
    assert len(ds) == sum(LENGTHS)  # pad_before 1, pad_after T-To: one window per step
    dp = SequenceDataset(IMAGE_META, horizon=16, n_obs_steps=2, n_action_steps=8, zarr_path=path)
    assert len(dp) == sum(length - 7 for length in LENGTHS)  # Diffusion Policy's PushT: L - 7


@pytest.mark.parametrize("backend", ["numpy", "zarr"])
@pytest.mark.parametrize("meta", [KEYPOINT_META, IMAGE_META], ids=["keypoint", "image"])
def test_batch_path_equals_item_path(pusht_path, backend, meta):
    path = pusht_path[0]
    rb = ReplayBuffer.copy_from_path(path) if backend == "numpy" else ReplayBuffer.create_from_path(path, mode="r")
    assert rb.backend == backend
    ds = SequenceDataset(meta, horizon=8, n_obs_steps=3, replay_buffer=rb)
    idxs = list(range(len(ds)))  # every window, padded ones at both ends of every episode included
    batch = ds.get_batch(idxs)
    for row, i in enumerate(idxs):
        item = ds[i]
        # the per-item fast path, the batch gather and Diffusion Policy's slice-and-pad path agree exactly
        reference = ds._format(ds.sampler.sample_sequence(i), batched=False)
        for got in (item, reference):
            torch.testing.assert_close(batch["action"][row], got["action"], rtol=0, atol=0)
            for key in meta["obs"]:
                torch.testing.assert_close(batch["obs"][key][row], got["obs"][key], rtol=0, atol=0)
    first = next(iter(meta["obs"]))
    assert batch["obs"][first].shape[:2] == (len(idxs), 3)


def test_normalizer_sees_training_episodes_only():
    rb = ReplayBuffer.create_empty_numpy()
    for e, length in enumerate(LENGTHS):
        rb.add_episode({"state": np.full((length, 5), e, np.float32), "keypoint": np.zeros((length, 9, 2), np.float32),
                        "action": np.full((length, 2), 100.0 * e, np.float32)})
    ds = SequenceDataset(KEYPOINT_META, horizon=4, n_obs_steps=2, replay_buffer=rb, val_ratio=0.4, seed=0)
    train_eps = np.flatnonzero(ds.train_mask)
    val_eps = np.flatnonzero(ds.val_mask)
    assert len(val_eps) == 2
    assert not set(train_eps) & set(val_eps)
    stats = ds.get_normalizer()["action"].get_input_stats()
    assert stats["max"][0].item() == 100.0 * train_eps.max()
    assert stats["min"][0].item() == 100.0 * train_eps.min()
    val = ds.get_validation_dataset()
    seen = {int(val[i]["obs"]["agent_pos"][0, 0]) for i in range(len(val))}
    assert seen == set(val_eps.tolist())
    seen_train = {int(ds[i]["obs"]["agent_pos"][0, 0]) for i in range(len(ds))}
    assert seen_train == set(train_eps.tolist())


def test_max_train_episodes_does_not_leak_into_validation():
    rb = ReplayBuffer.create_empty_numpy()
    for e in range(10):
        rb.add_episode({"state": np.full((6, 5), e, np.float32), "keypoint": np.zeros((6, 9, 2), np.float32),
                        "action": np.zeros((6, 2), np.float32)})
    ds = SequenceDataset(KEYPOINT_META, horizon=4, n_obs_steps=2, replay_buffer=rb, val_ratio=0.2,
                         max_train_episodes=3)
    assert ds.train_mask.sum() == 3
    assert ds.val_mask.sum() == 2
    assert len(ds.get_validation_dataset()) == 2 * (6 - 4 + 1 + 1 + 2)


def test_dataloader_batches_with_workers(pusht_path):
    ds = SequenceDataset(IMAGE_META, horizon=8, n_obs_steps=2, zarr_path=pusht_path[0])
    for workers in (0, 2):
        loader = make_dataloader(ds, batch_size=16, shuffle=True, num_workers=workers,
                                 generator=torch.Generator().manual_seed(0))
        batches = list(loader)
        assert sum(b["action"].shape[0] for b in batches) == len(ds)
        assert batches[0]["obs"]["image"].shape == (16, 2, 3, 16, 16)


def test_shape_meta_errors_name_the_key(pusht_path):
    bad = {"obs": {"agent_pos": {"shape": [3], "zarr_key": "state", "index": [0, 2]}}, "action": {"shape": [2]}}
    with pytest.raises(ValueError, match=r"shape_meta.obs.agent_pos: expected shape \[3\]"):
        SequenceDataset(bad, horizon=4, n_obs_steps=2, zarr_path=pusht_path[0])
    bad = {"obs": {"cam": {"shape": [3, 16, 16], "type": "depth"}}, "action": {"shape": [2]}}
    with pytest.raises(ValueError, match="shape_meta.obs.cam.type"):
        SequenceDataset(bad, horizon=4, n_obs_steps=2, zarr_path=pusht_path[0])
    with pytest.raises(KeyError, match="nope"):
        SequenceDataset({"obs": {"nope": {"shape": [2]}}, "action": {"shape": [2]}}, horizon=4, n_obs_steps=2,
                        zarr_path=pusht_path[0])


def test_plain_dataloader_still_works_item_by_item(pusht_path):
    ds = SequenceDataset(KEYPOINT_META, horizon=8, n_obs_steps=2, zarr_path=pusht_path[0])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    torch.testing.assert_close(batch["action"], ds.get_batch([0, 1, 2, 3])["action"])


def test_item_path_index_on_a_multi_axis_key_and_pickle(pusht_path):
    """`index` slices the last stored axis before flattening, also on (N, 9, 2) keypoints; a pickled
    copy (what DataLoader workers get) carries the buffer once and gives the same items."""
    import pickle

    meta = {"obs": {"kp_x": {"shape": [9], "zarr_key": "keypoint", "index": [0, 1]},
                    "agent_pos": {"shape": [2], "zarr_key": "state", "index": [0, 2]}},
            "action": {"shape": [2]}}
    path, arrays = pusht_path
    ds = SequenceDataset(meta, horizon=8, n_obs_steps=2, zarr_path=path)
    size_before = len(pickle.dumps(ds))
    ds[3]  # builds the per-item path's views of the buffer
    assert len(pickle.dumps(ds)) == size_before
    copy = pickle.loads(pickle.dumps(ds))
    batch = ds.get_batch(range(len(ds)))
    for i in range(len(ds)):
        for got in (ds[i], copy[i]):
            torch.testing.assert_close(got["obs"]["kp_x"], batch["obs"]["kp_x"][i], rtol=0, atol=0)
            torch.testing.assert_close(got["obs"]["agent_pos"], batch["obs"]["agent_pos"][i], rtol=0, atol=0)
            torch.testing.assert_close(got["action"], batch["action"][i], rtol=0, atol=0)
    start = int(ds.sampler.indices[5, 0])  # an unpadded window: frame 0 of its obs is buffer step `start`
    np.testing.assert_array_equal(ds[5]["obs"]["kp_x"][0].numpy(), arrays["keypoint"][start, :, 0])
    ds[5]["action"][:] = -1  # items never share memory with the buffer
    assert (ds[5]["action"] != -1).all()
