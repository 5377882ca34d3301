"""The simulated human intervener on pick-cube: who acts when, what info records, stats."""

import gymnasium as gym
import numpy as np
import pytest

from policylab.envs.interventions import InterventionWrapper
from policylab.envs.pick_cube import PickCubeEnv, PickCubeExpert
from policylab.envs.wrappers import MultiStepWrapper


@pytest.fixture(scope="module")
def base_env():
    env = PickCubeEnv()
    yield env
    env.close()


def rollout(env, policy, seed, max_steps=100):
    obs, _ = env.reset(seed=seed)
    infos = []
    for _ in range(max_steps):
        obs, _, terminated, truncated, info = env.step(policy(env, obs))
        infos.append(info)
        if terminated or truncated:
            break
    return infos


def test_expert_as_policy_is_never_overridden(base_env):
    expert = PickCubeExpert()  # noise-free, and reset with the episode's seed by the wrapper
    env = InterventionWrapper(base_env, expert, deviation_threshold=0.5)
    infos = rollout(env, lambda e, o: expert.act(e), seed=1)
    assert infos[-1]["is_success"]
    assert not any(i["intervention"] for i in infos)
    assert env.get_intervention_stats()["n_interventions"] == 0
    for info in infos:
        np.testing.assert_allclose(info["action"], info["policy_action"])


def test_deviating_policy_is_corrected_and_recorded(base_env):
    rng = np.random.default_rng(0)
    env = InterventionWrapper(base_env, PickCubeExpert(), deviation_threshold=1.0, patience=2,
                              takeover_steps=8, stall_steps=None)
    infos = rollout(env, lambda e, o: rng.uniform(-1, 1, 4), seed=4)
    assert infos[-1]["is_success"], "the intervener should carry a random policy to success"
    taken = [i for i in infos if i["intervention"]]
    assert taken
    assert all(i["intervention_reason"] == "deviation" for i in taken)
    for info in infos:
        executed = info["expert_action"] if info["intervention"] else info["policy_action"]
        np.testing.assert_array_equal(info["action"], executed)
        assert info["expert_action"].shape == (4,)
    # a takeover starts only after `patience` deviating steps: the first two steps are the policy's
    assert not infos[0]["intervention"]
    assert not infos[1]["intervention"]
    stats = env.get_intervention_stats()
    assert stats["n_intervened_steps"] == len(taken)
    assert stats["n_steps"] == len(infos)
    assert 1 <= stats["n_interventions"] <= -(-len(taken) // 8) + 1


def test_stalled_policy_triggers_takeover(base_env):
    env = InterventionWrapper(base_env, PickCubeExpert(), deviation_threshold=None,
                              stall_steps=5, takeover_steps=100)
    infos = rollout(env, lambda e, o: np.zeros(4), seed=3)
    first = next(t for t, i in enumerate(infos) if i["intervention"])
    assert first == 5
    assert infos[first]["intervention_reason"] == "stall"
    assert infos[-1]["is_success"]


def test_max_interventions_and_reset(base_env):
    env = InterventionWrapper(base_env, PickCubeExpert(), deviation_threshold=None, stall_steps=3,
                              takeover_steps=2, max_interventions=1)
    infos = rollout(env, lambda e, o: np.zeros(4), seed=4, max_steps=30)
    assert sum(i["intervention"] for i in infos) == 2
    assert env.get_intervention_stats()["n_interventions"] == 1
    env.reset(seed=4)
    assert env.get_intervention_stats() == {"n_interventions": 0, "n_intervened_steps": 0, "n_steps": 0}


def test_registered_factory_under_multistep():
    """Built from config alone (as an RL actor would), under MultiStepWrapper's chunks."""
    env = gym.make("policylab.envs.interventions:policylab/Intervened-v0",
                   env_id="policylab.envs.pick_cube:policylab/PickCube-v0",
                   expert={"_target_": "policylab.envs.pick_cube.PickCubeExpert"},
                   deviation_threshold=None, stall_steps=2, takeover_steps=50)
    env = MultiStepWrapper(env, n_obs_steps=2, n_action_steps=4, max_episode_steps=100)
    try:
        obs, _ = env.reset(seed=5)
        assert obs["cube_pos"].shape == (2, 3)
        done = False
        while not done:
            obs, _, terminated, truncated, _ = env.step(np.zeros((4, 4)))
            done = terminated or truncated
        infos = env.get_infos()
        assert infos[-1]["is_success"]
        assert infos[2]["intervention"]
        assert not infos[0]["intervention"]
    finally:
        env.close()
