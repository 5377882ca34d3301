"""The RL actor on pick-cube low-dim with a tiny ConRFT actor policy: the recorded episode layout,
the obs window, interventions, and the ray actor surviving a kill -9 mid-episode."""

from __future__ import annotations

import os
import signal
import socket
import time

import gymnasium as gym
import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from policylab.common.shape_meta import ShapeMeta
from policylab.data.normalizer import LinearNormalizer, SingleFieldLinearNormalizer
from policylab.rl.actor import (
    EnvActor,
    make_actor_env,
    policy_weights,
    remote_env_actor,
    run_episode,
)
from policylab.rl.buffers import OnlineReplayStore
from policylab.rl.episodes import to_store
from policylab.rl.transitions import TransitionSpec
from tests.helpers import compose_config

TO, TA = 2, 4
INTERVENTION = {"deviation_threshold": 1.5, "patience": 1, "stall_steps": None, "takeover_steps": 3}


@pytest.fixture(scope="module")
def cfg():
    cfg = compose_config(["debug=tiny", "policy=conrft_actor", "task=pick_cube_lowdim"])
    OmegaConf.resolve(cfg)
    assert (cfg.n_obs_steps, cfg.n_action_steps) == (TO, TA)
    return cfg


def make_policy(cfg, action_scale: float = 1.0):
    """The tiny actor with identity obs normalization; actions span [-action_scale, action_scale]."""
    torch.manual_seed(0)
    policy = hydra.utils.instantiate(cfg.policy)
    normalizer = LinearNormalizer()
    for key, attr in cfg.task.shape_meta.obs.items():
        normalizer[key] = SingleFieldLinearNormalizer.create_identity(attr.shape[0])
    normalizer["action"] = SingleFieldLinearNormalizer.create_manual(
        torch.full((4,), 1 / action_scale), torch.zeros(4),
        {"min": -torch.ones(4), "max": torch.ones(4), "mean": torch.zeros(4), "std": torch.ones(4)})
    policy.set_normalizer(normalizer)
    return policy


class Recorder(gym.Wrapper):
    """Keeps every obs and info the actor's env returned."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.obs, self.infos = [obs], []
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.obs.append(obs)
        self.infos.append(info)
        return obs, reward, terminated, truncated, info


class Spy:
    """A policy whose predict_action inputs are kept."""

    def __init__(self, policy):
        self.policy, self.windows = policy, []

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def predict_action(self, obs, generator=None):
        self.windows.append({k: v.clone() for k, v in obs.items()})
        return self.policy.predict_action(obs, generator=generator)


def test_episode_layout_windows_and_interventions(cfg, tmp_path):
    env = Recorder(make_actor_env(cfg.task, INTERVENTION))
    spy, embedded = Spy(make_policy(cfg)), []

    def embed(window):
        embedded.append({k: v.clone() for k, v in window.items()})
        return torch.cat([v.reshape(-1) for v in window.values()])

    max_steps = 30  # not a multiple of Ta: the last chunk is cut
    episode, stats = run_episode(spy, env, seed=3, n_obs_steps=TO, n_action_steps=TA, max_steps=max_steps,
                                 embed=embed)
    L = stats["length"]
    obs_keys = set(env.observation_space.spaces)
    assert set(episode) == obs_keys | {"action", "reward", "terminal", "intervention", "embedding"}
    assert all(len(v) == L for v in episode.values())
    assert L == max_steps == len(env.infos)
    for key in obs_keys:
        assert episode[key].dtype == np.float32
        want = np.stack([to_store(o, env.observation_space)[key] for o in env.obs[:L]])
        np.testing.assert_array_equal(episode[key], want, err_msg=key)  # obs before action t
    assert episode["action"].dtype == np.float32
    assert episode["action"].shape == (L, 4)
    np.testing.assert_allclose(episode["action"], np.clip([i["action"] for i in env.infos], -1, 1), atol=1e-6)
    assert episode["reward"].dtype == np.float32
    assert episode["terminal"].dtype == np.uint8
    assert not episode["terminal"].any()  # a time limit is not terminal
    flags = np.array([i["intervention"] for i in env.infos], np.uint8)
    assert episode["intervention"].dtype == np.uint8
    np.testing.assert_array_equal(episode["intervention"], flags)
    counts = env.get_wrapper_attr("get_intervention_stats")()
    assert stats["n_interventions"] == counts["n_interventions"] > 0
    assert stats["n_intervened_steps"] == counts["n_intervened_steps"] == flags.sum() < L
    assert stats["intervention_rate"] == pytest.approx(flags.mean())
    assert stats["env_steps_per_s"] > 0
    assert stats["success"] is False

    # the policy saw the To-window ending at steps 0, Ta, 2 Ta, ...; at reset the first obs twice
    assert len(spy.windows) == -(-L // TA)
    first = spy.windows[0]["ee_pos"][0].numpy()
    np.testing.assert_array_equal(first, np.stack([env.obs[0]["ee_pos"]] * TO))
    np.testing.assert_array_equal(spy.windows[1]["cube_pos"][0].numpy(),
                                  np.stack([env.obs[TA - 1]["cube_pos"], env.obs[TA]["cube_pos"]]))
    # the embedding is taken on every step's own window
    obs_dim = sum(space.shape[0] for space in env.observation_space.spaces.values())
    assert episode["embedding"].shape == (L, TO * obs_dim)
    np.testing.assert_array_equal(embedded[1]["gripper"][0].numpy(),
                                  np.stack([env.obs[0]["gripper"], env.obs[1]["gripper"]]))
    assert episode["embedding"].dtype == np.float32

    again, _ = run_episode(make_policy(cfg), make_actor_env(cfg.task, INTERVENTION), seed=3, n_obs_steps=TO,
                           n_action_steps=TA, max_steps=max_steps)
    np.testing.assert_array_equal(again["action"], episode["action"])  # same seed, same episode

    # the learner's store takes it as it is
    store = OnlineReplayStore(tmp_path / "online.zarr", ShapeMeta.parse(cfg.task.shape_meta),
                              TransitionSpec(cfg.horizon, TO, TA, gamma=0.99, embedding_key="embedding"))
    store.add_episode(episode)
    assert store.n_steps == L


def test_takeover_episode_terminates_at_success(cfg):
    """With the human holding the mouse throughout, the expert's episode ends at its success step."""
    takeover = {"deviation_threshold": 0.0, "patience": 1, "stall_steps": None, "takeover_steps": 1000}
    env = make_actor_env(cfg.task, takeover)
    episode, stats = run_episode(make_policy(cfg), env, seed=0, n_obs_steps=TO, n_action_steps=TA, max_steps=100)
    assert stats["success"]
    assert stats["length"] < 100
    assert episode["terminal"][-1] == 1
    assert not episode["terminal"][:-1].any()
    assert episode["intervention"].all()
    assert stats["n_interventions"] == 1
    assert stats["intervention_rate"] == 1.0
    assert stats["return"] == pytest.approx(float(episode["reward"].sum()))


def test_without_intervener_actions_are_the_policys(cfg):
    env = make_actor_env(cfg.task, None)
    policy = Spy(make_policy(cfg, action_scale=0.5))
    episode, stats = run_episode(policy, env, seed=1, n_obs_steps=TO, n_action_steps=TA, max_steps=6)
    assert stats["length"] == 6
    assert not episode["intervention"].any()
    assert stats["n_interventions"] == 0
    assert np.abs(episode["action"]).max() <= 0.5
    assert policy.policy.training  # its mode before the episode is restored


def test_env_actor_in_process(cfg):
    """The ray actor's class, called directly: weights by version, refusal without them."""
    actor = EnvActor(OmegaConf.to_container(cfg.task), OmegaConf.to_container(cfg.policy), None, TO, TA, max_steps=5,
                     embed=True)
    with pytest.raises(RuntimeError, match="no weights"):
        actor.run_episode(0)
    weights = policy_weights(make_policy(cfg))
    episode, stats = actor.run_episode(0, weights, version=1)
    assert stats["weights_version"] == 1
    assert stats["actor_pid"] == os.getpid()
    assert stats["host"] == socket.gethostname()
    assert stats["length"] == 5
    assert episode["embedding"].shape[0] == 5
    assert episode["embedding"].dtype == np.float32
    with pytest.raises(KeyError, match="missing keys"):
        actor.set_weights({k: v for k, v in weights.items() if "normalizer" not in k}, version=2)


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_actor_survives_kill(cfg, ray_session):
    ray = ray_session
    actor = remote_env_actor(num_cpus=1).remote(OmegaConf.to_container(cfg.task), OmegaConf.to_container(cfg.policy),
                                                INTERVENTION, TO, TA, max_steps=8)
    weights = ray.put(policy_weights(make_policy(cfg)))
    episode, stats = ray.get(actor.run_episode.remote(0, weights, 1), timeout=600)
    pid = stats["actor_pid"]
    assert stats["weights_version"] == 1
    assert pid != os.getpid()
    assert stats["node_id"] == ray.get_runtime_context().get_node_id()  # the one node, the driver's
    assert stats["length"] == 8
    assert episode["action"].dtype == np.float32
    assert episode["intervention"].dtype == np.uint8

    # near-zero actions without a human: the cube never moves, so the episode only ends by the kill
    still = ray.put(policy_weights(make_policy(cfg, action_scale=1e-3)))
    long_call = actor.run_episode.remote(1, still, 2, max_steps=10**7)
    time.sleep(1.5)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(long_call, timeout=300)

    deadline = time.monotonic() + 300  # generous: a loaded machine restarts actors slowly
    while True:  # the restarted actor has no weights: every call carries them
        try:
            _, stats = ray.get(actor.run_episode.remote(2, weights, 3), timeout=300)
            break
        except ray.exceptions.RayActorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert stats["weights_version"] == 3
    assert stats["actor_pid"] != pid
    assert stats["length"] == 8
    ray.kill(actor, no_restart=True)
