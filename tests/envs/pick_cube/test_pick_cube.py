"""gym-hil pick-cube: the adapter, the scripted expert, demo generation, train + eval smoke."""

import numpy as np
import pytest

from policylab.data.generate.__main__ import run as generate_main
from policylab.envs.pick_cube import PickCubeEnv, PickCubeExpert
from tests.envs.task_checks import (
    check_store_matches_shape_meta,
    smoke_train_eval,
    task_config,
)


@pytest.fixture(scope="module")
def env():
    env = PickCubeEnv()
    yield env
    env.close()


def run_expert(env, expert, seed, max_steps=100):
    env.reset(seed=seed)
    expert.reset(seed)
    for t in range(max_steps):
        _, _, terminated, _, info = env.step(expert.act(env))
        if terminated:
            return info["is_success"], t + 1
    return False, max_steps


def test_observations_match_the_task_configs(env):
    obs, info = env.reset(seed=0)
    assert info == {"is_success": False}
    for task in ("pick_cube_lowdim", "pick_cube_image"):
        for key, attr in task_config(task).shape_meta.obs.items():
            if attr.type == "low_dim":
                assert obs[key].shape == tuple(attr.shape)
                assert obs[key].dtype == np.float32
    assert env.action_space.shape == (4,)
    image_env = PickCubeEnv(image_obs=True, image_size=32)
    try:
        obs, _ = image_env.reset(seed=0)
        obs, *_ = image_env.step(np.zeros(4))
        for cam in ("front", "wrist"):
            assert obs[cam].shape == (3, 32, 32)
            assert obs[cam].dtype == np.float32
            assert 0 <= obs[cam].min()
            assert obs[cam].max() <= 1
            assert obs[cam].std() > 0.01
        frame = image_env.render()
        assert frame.shape == (32, 32, 3)
        assert frame.dtype == np.uint8
        np.testing.assert_array_equal(np.moveaxis(frame, -1, 0) / np.float32(255), obs["front"])
    finally:
        image_env.close()


def test_seeded_resets(env):
    a = env.reset(seed=7)[0]["cube_pos"]
    b = env.reset(seed=8)[0]["cube_pos"]
    c = env.reset(seed=7)[0]["cube_pos"]
    np.testing.assert_array_equal(a, c)
    assert np.abs(a - b).max() > 1e-3
    assert 0.3 <= a[0] <= 0.5
    assert -0.15 <= a[1] <= 0.15


def test_expert_succeeds_with_noise(env):
    expert = PickCubeExpert(action_noise=0.1)
    results = [run_expert(env, expert, seed) for seed in range(5)]
    assert all(ok for ok, _ in results), results
    lengths = [n for _, n in results]
    assert max(lengths) < 60


def test_expert_takes_over_from_any_state(env):
    """From a state a bad policy reached (cube pushed, gripper shut), the expert still succeeds."""
    expert = PickCubeExpert()
    env.reset(seed=3)
    expert.reset(3)
    rng = np.random.default_rng(0)
    for _ in range(15):
        env.step(np.append(rng.uniform(-1, 1, 3), 1.0))
    for _ in range(100):
        _, _, terminated, _, info = env.step(expert.act(env))
        if terminated:
            break
    assert info["is_success"]


def test_generate_store_and_train_eval(tmp_path):
    store = tmp_path / "pick_cube.zarr"
    stats = generate_main(["task=pick_cube_image", "n=2", f"out={store}", "seed=0"])
    assert stats["saved"] == 2
    assert stats["success_rate"] == 1.0
    for task in ("pick_cube_lowdim", "pick_cube_image"):
        check_store_matches_shape_meta(store, task)
    smoke_train_eval("pick_cube_lowdim", store, tmp_path)


@pytest.mark.slow
def test_image_variant_train_eval(tmp_path):
    store = tmp_path / "pick_cube.zarr"
    generate_main(["task=pick_cube_image", "n=2", f"out={store}"])
    smoke_train_eval("pick_cube_image", store, tmp_path)
