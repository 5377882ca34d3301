"""The actor's image head on the frozen Octo stems (policies/image_head.py): an SFT policy widened
with it acts exactly as before, the learner's condition from cached stem maps equals the acting
one, only the head learns, and the head reads the critic's cached maps only when they are its stems."""

from __future__ import annotations

import copy
import functools
import warnings

import hydra
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from policylab.models.critic import CriticEnsemble, CriticObsEncoder, stem_key
from policylab.models.encoders.frozen_resnet import FrozenTrunkEncoder
from policylab.policies.encoder_trunk import octo_camera_stem, octo_stem_features
from policylab.policies.image_head import widen_state_dict
from policylab.rl.conrft import ConRFT
from policylab.workspaces.rl import stems_shared_with_critic
from tests.helpers import compose_config, conrft_config
from tests.rl.test_embeddings import make_policy

HEAD = {"_target_": "policylab.policies.image_head.StemImageHead", "_partial_": True, "feature_dim": 8}
KEYS = ("front", "wrist")


@pytest.fixture(scope="module")
def cfg():
    cfg = compose_config(["debug=tiny", "policy=conrft_actor", "task=pick_cube_image",
                          "policy/obs_encoder=octo_tiny", "policy.obs_encoder.frozen=true",
                          "task.shape_meta.obs.front.shape=[3,32,32]", "task.shape_meta.obs.wrist.shape=[3,32,32]",
                          "task.image_crop_shape=[28,28]"])
    OmegaConf.resolve(cfg)
    return cfg


@pytest.fixture(scope="module")
def policies(cfg):
    """An SFT-like policy without the head, and the same policy widened with it."""
    plain = make_policy(cfg)
    head_cfg = OmegaConf.to_container(cfg.policy)
    head_cfg["image_head"] = HEAD
    torch.manual_seed(1)
    widened = hydra.utils.instantiate(head_cfg)
    widened.load_state_dict(widen_state_dict(widened, plain.state_dict()))
    widened.set_normalizer(plain.normalizer)
    return plain.eval(), widened.eval()


def observations(batch=3, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"front": torch.rand(batch, 2, 3, 32, 32, generator=g), "wrist": torch.rand(batch, 2, 3, 32, 32, generator=g),
            "ee_pos": torch.randn(batch, 2, 3, generator=g), "gripper": torch.rand(batch, 2, 1, generator=g)}


def test_widened_policy_acts_exactly_as_the_one_without_the_head(policies):
    plain, widened = policies
    obs = observations()
    a = plain.predict_action(obs, torch.Generator().manual_seed(5))["action"]
    b = widened.predict_action(obs, torch.Generator().manual_seed(5))["action"]
    torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
    assert widened.image_head.output_dim() == 16 and widened.embedding_dim == plain.embedding_dim


def test_learner_condition_from_cached_maps_equals_the_acting_one(policies):
    _, policy = policies
    nobs = policy.normalize_obs(observations())
    acting = policy.encode_obs(nobs)
    cached = {stem_key(k): policy.image_head.maps(k, nobs[k][:, -1]).half() for k in KEYS}  # as stored
    learner = policy.encode_obs({**nobs, **cached}, embedding=policy.encode_window(nobs))
    torch.testing.assert_close(learner, acting, atol=2e-3, rtol=0)
    # what an RL actor stores is the encoder's part only: the head's is recomputed as it learns
    assert torch.equal(policy.stored_embedding(acting), policy.encode_window(nobs))
    assert acting.shape == (3, policy.embedding_dim + 16)


def test_actor_loss_trains_the_head_and_never_the_frozen_stems(cfg, policies):
    _, policy = policies
    policy = copy.deepcopy(policy).train()
    nobs = policy.normalize_obs(observations(batch=4))
    cached = {stem_key(k): policy.image_head.maps(k, nobs[k][:, -1]) for k in KEYS}
    agent = ConRFT(policy, critic_on(policy, functools.partial(PolicyStems, policy)), conrft_config("online"))
    with torch.no_grad():
        embedding = policy.encode_window(nobs)
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    action = torch.rand(4, policy.horizon, 4) * 2 - 1
    for _ in range(2):  # the head's weights in the backbone start at zero: its own gradient flows from step 2
        cond = agent.actor_cond({"cond": None, "embedding": embedding, "nobs": {**nobs, **cached}})
        optimizer.zero_grad(set_to_none=True)
        policy.bc_loss(action, cond).backward()
        optimizer.step()
    changed = {name for name, p in policy.named_parameters() if not torch.equal(p, before[name])}
    assert {name for name, _ in policy.image_head.named_parameters(prefix="image_head")} <= changed
    assert not any(name.startswith("obs_encoder.") for name in changed)  # the stems and the transformer
    assert all(p.grad is None for p in policy.obs_encoder.parameters())


def test_widen_state_dict_refuses_any_other_mismatch(policies):
    plain, widened = policies
    state = plain.state_dict()
    key = "model.head.weight"
    state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    with pytest.raises(ValueError, match="model.head.weight"):
        widen_state_dict(widened, state)


def test_image_head_needs_an_octo_encoder(cfg):
    bad = OmegaConf.to_container(compose_config(["debug=tiny", "policy=conrft_actor", "task=pick_cube_image"]).policy,
                                 resolve=True)
    bad["image_head"] = HEAD
    with pytest.raises(Exception, match="octo_"):  # hydra wraps the ValueError, keeping its message
        hydra.utils.instantiate(bad)


class PolicyStems(nn.Module):
    """A critic trunk that is the policy's own stems (what critic_trunk=sft builds from a checkpoint)."""

    def __init__(self, policy, key, image_shape):
        super().__init__()
        self.stem, self.size = octo_camera_stem(policy.obs_encoder, key)
        self.source = "stems"

    def forward(self, images):
        return octo_stem_features(self.stem, self.size, images)


def critic_on(policy, trunk) -> CriticEnsemble:
    image_encoder = functools.partial(FrozenTrunkEncoder, trunk=trunk, save_trunk=False)
    encoder = functools.partial(CriticObsEncoder, proprio_dim=8, image_encoder=image_encoder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random resnet10's warning
        return CriticEnsemble(policy.shape_meta, policy.n_obs_steps, policy.n_action_steps * policy.action_dim, encoder,
                              hidden_dims=(16,))


def test_the_head_shares_the_critics_maps_only_when_they_are_its_stems(policies):
    _, policy = policies
    own = critic_on(policy, functools.partial(PolicyStems, policy))
    assert stems_shared_with_critic(policy, own, own.encoder.cached_keys) == KEYS  # nothing more to store
    other = critic_on(policy, "resnet10")  # another trunk: the learner stores the stems as stem_<key>
    assert stems_shared_with_critic(policy, other, other.encoder.cached_keys) == ()
    assert stems_shared_with_critic(policy, own, ()) == ()  # a critic that caches nothing
