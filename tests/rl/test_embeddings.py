"""A frozen (Octo) encoder in ConRFT: the actor stores its features with every step, the demos get
the same features from the same window rule, and the learner updates without running it."""

from __future__ import annotations

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from policylab.common.shape_meta import ShapeMeta
from policylab.data.normalizer import LinearNormalizer, SingleFieldLinearNormalizer
from policylab.data.replay_buffer import ReplayBuffer
from policylab.rl.actor import EnvActor, policy_weights
from policylab.rl.conrft import ConRFT
from policylab.rl.embeddings import (
    EMBEDDING_KEY,
    episode_embeddings,
    has_frozen_encoder,
)
from policylab.rl.transitions import TransitionSampler, TransitionSpec
from tests.helpers import compose_config, conrft_config


@pytest.fixture(scope="module")
def cfg():
    cfg = compose_config(["debug=tiny", "policy=conrft_actor", "task=pick_cube_image",
                          "policy/obs_encoder=octo_tiny", "policy.obs_encoder.frozen=true",
                          "task.env_runner.env_kwargs.image_size=32", "task.shape_meta.obs.front.shape=[3,32,32]",
                          "task.shape_meta.obs.wrist.shape=[3,32,32]", "task.image_crop_shape=[28,28]"])
    OmegaConf.resolve(cfg)
    return cfg


def make_policy(cfg):
    torch.manual_seed(0)
    policy = hydra.utils.instantiate(cfg.policy)
    normalizer = LinearNormalizer()
    for key, attr in cfg.task.shape_meta.obs.items():
        if attr.get("type") != "rgb":
            normalizer[key] = SingleFieldLinearNormalizer.create_manual(
                torch.full((attr.shape[0],), 2.0), torch.full((attr.shape[0],), -0.5),
                {"min": -torch.ones(attr.shape[0]), "max": torch.ones(attr.shape[0]),
                 "mean": torch.zeros(attr.shape[0]), "std": torch.ones(attr.shape[0])})
    normalizer["action"] = SingleFieldLinearNormalizer.create_identity(4)
    policy.set_normalizer(normalizer)
    return policy


@pytest.fixture(scope="module")
def recorded(cfg):
    """An 8-step episode recorded by an actor that embeds, and the weights it acted with."""
    policy = make_policy(cfg)
    assert has_frozen_encoder(policy)
    policy_cfg = OmegaConf.to_container(cfg.policy)
    actor = EnvActor(OmegaConf.to_container(cfg.task), policy_cfg, None, cfg.n_obs_steps, cfg.n_action_steps,
                     max_steps=8, embed=True)
    try:
        episode, _ = actor.run_episode(seed=3, weights=policy_weights(policy), version=1)
    finally:
        actor.env.close()
    return policy, episode


def test_one_encoder_pass_per_step_serves_the_action_and_the_stored_embedding(cfg):
    """ConRFT's actor (Ta = 1) encodes each window once: the action and the stored embedding share it."""
    policy = make_policy(cfg)
    actor = EnvActor(OmegaConf.to_container(cfg.task), OmegaConf.to_container(cfg.policy), None, cfg.n_obs_steps, 1,
                     max_steps=4, embed=True)
    try:
        actor.set_weights(policy_weights(policy), version=1)
        calls = []
        actor.policy.obs_encoder.register_forward_hook(lambda *_: calls.append(1))
        episode, stats = actor.run_episode(seed=3)
    finally:
        actor.env.close()
    assert stats["length"] == 4 and len(calls) == 4  # was 8: one pass for the action, one for the embedding
    again = episode_embeddings(policy, episode, OmegaConf.to_container(cfg.task.shape_meta))
    np.testing.assert_allclose(again, episode[EMBEDDING_KEY], rtol=1e-5, atol=1e-5)


def test_demo_embeddings_equal_the_actors(cfg, recorded):
    policy, episode = recorded
    assert episode[EMBEDDING_KEY].shape[0] == 8
    again = episode_embeddings(policy, episode, OmegaConf.to_container(cfg.task.shape_meta), batch_size=3)
    np.testing.assert_allclose(again, episode[EMBEDDING_KEY], rtol=1e-5, atol=1e-5)


def test_learner_update_reads_embeddings_and_never_runs_the_encoder(cfg, recorded):
    policy, episode = recorded
    rb = ReplayBuffer.create_empty_numpy()
    rb.add_episode(episode)
    shape_meta = OmegaConf.to_container(cfg.task.shape_meta)
    sampler = TransitionSampler(rb, ShapeMeta.parse(shape_meta), TransitionSpec(
        cfg.horizon, cfg.n_obs_steps, cfg.n_action_steps, gamma=0.98, embedding_key=EMBEDDING_KEY))
    train_cfg = compose_config(["workspace=rl_offline", "task=pick_cube_image", "critic.hidden_dims=[16]",
                                "critic.obs_encoder.image_encoder.rgb_model_name=resnet18"])
    critic = hydra.utils.instantiate(train_cfg.critic)(shape_meta=shape_meta, n_obs_steps=cfg.n_obs_steps,
                                                       action_dim=cfg.n_action_steps * 4)
    actor = policy.train().requires_grad_(True)
    actor.obs_encoder.requires_grad_(False)
    agent = ConRFT(actor, critic, conrft_config(calql=True, cql_n_actions=2, image_shift_pad=2))
    encoder_before = {k: v.clone() for k, v in actor.obs_encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in actor.model.state_dict().items()}

    def forbidden(*args, **kwargs):
        raise AssertionError("the learner ran the frozen encoder")

    actor.obs_encoder.forward = forbidden
    try:
        metrics = agent.update(sampler.sample(4, torch.Generator().manual_seed(0)))
    finally:
        del actor.obs_encoder.forward
    assert np.isfinite(metrics["critic_loss"])
    assert "bc_loss" in metrics
    assert "cql_gap" in metrics
    assert all(torch.equal(v, actor.obs_encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert any(not torch.equal(v, actor.model.state_dict()[k]) for k, v in head_before.items()), "head trained"
