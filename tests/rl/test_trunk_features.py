"""The critic's frozen image trunk computed once per frame: stored features, the identity of the
trunk that made them, the learner never running the trunk, and the shift moved to feature maps."""

import functools
import warnings

import numpy as np
import pytest
import torch

from policylab.common.obs import stored_to_policy
from policylab.common.shape_meta import ShapeMeta
from policylab.models.critic import (
    CriticEnsemble,
    CriticObsEncoder,
    shift_feature_maps,
    trunk_key,
)
from policylab.models.encoders.frozen_resnet import FrozenTrunkEncoder, trunk_hash
from policylab.models.encoders.multi_image import MultiImageObsEncoder
from policylab.models.encoders.serl_weights import save_trunk_weights
from policylab.rl.buffers import OnlineReplayStore
from policylab.rl.conrft import augment
from policylab.rl.transitions import TransitionSampler, TransitionSpec
from policylab.rl.trunk_features import (
    episode_trunk_features,
    megabytes_per_1k_transitions,
    trunk_identity,
)

SHAPE_META = {"obs": {"front": {"shape": [3, 64, 64], "type": "rgb"}, "ee": {"shape": [3], "type": "low_dim"}},
              "action": {"shape": [2]}}
META = ShapeMeta.parse(SHAPE_META)


def frozen_critic(trunk_weights=None, cache_trunk=True, shift_px=0) -> CriticEnsemble:
    image_encoder = functools.partial(FrozenTrunkEncoder, trunk="resnet10", trunk_weights=trunk_weights,
                                      save_trunk=False)
    encoder = functools.partial(CriticObsEncoder, proprio_dim=8, image_encoder=image_encoder,
                                cache_trunk=cache_trunk, feature_shift_px=shift_px)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random trunk's warning
        return CriticEnsemble(SHAPE_META, 1, 2, encoder, hidden_dims=(16,))


@pytest.fixture(scope="module")
def critic() -> CriticEnsemble:
    torch.manual_seed(0)
    return frozen_critic()


def make_episode(length=5, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    term = np.zeros(length, np.uint8)
    term[-1] = 1
    return {"front": rng.integers(0, 256, (length, 64, 64, 3), dtype=np.uint8),
            "ee": rng.normal(size=(length, 3)).astype(np.float32),
            "action": rng.uniform(-1, 1, (length, 2)).astype(np.float32),
            "reward": np.zeros(length, np.float32), "terminal": term}


def test_cached_features_equal_encoding_on_the_fly(critic):
    episode = make_episode()
    feats = episode_trunk_features(critic.encoder, episode, META)
    assert set(feats) == {"trunk_front"} and feats["trunk_front"].dtype == np.float16
    assert feats["trunk_front"].shape == (5, 512, 2, 2)
    assert megabytes_per_1k_transitions(critic.encoder) == pytest.approx(1000 * 512 * 4 * 2 / 1e6)
    critic.eval()
    images = torch.from_numpy(stored_to_policy(META.obs["front"], episode["front"], n_lead=1))[:, None]
    ee = torch.from_numpy(episode["ee"])[:, None]
    action = torch.zeros(5, 2)
    on_the_fly = critic({"front": images, "ee": ee}, action)
    cached = critic({trunk_key("front"): torch.from_numpy(feats["trunk_front"]).float(), "ee": ee}, action)
    torch.testing.assert_close(cached, on_the_fly, rtol=0, atol=1e-3)  # float16 storage
    exact = critic.encoder.trunk_features("front", images[:, 0])
    torch.testing.assert_close(critic({trunk_key("front"): exact, "ee": ee}, action), on_the_fly, rtol=0, atol=1e-6)


def test_learner_never_runs_the_trunk_and_no_gradient_reaches_it():
    critic = frozen_critic().train()
    trunk = critic.encoder.image_encoders["front"].trunk
    calls = []
    trunk.register_forward_hook(lambda *_: calls.append(1))
    assert not any(p is q for p in critic.parameters() for q in trunk.parameters())  # not in the optimizer
    assert not any(k.startswith("encoder.image_encoders.front.trunk.") for k in critic.state_dict())
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    obs = {trunk_key("front"): torch.rand(4, 512, 2, 2), "ee": torch.randn(4, 1, 3)}
    optimizer = torch.optim.Adam(critic.parameters(), lr=1e-2)
    critic(obs, torch.zeros(4, 2)).square().mean().backward()
    optimizer.step()
    assert calls == [] and all(p.grad is None for p in trunk.parameters())
    images = {"front": torch.rand(4, 1, 3, 64, 64, requires_grad=True), "ee": obs["ee"]}
    critic(images, torch.zeros(4, 2)).sum().backward()  # cache_trunk false: the trunk runs, still frozen
    assert calls == [1] and all(p.grad is None for p in trunk.parameters()) and images["front"].grad is None
    assert all(torch.equal(v, trunk.state_dict()[k]) for k, v in before.items()) and not trunk.training


def test_trained_resnet18_ablation_still_learns_its_encoder():
    encoder = functools.partial(CriticObsEncoder, proprio_dim=8, image_dim=8, image_encoder=functools.partial(
        MultiImageObsEncoder, rgb_model_name="resnet18", use_group_norm=True))
    critic = CriticEnsemble({**SHAPE_META, "obs": {"front": {"shape": [3, 32, 32], "type": "rgb"}}}, 1, 2, encoder,
                            hidden_dims=(8,))
    assert critic.encoder.cached_keys == []
    critic({"front": torch.rand(2, 1, 3, 32, 32)}, torch.zeros(2, 2)).sum().backward()
    assert critic.encoder.image_encoders["front"].key_model_map["front"].backbone.conv1.weight.grad is not None


def test_trunk_identity_follows_the_weights(tmp_path, critic):
    assert trunk_identity(critic.encoder).startswith("front=resnet10(random):")
    trunk = critic.encoder.image_encoders["front"].trunk
    paths = [tmp_path / "trunk1.safetensors", tmp_path / "trunk2.safetensors"]
    save_trunk_weights(trunk, paths[0])
    with torch.no_grad():
        trunk.conv_init.weight.add_(1.0)
    try:
        save_trunk_weights(trunk, paths[1])
    finally:
        with torch.no_grad():
            trunk.conv_init.weight.sub_(1.0)
    first, second = frozen_critic(paths[0]), frozen_critic(paths[1])
    a, b = trunk_identity(first.encoder), trunk_identity(second.encoder)
    assert a != b and a.startswith("front=resnet10(trunk1.safetensors):")
    assert a.split(":")[1] == trunk_identity(critic.encoder).split(":")[1]  # the same weights, the same hash
    own = trunk_hash(first.encoder.image_encoders["front"].trunk)
    first.load_state_dict(second.state_dict())  # a checkpoint holds the head only: the trunk stays its own
    assert trunk_hash(first.encoder.image_encoders["front"].trunk) == own


def spec_for(identity: str) -> TransitionSpec:
    return TransitionSpec(1, 1, 1, 0.9, trunk_keys=("front",), trunk_identity=identity, skip_rgb=True)


def test_store_refuses_features_of_another_trunk(tmp_path, critic):
    episode = {**make_episode(), **episode_trunk_features(critic.encoder, make_episode(), META)}
    store = OnlineReplayStore(tmp_path / "online.zarr", META, spec_for("front=resnet10(a.pkl):1111"))
    store.add_episode(episode)
    assert store.replay_buffer["trunk_front"].dtype == np.float16
    batch = store.sampler.get_batch(np.arange(3))
    assert "front" not in batch["obs"] and batch["obs"]["ee"].shape == (3, 1, 3)  # skip_rgb
    torch.testing.assert_close(batch["trunk"]["front"], torch.from_numpy(episode["trunk_front"][:3]).float())
    torch.testing.assert_close(batch["next_trunk"]["front"], torch.from_numpy(episode["trunk_front"][1:4]).float())
    OnlineReplayStore(tmp_path / "online.zarr", META, spec_for("front=resnet10(a.pkl):1111"))  # same trunk: resumes
    with pytest.raises(ValueError, match=r"online.zarr holds trunk features of the frozen trunk "
                                         r"front=resnet10\(a.pkl\):1111, but the critic's trunk is "
                                         r"front=resnet10\(b.pkl\):2222"):
        OnlineReplayStore(tmp_path / "online.zarr", META, spec_for("front=resnet10(b.pkl):2222"))
    bad = {**episode, "trunk_front": np.where(np.arange(5)[:, None, None, None] == 3, np.nan, episode["trunk_front"])}
    with pytest.raises(ValueError, match=r"'trunk_front' has non-finite .* step 3"):
        store.add_episode(bad)
    assert store.n_episodes == 1  # nothing written


def test_demo_store_records_the_trunk(tmp_path, critic):
    from policylab.data.replay_buffer import ReplayBuffer

    demos = ReplayBuffer.create_empty_numpy()
    demos.add_episode(make_episode())
    spec = spec_for(trunk_identity(critic.encoder))
    store = OnlineReplayStore.from_demos(tmp_path / "demos.zarr", demos, META, spec,
                                         transform=lambda ep: {**ep, **episode_trunk_features(critic.encoder, ep, META)})
    assert len(TransitionSampler(store.replay_buffer, META, spec)) == 5
    with pytest.raises(ValueError, match="holds trunk features of the frozen trunk front=resnet10"):
        OnlineReplayStore.from_demos(tmp_path / "demos.zarr", demos, META, spec_for("front=other:0"))


def test_feature_shift_is_a_shift_of_the_edge_padded_map():
    torch.manual_seed(0)
    features = torch.arange(6 * 2 * 4 * 4, dtype=torch.float32).reshape(6, 2, 4, 4)
    assert torch.equal(shift_feature_maps(features, 0, 1.0), features)
    # stride 1: whole cells, so each sample is one of the 9 crops of the edge-padded map (as `augment`)
    out = shift_feature_maps(features, 1, 1.0)
    padded = torch.nn.functional.pad(features, (1,) * 4, mode="replicate")
    crops = [padded[:, :, dy:dy + 4, dx:dx + 4] for dy in range(3) for dx in range(3)]
    for i in range(6):
        assert any(torch.allclose(out[i], crop[i], atol=1e-5) for crop in crops)
    # stride 32 (ResNet-10), 4 pixels: at most an eighth of a cell, a blend of neighbours
    small = shift_feature_maps(features, 4, 32.0)
    row_step, col_step = 4.0, 1.0  # the map's increments down and across
    assert 0 < (small - features).abs().max() <= (row_step + col_step) / 8 + 1e-4


def test_image_shift_leaves_cached_features_alone():
    obs = {"front": torch.rand(2, 1, 3, 8, 8), trunk_key("front"): torch.rand(2, 512, 1, 1), "ee": torch.rand(2, 1, 3)}
    out = augment(obs, ["front"], 2)
    assert out["front"] is obs["front"] and out[trunk_key("front")] is obs[trunk_key("front")]
    assert augment({"ee": obs["ee"]}, ["front"], 2)["ee"] is obs["ee"]  # skip_rgb batches have no images


def test_reward_classifier_takes_the_frozen_trunk_option():
    from policylab.rl.reward_classifier import RewardClassifier

    meta = {"front": {"shape": [3, 64, 64], "type": "rgb"}, "ee": {"shape": [3], "type": "low_dim"}}
    with pytest.warns(UserWarning, match="no trunk_weights"):
        model = RewardClassifier(meta, trunk="resnet10", hidden_dim=16)
    trunk = model.encoder.cameras["front"].trunk
    assert model.encoder.output_dim() == 256 + 3 and not any(p.requires_grad for p in trunk.parameters())
    assert any(k.startswith("encoder.cameras.front.trunk.") for k in model.state_dict())  # a self-contained checkpoint
    model.train()
    logits = model({"front": torch.rand(2, 3, 64, 64), "ee": torch.randn(2, 3)})
    logits.sum().backward()
    assert logits.shape == (2,) and all(p.grad is None for p in trunk.parameters()) and not trunk.training
    assert model.encoder.cameras["front"].dense.weight.grad is not None
