"""robomimic hdf5 -> ReplayBuffer, on files the tests write in robomimic's layout."""

import json

import h5py
import numpy as np
import pytest

from policylab.data.datasets.sequence import SequenceDataset
from policylab.data.importers.common import ImportFormatError
from policylab.data.importers.robomimic import import_robomimic, main
from policylab.data.replay_buffer import ReplayBuffer

LENGTHS = {"demo_0": 12, "demo_1": 9, "demo_2": 15, "demo_10": 7}  # demo_10 sorts last
ENV_ARGS = {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}}


def make_demo(rng, length: int) -> dict:
    return {
        "obs/robot0_eef_pos": rng.normal(size=(length, 3)),
        "obs/robot0_eef_quat": rng.normal(size=(length, 4)),
        "obs/robot0_gripper_qpos": rng.normal(size=(length, 2)),
        "obs/object": rng.normal(size=(length, 10)),
        "obs/agentview_image": rng.integers(0, 256, size=(length, 16, 16, 3), dtype=np.uint8),
        "actions": rng.uniform(-1, 1, size=(length, 7)),
        "rewards": (np.arange(length) == length - 1).astype(np.float64),
        "dones": (np.arange(length) == length - 1).astype(np.int64),
        "states": rng.normal(size=(length, 32)),
    }


def write_robomimic(path, demos: dict, masks: dict | None = None) -> None:
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(ENV_ARGS)
        data.attrs["total"] = sum(len(d["dones"]) for d in demos.values())
        for name, arrays in demos.items():
            group = data.create_group(name)
            group.attrs["num_samples"] = len(arrays["dones"])
            for key, value in arrays.items():
                group.create_dataset(key, data=value)
        for mask, names in (masks or {}).items():
            f.create_dataset(f"mask/{mask}", data=np.array(names, dtype="S"))


@pytest.fixture
def demos():
    rng = np.random.default_rng(0)
    return {name: make_demo(rng, n) for name, n in LENGTHS.items()}


def test_round_trip(tmp_path, demos):
    src = tmp_path / "lift.hdf5"
    write_robomimic(src, demos)
    stats = import_robomimic(src, tmp_path / "out.zarr", image_compressor="disk", progress=False)
    rb = ReplayBuffer.create_from_path(tmp_path / "out.zarr")
    order = ["demo_0", "demo_1", "demo_2", "demo_10"]
    assert rb.n_episodes == 4
    assert list(rb.episode_lengths) == [LENGTHS[d] for d in order]
    assert stats["env_args"] == ENV_ARGS
    assert list(rb.meta["demo_index"][:]) == [0, 1, 2, 10]
    assert json.loads(bytes(rb.meta["env_args"][:]).decode()) == ENV_ARGS
    for i, name in enumerate(order):
        ep = rb.get_episode(i)
        np.testing.assert_array_equal(ep["agentview_image"], demos[name]["obs/agentview_image"])
        np.testing.assert_allclose(ep["object"], demos[name]["obs/object"], rtol=1e-6)
        np.testing.assert_allclose(ep["action"], demos[name]["actions"], rtol=1e-6)
        np.testing.assert_array_equal(ep["done"], demos[name]["dones"])
        assert ep["action"].dtype == np.float32
        assert ep["agentview_image"].dtype == np.uint8
    assert "states" not in rb  # simulator states are not observations


def test_robosuite_task_config_trains_on_imported_keys(tmp_path, demos):
    """The robosuite_lift shape_meta reads an imported store unchanged."""
    from omegaconf import OmegaConf

    from tests.helpers import compose_config

    src = tmp_path / "lift.hdf5"
    write_robomimic(src, demos)
    import_robomimic(src, tmp_path / "out.zarr", progress=False)
    cfg = compose_config(["task=robosuite_lift_lowdim", "debug=tiny"])
    ds = SequenceDataset(OmegaConf.to_container(cfg.task.shape_meta, resolve=True), horizon=8,
                         n_obs_steps=2, zarr_path=str(tmp_path / "out.zarr"))
    batch = ds.get_batch(np.arange(4))
    assert batch["obs"]["object"].shape == (4, 2, 10)
    assert batch["action"].shape == (4, 8, 7)


def test_filter_key_and_keys(tmp_path, demos):
    src = tmp_path / "lift.hdf5"
    write_robomimic(src, demos, masks={"train": ["demo_10", "demo_1"]})
    main([f"in={src}", f"out={tmp_path / 'out.zarr'}", "filter_key=train", "keys=object,robot0_eef_pos"])
    rb = ReplayBuffer.create_from_path(tmp_path / "out.zarr")
    assert list(rb.episode_lengths) == [LENGTHS["demo_1"], LENGTHS["demo_10"]]
    assert sorted(rb.keys()) == ["action", "done", "object", "reward", "robot0_eef_pos"]


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: d["demo_1"].pop("actions"), "data/demo_1: missing 'actions'"),
    (lambda d: d["demo_2"].update({"obs/object": d["demo_2"]["obs/object"][:-3]}),
     "data/demo_2/obs/object: 12 steps but actions has 15"),
    (lambda d: d["demo_0"].update({"rewards": d["demo_0"]["rewards"][:5]}),
     "data/demo_0/rewards: 5 steps but actions has 12"),
    (lambda d: d["demo_10"].pop("obs/agentview_image"), "data/demo_10/obs has keys"),
])
def test_malformed_files_name_the_problem(tmp_path, demos, corrupt, message):
    corrupt(demos)
    src = tmp_path / "bad.hdf5"
    write_robomimic(src, demos)
    with pytest.raises(ImportFormatError, match=message.replace("[", r"\[")):
        import_robomimic(src, tmp_path / "out.zarr", progress=False)
    assert not (tmp_path / "out.zarr").exists()


def test_missing_key_filter_and_data(tmp_path, demos):
    src = tmp_path / "lift.hdf5"
    write_robomimic(src, demos)
    with pytest.raises(ImportFormatError, match="data/demo_0/obs: missing key 'nope'"):
        import_robomimic(src, tmp_path / "a.zarr", keys=["nope"], progress=False)
    with pytest.raises(ImportFormatError, match="no mask/valid"):
        import_robomimic(src, tmp_path / "a.zarr", filter_key="valid", progress=False)
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f.create_group("other")
    with pytest.raises(ImportFormatError, match="no 'data' group"):
        import_robomimic(tmp_path / "empty.hdf5", tmp_path / "b.zarr", progress=False)


def test_refuses_to_overwrite(tmp_path, demos):
    src = tmp_path / "lift.hdf5"
    write_robomimic(src, demos)
    import_robomimic(src, tmp_path / "out.zarr", progress=False)
    with pytest.raises(FileExistsError, match="overwrite=true"):
        import_robomimic(src, tmp_path / "out.zarr", progress=False)
    import_robomimic(src, tmp_path / "out.zarr", overwrite=True, progress=False)
