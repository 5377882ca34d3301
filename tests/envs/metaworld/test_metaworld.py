"""Meta-World v3 tasks: the adapter, Meta-World's scripted experts, demos, train + eval smoke."""

import numpy as np
import pytest

from policylab.data.generate.__main__ import run as generate_main
from policylab.envs.metaworld import MetaWorldEnv, MetaWorldExpert
from tests.envs.task_checks import (
    check_store_matches_shape_meta,
    smoke_train_eval,
    task_config,
)

TASKS = {"push": "push-v3", "pick_place": "pick-place-v3", "drawer_open": "drawer-open-v3",
         "button_press": "button-press-v3", "door_open": "door-open-v3"}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_expert_succeeds_and_obs_match_config(name):
    env = MetaWorldEnv(task=TASKS[name])
    expert = MetaWorldExpert(TASKS[name], action_noise=0.1)
    try:
        obs, _ = env.reset(seed=0)
        for key, attr in task_config(f"metaworld_{name}_lowdim").shape_meta.obs.items():
            assert obs[key].shape == tuple(attr.shape)
            assert obs[key].dtype == np.float32
        assert task_config(f"metaworld_{name}_image").env_runner.env_kwargs.task == TASKS[name]
        successes = 0
        for seed in range(3):
            env.reset(seed=seed)
            expert.reset(seed)
            for _ in range(300):
                _, _, terminated, _, info = env.step(expert.act(env))
                if terminated:
                    break
            successes += info["is_success"]
        assert successes == 3
    finally:
        env.close()


def test_seeded_resets_and_upright_image():
    env = MetaWorldEnv(task="pick-place-v3", image_obs=True, image_size=64)
    try:
        a = env.reset(seed=3)[0]
        b = env.reset(seed=4)[0]
        c = env.reset(seed=3)[0]
        np.testing.assert_array_equal(a["state"], c["state"])
        assert np.abs(a["state"][4:7] - b["state"][4:7]).max() > 1e-3  # object placement differs
        np.testing.assert_array_equal(a["agent_pos"], a["state"][:4])
        image = a["image"]
        assert image.shape == (3, 64, 64)
        assert image.dtype == np.float32
        # corner camera flipped upright: the light background (walls/sky) is in the top half,
        # the dark table and floor in the bottom half
        assert image[:, :16].mean() > image[:, -16:].mean()
    finally:
        env.close()


def test_generate_store_and_train_eval(tmp_path):
    store = tmp_path / "push.zarr"
    stats = generate_main(["task=metaworld_push_image", "n=2", f"out={store}"])
    assert stats["saved"] == 2
    for task in ("metaworld_push_lowdim", "metaworld_push_image"):
        check_store_matches_shape_meta(store, task)
    smoke_train_eval("metaworld_push_lowdim", store, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_trains_and_evaluates(name, tmp_path):
    store = tmp_path / f"{name}.zarr"
    generate_main([f"task=metaworld_{name}_image", "n=2", f"out={store}"])
    for variant in ("lowdim", "image"):
        smoke_train_eval(f"metaworld_{name}_{variant}", store, tmp_path)
