"""Every simulated task config: its env builds from the config alone and its observations are
exactly what the config's shape_meta promises (keys, shapes, dtypes), in both variants."""

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from policylab.common.shape_meta import ShapeMeta
from tests.envs.task_checks import task_config
from tests.helpers import CONFIG_DIR

# real_* tasks run on a robot (their configs are checked in tests/real); pusht has tests of its own
TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml") if not p.stem.startswith(("pusht", "real_")))


def test_every_family_is_covered():
    families = {t.split("_")[0] for t in TASKS}
    assert families == {"pick", "metaworld", "robosuite"}, families
    assert len([t for t in TASKS if t.startswith("metaworld")]) >= 10  # 5 tasks x 2 variants


@pytest.mark.parametrize("task", TASKS)
def test_env_observations_match_shape_meta(task):
    cfg = task_config(task)
    meta = ShapeMeta.parse(cfg.shape_meta).to_dict()
    assert cfg.name == task
    assert Path(cfg.dataset.zarr_path).suffix == ".zarr"
    kwargs = dict(cfg.env_runner.env_kwargs)
    env = gym.make(cfg.env_runner.env_id, **kwargs)
    try:
        obs, _ = env.reset(seed=0)
        assert env.action_space.shape == tuple(meta["action"]["shape"])
        obs, *_ = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
        for key, attr in meta["obs"].items():
            assert key in obs, f"{task}: env has no {key!r} (has {sorted(obs)})"
            assert obs[key].shape == tuple(attr["shape"]) and obs[key].dtype == np.float32, \
                f"{task}/{key}: env {obs[key].shape} {obs[key].dtype}, shape_meta {attr['shape']}"
            assert env.observation_space[key].shape == obs[key].shape
            if attr["type"] == "rgb":
                assert 0 <= obs[key].min()
                assert obs[key].max() <= 1
        if cfg.image_crop_shape is not None:
            rgb = [a["shape"] for a in meta["obs"].values() if a["type"] == "rgb"]
            assert rgb
            assert all(c <= s for shape in rgb for c, s in zip(cfg.image_crop_shape, shape[1:]))
    finally:
        env.close()


class ZeroPolicy:
    device = "cpu"

    def __init__(self, action_dim: int, n_action_steps: int):
        self.shape = (n_action_steps, action_dim)

    def predict_action(self, obs):
        import torch

        batch = next(iter(obs.values())).shape[0]
        return {"action": torch.zeros(batch, *self.shape)}


def run_async_runner(task: str, tmp_path) -> dict:
    """The task's own env runner config, with its parallel worker processes."""
    import hydra

    cfg = task_config(task, "task.env_runner.vector_env=async", "task.env_runner.n_envs=2",
                      "task.env_runner.n_train=0", "task.env_runner.n_test=2", "task.env_runner.max_steps=8")
    runner = hydra.utils.instantiate(cfg.env_runner, output_dir=str(tmp_path))
    try:
        return runner.run(ZeroPolicy(cfg.shape_meta.action.shape[0], cfg.env_runner.n_action_steps))
    finally:
        runner.close()


@pytest.mark.timeout(180)
def test_async_runner_does_not_deadlock(tmp_path):
    """Forked workers hang in Mesa EGL once the parent made a GL context (gym-hil makes one in its
    constructor, and AsyncVectorEnv builds one env in the parent): the configs use spawn."""
    log = run_async_runner("pick_cube_lowdim", tmp_path)
    assert log["test/success_rate"] == 0.0
    assert len([k for k in log if "sim_max_reward" in k]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("task", ["robosuite_lift_image", "metaworld_push_image", "pick_cube_image"])
def test_async_runner_image_tasks(task, tmp_path):
    assert "test/success_rate" in run_async_runner(task, tmp_path)
