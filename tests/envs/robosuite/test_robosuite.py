"""robosuite Lift and Can: the adapter (robomimic's keys), the Lift expert, demos, train + eval."""

import numpy as np
import pytest

from policylab.data.generate.__main__ import run as generate_main
from policylab.envs.robosuite import LiftExpert, RobosuiteEnv
from tests.envs.task_checks import (
    check_store_matches_shape_meta,
    smoke_train_eval,
    task_config,
)


@pytest.fixture(scope="module")
def lift():
    env = RobosuiteEnv(task="Lift")
    yield env
    env.close()


def test_observations_match_the_task_configs(lift):
    obs, _ = lift.reset(seed=0)
    for key, attr in task_config("robosuite_lift_lowdim").shape_meta.obs.items():
        assert obs[key].shape == tuple(attr.shape)
        assert obs[key].dtype == np.float32
    assert lift.action_space.shape == (7,)
    can = RobosuiteEnv(task="PickPlaceCan", image_obs=True, image_size=32)
    try:
        obs, _ = can.reset(seed=0)
        meta = task_config("robosuite_can_lowdim").shape_meta.obs
        assert obs["object"].shape == tuple(meta.object.shape) == (14,)
        for cam in ("agentview_image", "robot0_eye_in_hand_image"):
            assert obs[cam].shape == (3, 32, 32)
            assert obs[cam].std() > 0.01
        # upright like robomimic's datasets: the dark floor/table edge is not at the top
        frame = can.render()
        assert frame.shape == (32, 32, 3)
        assert frame.dtype == np.uint8
        np.testing.assert_array_equal(np.moveaxis(frame, -1, 0) / np.float32(255), obs["agentview_image"])
    finally:
        can.close()


def test_seeded_resets(lift):
    a = lift.reset(seed=1)[0]["object"]
    b = lift.reset(seed=2)[0]["object"]
    c = lift.reset(seed=1)[0]["object"]
    np.testing.assert_allclose(a, c, atol=1e-9)
    assert np.abs(a - b).max() > 1e-3


def test_lift_expert_succeeds(lift):
    expert = LiftExpert(action_noise=0.1)
    for seed in range(3):
        lift.reset(seed=seed)
        expert.reset(seed)
        for _ in range(200):
            _, _, terminated, _, info = lift.step(expert.act(lift))
            if terminated:
                break
        assert info["is_success"], f"seed {seed}"


def test_generate_store_and_train_eval(tmp_path):
    store = tmp_path / "lift.zarr"
    stats = generate_main(["task=robosuite_lift_lowdim", "n=2", f"out={store}", "images=false"])
    assert stats["saved"] == 2
    check_store_matches_shape_meta(store, "robosuite_lift_lowdim")
    smoke_train_eval("robosuite_lift_lowdim", store, tmp_path)


@pytest.mark.slow
def test_image_variants_train_eval(tmp_path):
    store = tmp_path / "lift.zarr"
    generate_main(["task=robosuite_lift_image", "n=2", f"out={store}"])
    check_store_matches_shape_meta(store, "robosuite_lift_image")
    smoke_train_eval("robosuite_lift_image", store, tmp_path)
    smoke_train_eval("robosuite_can_image", store, tmp_path)  # same keys as Lift: trains on its data
