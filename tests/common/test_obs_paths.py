"""One frame, every path to a policy: dataset, env runner, real-robot evaluation, policy server and
RL actor all give the policy the same tensors (`policylab.common.obs`)."""


import numpy as np
import pytest
import torch

from policylab.common.obs import to_policy_obs
from policylab.common.shape_meta import ShapeMeta
from policylab.data.datasets.sequence import SequenceDataset
from policylab.data.replay_buffer import ReplayBuffer
from policylab.env_runners.gym_runner import GymEnvRunner
from policylab.rl.actor import _window
from policylab.robot_apps.evaluation import obs_to_policy
from policylab.serving.protocol import decode, encode
from policylab.serving.server import PolicyServer

TO = 2
SHAPE_META = {"obs": {"image": {"shape": [3, 6, 8], "type": "rgb", "zarr_key": "img"},
                      "agent_pos": {"shape": [2], "zarr_key": "state", "index": [1, 3]}},
              "action": {"shape": [2]}}


class Recorder:
    """A policy stand-in that keeps what it was given."""

    shape_meta, n_obs_steps, n_action_steps, device = SHAPE_META, TO, 1, torch.device("cpu")

    def __init__(self):
        self.seen = []

    def predict_action(self, obs, generator=None):
        self.seen.append({k: v.clone() for k, v in obs.items()})
        batch = next(iter(obs.values())).shape[0]
        return {"action": torch.zeros(batch, 1, 2), "action_pred": torch.zeros(batch, 1, 2)}


@pytest.fixture
def frames():
    """Three recorded steps in the stored layout: (H, W, 3) uint8 images, a 4-d state."""
    rng = np.random.default_rng(0)
    return {"img": rng.integers(0, 256, (3, 6, 8, 3), dtype=np.uint8),
            "state": rng.normal(size=(3, 4)).astype(np.float32)}


def env_layout(frames, steps):
    """What a sim env gives for the same steps: obs keys, images (3, H, W) in [0, 1]."""
    image = np.moveaxis(frames["img"][steps], -1, -3).astype(np.float32) / np.float32(255)
    return {"image": image, "agent_pos": frames["state"][steps, 1:3]}


def test_the_same_frame_gives_the_same_tensor_through_every_path(frames, tmp_path):
    steps = [1, 2]
    want = to_policy_obs({k: v[steps][None] for k, v in frames.items()}, SHAPE_META, stored=True)
    assert want["image"].shape == (1, TO, 3, 6, 8)
    assert want["agent_pos"].shape == (1, TO, 2)

    buffer = ReplayBuffer.create_empty_numpy()
    buffer.add_episode({**frames, "action": np.zeros((3, 2), np.float32)})
    dataset = SequenceDataset(SHAPE_META, horizon=TO, n_obs_steps=TO, replay_buffer=buffer)
    paths = {"dataset": {k: v[None] for k, v in dataset[2]["obs"].items()},
             "real": obs_to_policy({"camera_0": frames["img"], "robot_eef_pose": frames["state"]}, SHAPE_META,
                                   n_obs_steps=TO, obs_key_map={"img": "camera_0", "state": "robot_eef_pose"})}

    env = {k: v[None] for k, v in env_layout(frames, steps).items()}
    runner, recorder = GymEnvRunner(str(tmp_path), env_id="unused", n_obs_steps=TO, n_action_steps=1), Recorder()
    runner._act(recorder, env)
    paths["env_runner"] = recorder.seen[-1]

    PolicyServer(recorder).handle(encode({"type": "predict"}, env))
    paths["server"] = recorder.seen[-1]

    paths["rl_actor"] = _window(env_layout(frames, steps), torch.device("cpu"))  # MultiStepWrapper's (To, ...)

    for name, obs in paths.items():
        for key in SHAPE_META["obs"]:
            assert obs[key].dtype == torch.float32, (name, key)
            assert torch.equal(obs[key], want[key]), (name, key)


def test_one_rule_for_the_observation_window():
    meta = ShapeMeta.parse(SHAPE_META)
    obs = {"image": torch.zeros(1, TO, 3, 6, 8), "agent_pos": torch.zeros(1, TO, 2)}
    assert meta.check_obs(obs, TO) == 1
    with pytest.raises(ValueError, match="To=2"):
        meta.check_obs({**obs, "agent_pos": torch.zeros(1, TO + 1, 2)}, TO)
    with pytest.raises(KeyError, match="image"):
        meta.check_obs({"agent_pos": obs["agent_pos"]}, TO)
    with pytest.raises(ValueError, match="batch"):
        meta.check_obs({**obs, "agent_pos": torch.zeros(2, TO, 2)}, TO)
    reply, _ = decode(PolicyServer(Recorder()).handle(encode({"type": "predict"}, {
        "image": np.zeros((1, TO + 1, 3, 6, 8), np.float32), "agent_pos": np.zeros((1, TO + 1, 2), np.float32)})))
    assert reply["type"] == "error"
    assert "To=2" in reply["message"]


def test_shape_meta_parses_once_with_defaults_and_named_errors():
    meta = ShapeMeta.parse(SHAPE_META)
    assert ShapeMeta.parse(meta) is meta
    assert meta.rgb_keys == ["image"]
    assert meta.low_dim_keys == ["agent_pos"]
    assert meta.obs["agent_pos"].index == (1, 3)
    assert meta.action_dim == 2
    assert meta.to_dict()["obs"]["image"]["zarr_key"] == "img"
    assert ShapeMeta.parse(meta.to_dict()) == meta
    with pytest.raises(ValueError, match=r"shape_meta.obs.cam.type"):
        ShapeMeta.parse({"obs": {"cam": {"shape": [3], "type": "depth"}}, "action": {"shape": [1]}})
    with pytest.raises(ValueError, match=r"shape_meta.obs.cam: rgb shape"):
        ShapeMeta.parse({"obs": {"cam": {"shape": [3, 4], "type": "rgb"}}, "action": {"shape": [1]}})
