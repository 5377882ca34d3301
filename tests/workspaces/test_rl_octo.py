"""ConRFT from images with an Octo encoder trained in SFT and frozen for RL (ConRFT's setting):
SFT -> Stage I -> Stage II through train.py on pick-cube images, then eval.py on the result. The
critic's image trunk is the SFT encoder's own, frozen (`critic_trunk=sft`): its features are
stored with the transitions and no batch carries images. The actor reads them too, through its
image head (`policy.image_head`), added to the SFT policy by Stage I."""


import numpy as np
import pytest

from eval import main as eval_main
from policylab.common.checkpoint import load_config
from policylab.common.logging import read_logs
from policylab.data.generate.__main__ import main as generate
from policylab.data.replay_buffer import ReplayBuffer
from policylab.policies.loading import load_policy
from tests.helpers import RL_ENV, run_train, task_overrides

ENV = RL_ENV


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "pick_cube.zarr"
    generate(["task=pick_cube_image", "n=2", "images=true", f"out={out}"])
    return out


def common(store, run_dir, *extra):
    return task_overrides("pick_cube_image", store, run_dir, *extra)


HEAD = ("+policy.image_head._target_=policylab.policies.image_head.StemImageHead", "+policy.image_head._partial_=true",
        "+policy.image_head.feature_dim=8")


@pytest.fixture(scope="module")
def sft(store, tmp_path_factory):
    sft = tmp_path_factory.mktemp("sft")
    result = run_train(common(store, sft, "policy=conrft_actor", "policy/obs_encoder=octo_tiny", "debug=tiny",
                              "training.num_epochs=1", "training.rollout_every=0"), env_extra=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_config(sft / "checkpoints" / "latest").policy.obs_encoder.frozen is False
    return sft


def test_octo_sft_then_frozen_stage1_and_stage2(store, sft, tmp_path):

    stage1 = tmp_path / "stage1"
    result = run_train(common(store, stage1, "workspace=rl_offline", "debug=tiny_rl",
                              f"policy.init={sft / 'checkpoints' / 'latest'}", "policy.freeze_encoder=true",
                              "critic_trunk=sft", "training.num_steps=2", "training.batch_size=8", *HEAD),
                       env_extra=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = load_config(stage1 / "checkpoints" / "latest")
    assert saved.policy.obs_encoder.frozen is True and "init" not in saved.policy
    assert "demo embeddings and demo trunk features" in result.stderr  # computed once, before training
    assert saved.critic.obs_encoder.image_encoder.trunk.checkpoint == str(sft / "checkpoints" / "latest")
    assert saved.policy.image_head.feature_dim == 8  # the actor's head on the stems, saved: Stage II rebuilds it
    assert "StemImageHead on the frozen encoder's camera stems" in (stage1 / "train.log").read_text()

    stage2 = tmp_path / "stage2"
    result = run_train(common(store, stage2, "workspace=rl_online", "debug=tiny_rl",
                              f"policy.init={stage1 / 'checkpoints' / 'latest'}", "training.batch_size=8",
                              "training.num_steps=100000", "training.training_starts=4", "training.max_env_steps=24",
                              "training.max_train_minutes=5", "task.env_runner.max_steps=8",
                              "online.intervention.takeover_steps=3"), env_extra=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    online = ReplayBuffer.create_from_path(stage2 / "buffers" / "online.zarr")
    demos = ReplayBuffer.create_from_path(stage2 / "buffers" / "demos.zarr")
    assert "embedding" in online and "embedding" in demos and "front" in online
    actor = load_policy(stage2 / "checkpoints" / "latest")
    assert actor.image_head is not None  # the stored embedding is the encoder's part; the head's is recomputed
    assert online["embedding"].shape[1] == demos["embedding"].shape[1] == actor.embedding_dim and online.n_steps >= 16
    assert np.isfinite(online["embedding"][:]).all()
    for buffer in (online, demos):  # Stage II keeps Stage I's critic: the SFT encoder's stems
        assert buffer["trunk_front"].dtype == np.float16 and buffer["trunk_front"].shape[0] == buffer.n_steps
        assert dict(buffer.root.attrs)["policylab_trunk_identity"].startswith("front=sft(")
    assert any("critic_loss" in r for r in read_logs(stage2 / "logs.jsonl"))

    log = eval_main(["--checkpoint", str(stage2 / "checkpoints" / "latest"), "--output_dir", str(tmp_path / "eval"),
                     "n_test=1", "n_train=0", "max_steps=5"])
    assert 0 <= log["test/mean_score"] <= 1


def test_image_head_stores_its_own_stem_maps_beside_another_critic_trunk(store, sft, tmp_path):
    """A critic trunk that is not the SFT stems (here a random ResNet-10, the ablation), Stage II
    straight from SFT: the learner stores the actor head's stem maps as `stem_<key>` beside the
    critic's `trunk_<key>`, for the demos and for every online step."""
    stage2 = tmp_path / "stage2"
    result = run_train(common(store, stage2, "workspace=rl_online", "debug=tiny_rl",
                              f"policy.init={sft / 'checkpoints' / 'latest'}", "policy.freeze_encoder=true",
                              "critic_trunk=resnet10", "training.batch_size=8", *HEAD,
                              "training.num_steps=100000", "training.training_starts=4", "training.max_env_steps=16",
                              "training.max_train_minutes=5", "task.env_runner.max_steps=8",
                              "online.intervention.takeover_steps=3", "training.eval_at_end=false"), env_extra=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "demo embeddings and demo trunk features and demo stem maps" in result.stderr
    actor = load_policy(stage2 / "checkpoints" / "latest")
    for name in ("demos", "online"):
        buffer = ReplayBuffer.create_from_path(stage2 / "buffers" / f"{name}.zarr")
        assert buffer["stem_front"].shape == (buffer.n_steps, *actor.image_head.feature_shapes["front"])
        assert buffer["trunk_front"].shape[1:] != buffer["stem_front"].shape[1:]  # ResNet-10's, not the stems
        assert buffer["stem_front"].dtype == np.float16 and np.isfinite(buffer["stem_front"][:]).all()
    assert any("critic_loss" in r for r in read_logs(stage2 / "logs.jsonl"))
