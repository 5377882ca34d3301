"""Importing Diffusion Policy `.ckpt` files: the allowlist unpickler and the weight mapping.

The DP checkpoints are built here with the original's layout and key names: its workspace
payload (`cfg` as an OmegaConf DictConfig, `state_dicts`, dill-style `pickles`), its policies'
state_dict names (`model.*`, `normalizer.params_dict.<key>.input_stats.*`, robomimic's
`obs_encoder.obs_nets.<camera>` with VisualCore's duplicate `nets.i` aliases), and its data
layout (PushT's low-dim `obs` = 9 keypoints x 2, then agent x, y). A reference that follows DP's
own `predict_action` step by step runs on those tensors; the imported policylab policy, rebuilt
from its checkpoint directory alone, must predict the same actions.
"""

import io
import json
import os
import pickle
import pickletools
import re

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from omegaconf import OmegaConf
from torch import nn

from policylab.models.encoders.resnet import resnet18
from policylab.models.unet1d import ConditionalUnet1D
from policylab.policies import dp_import
from policylab.policies.base import BasePolicy
from policylab.policies.dp_import import (
    DisallowedGlobalError,
    UnsupportedCheckpointError,
)

T, TO, TA = 8, 2, 4
SCHEDULER = {"num_train_timesteps": 100, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "squaredcos_cap_v2",
             "variance_type": "fixed_small", "clip_sample": True, "prediction_type": "epsilon"}
UNET = {"diffusion_step_embed_dim": 16, "down_dims": [16, 32], "kernel_size": 3, "n_groups": 4, "cond_predict_scale": True}


def _field(scale, offset, stats):
    return {"scale": scale, "offset": offset, **{f"input_stats.{k}": v for k, v in stats.items()}}


def _fit_limits(x: torch.Tensor) -> dict:
    """DP's `limits` normalizer of the last dim: [min, max] -> [-1, 1]."""
    lo, hi = x.min(0).values, x.max(0).values
    scale = 2 / (hi - lo)
    return _field(scale, -1 - scale * lo, {"min": lo, "max": hi, "mean": x.mean(0), "std": x.std(0)})


def _normalizer_state(fields: dict) -> dict:
    return {f"normalizer.params_dict.{key}.{name}": value for key, field in fields.items() for name, value in field.items()}


def _dp_cfg(policy: dict, task: dict) -> OmegaConf:
    return OmegaConf.create({
        "name": "train_diffusion_unet", "_target_": "diffusion_policy.workspace.SomeWorkspace",
        "horizon": T, "n_obs_steps": TO, "n_action_steps": TA, "task": task,
        "policy": {"noise_scheduler": {"_target_": "diffusers.schedulers.scheduling_ddpm.DDPMScheduler", **SCHEDULER},
                   "horizon": T, "n_obs_steps": TO, "n_action_steps": TA, "num_inference_steps": 10,
                   "obs_as_global_cond": True, **policy},
        "training": {"use_ema": True, "seed": 42, "device": "cuda:0"},
        "checkpoint": {"topk": {"monitor_key": "test_mean_score"}},
    })


def _payload(cfg, model_state: dict, ema_state: dict) -> dict:
    params = [nn.Parameter(v.clone()) for k, v in model_state.items() if k.startswith("model.")]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    return {"cfg": cfg,
            "state_dicts": {"model": model_state, "ema_model": ema_state, "optimizer": optimizer.state_dict()},
            "pickles": {"global_step": pickle.dumps(1234), "epoch": pickle.dumps(56), "_output_dir": pickle.dumps("x")}}


def _perturbed(state: dict, seed: int) -> dict:
    """An 'EMA' copy: the same tensors with every learnt weight shifted a little (VisualCore's
    `nets.0` / `nets.1` entries stay the very tensors of `backbone` / `pool`, as in a state_dict)."""
    gen = torch.Generator().manual_seed(seed)
    out = {k: (v + 0.01 * torch.randn(v.shape, generator=gen) if k.startswith(("model.", "obs_encoder.")) and
               v.is_floating_point() and "pos_" not in k and "temperature" not in k else v.clone())
           for k, v in state.items()}
    for key in out:
        alias = re.sub(r"^(obs_encoder\.obs_nets\.\w+\.)nets\.([01])\.",
                       lambda m: m.group(1) + ("backbone." if m.group(2) == "0" else "pool."), key)
        if alias != key:
            out[key] = out[alias]
    return out


@pytest.fixture(scope="module")
def lowdim_dp(tmp_path_factory):
    """DP's DiffusionUnetLowdimPolicy on pusht_lowdim (obs 20 = keypoint 18 + agent 2), tiny UNet."""
    torch.manual_seed(0)
    unet = ConditionalUnet1D(input_dim=2, global_cond_dim=20 * TO, **UNET)
    data = torch.rand(500, 20) * 512
    fields = {"obs": _fit_limits(data), "action": _fit_limits(torch.rand(500, 2) * 512)}
    state = {f"model.{k}": v for k, v in unet.state_dict().items()}
    state |= _normalizer_state(fields) | {"_dummy_variable": torch.empty(0), "mask_generator._dummy_variable": torch.empty(0)}
    cfg = _dp_cfg({"_target_": "diffusion_policy.policy.diffusion_unet_lowdim_policy.DiffusionUnetLowdimPolicy",
                   "model": {"_target_": "diffusion_policy.model.diffusion.conditional_unet1d.ConditionalUnet1D",
                             "input_dim": 2, "local_cond_dim": None, "global_cond_dim": 20 * TO, **UNET},
                   "obs_dim": 20, "action_dim": 2, "obs_as_local_cond": False, "pred_action_steps_only": False,
                   "oa_step_convention": True},
                  {"name": "pusht_lowdim", "obs_dim": 20, "action_dim": 2, "keypoint_dim": 2})
    ema = _perturbed(state, 1)
    path = tmp_path_factory.mktemp("dp") / "epoch=0056-test_mean_score=0.900.ckpt"
    torch.save(_payload(cfg, state, ema), path)
    return path, state, ema


class RobomimicSpatialSoftmax(nn.Module):
    """robomimic's SpatialSoftmax (num_kp=32, fixed temperature): buffers pos_x/pos_y from np.meshgrid."""

    def __init__(self, channels: int, h: int, w: int, num_kp: int = 32):
        super().__init__()
        self.nets = nn.Conv2d(channels, num_kp, kernel_size=1)
        self.register_buffer("temperature", torch.ones(1))
        pos_x, pos_y = np.meshgrid(np.linspace(-1.0, 1.0, w), np.linspace(-1.0, 1.0, h))
        self.register_buffer("pos_x", torch.from_numpy(pos_x.reshape(1, h * w)).float())
        self.register_buffer("pos_y", torch.from_numpy(pos_y.reshape(1, h * w)).float())
        self.num_kp, self.hw = num_kp, h * w

    def forward(self, feature):
        feature = self.nets(feature).reshape(-1, self.hw)
        attention = torch.softmax(feature / self.temperature, dim=-1)
        expected = torch.cat([(self.pos_x * attention).sum(1, keepdim=True),
                              (self.pos_y * attention).sum(1, keepdim=True)], 1)
        return expected.view(-1, self.num_kp, 2)


class ResNet18Conv(nn.Module):
    """robomimic's ResNet18Conv: `nets` = torchvision resnet18's children minus avgpool and fc."""

    def __init__(self):
        super().__init__()
        trunk = resnet18(use_group_norm=True)  # torchvision layers; DP swaps BN for GroupNorm(C // 16)
        self.nets = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool,
                                  trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4)

    def forward(self, x):
        return self.nets(x)


class VisualCore(nn.Module):
    """robomimic's VisualCore: ResNet18Conv -> SpatialSoftmax -> Flatten -> Linear(64, 64), with
    backbone and pool registered twice (as attributes and inside `nets`), as there."""

    def __init__(self, crop: int):
        super().__init__()
        self.backbone = ResNet18Conv()
        side = -(-crop // 32)
        self.pool = RobomimicSpatialSoftmax(512, side, side)
        self.nets = nn.Sequential(self.backbone, self.pool, nn.Flatten(1), nn.Linear(64, 64))

    def forward(self, x):
        return self.nets(x)


@pytest.fixture(scope="module")
def image_dp(tmp_path_factory):
    """DP's DiffusionUnetHybridImagePolicy on pusht_image (image 3x96x96 cropped to 84 + agent_pos)."""
    torch.manual_seed(1)
    core = VisualCore(crop=84)
    # VisualCore's own state_dict names: backbone.nets.*, pool.*, nets.0.* (alias), nets.1.* (alias), nets.3.*
    encoder_state = {f"obs_encoder.obs_nets.image.{k}": v for k, v in core.state_dict().items()}
    assert any(".nets.0.nets." in k for k in encoder_state)
    assert any(".backbone.nets." in k for k in encoder_state)
    unet = ConditionalUnet1D(input_dim=2, global_cond_dim=(64 + 2) * TO, **UNET)
    fields = {"agent_pos": _fit_limits(torch.rand(500, 2) * 512), "action": _fit_limits(torch.rand(500, 2) * 512),
              "image": _field(torch.tensor([2.0]), torch.tensor([-1.0]), {"min": torch.tensor([0.0]), "max": torch.tensor([1.0]),
                                                                           "mean": torch.tensor([0.5]), "std": torch.tensor([0.2887])})}
    state = {f"model.{k}": v for k, v in unet.state_dict().items()} | encoder_state | _normalizer_state(fields)
    state |= {"_dummy_variable": torch.empty(0), "mask_generator._dummy_variable": torch.empty(0)}
    shape_meta = {"obs": {"image": {"shape": [3, 96, 96], "type": "rgb"}, "agent_pos": {"shape": [2], "type": "low_dim"}},
                  "action": {"shape": [2]}}
    cfg = _dp_cfg({"_target_": "diffusion_policy.policy.diffusion_unet_hybrid_image_policy.DiffusionUnetHybridImagePolicy",
                   "shape_meta": shape_meta, "crop_shape": [84, 84], "obs_encoder_group_norm": True,
                   "eval_fixed_crop": True, **UNET},
                  {"name": "pusht_image", "shape_meta": shape_meta})
    ema = _perturbed(state, 2)
    path = tmp_path_factory.mktemp("dp") / "image.ckpt"
    torch.save(_payload(cfg, state, ema), path)
    return path, state, ema


def _normalize(state, key, x):
    return x * state[f"normalizer.params_dict.{key}.scale"] + state[f"normalizer.params_dict.{key}.offset"]


def _sample(state, global_cond, generator):
    """DP's conditional_sample with global conditioning, then unnormalize and take Ta from To-1."""
    unet = ConditionalUnet1D(input_dim=2, global_cond_dim=global_cond.shape[1], **UNET)
    unet.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    scheduler = DDPMScheduler(**SCHEDULER)
    trajectory = torch.randn((global_cond.shape[0], T, 2), generator=generator)
    scheduler.set_timesteps(10)
    with torch.no_grad():
        for t in scheduler.timesteps:
            trajectory = scheduler.step(unet(trajectory, t, global_cond=global_cond), t, trajectory,
                                        generator=generator).prev_sample
    scale, offset = state["normalizer.params_dict.action.scale"], state["normalizer.params_dict.action.offset"]
    action_pred = (trajectory - offset) / scale
    return action_pred[:, TO - 1: TO - 1 + TA]


def dp_lowdim_predict(state, obs, generator):
    """DiffusionUnetLowdimPolicy: obs = PushTLowdimDataset's concat(keypoint, agent_pos)."""
    vec = torch.cat([obs["keypoint"], obs["agent_pos"]], dim=-1)
    nobs = _normalize(state, "obs", vec)
    return _sample(state, nobs[:, :TO].reshape(vec.shape[0], -1), generator)


def dp_hybrid_predict(state, obs, generator):
    """DiffusionUnetHybridImagePolicy: normalize, center crop 84 (eval_fixed_crop), robomimic
    VisualCore + ReLU per camera, concat in shape_meta order (image, agent_pos), then sample."""
    core = VisualCore(crop=84)
    prefix = "obs_encoder.obs_nets.image."
    core.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    B = obs["image"].shape[0]
    image = _normalize(state, "image", obs["image"][:, :TO]).reshape(B * TO, 3, 96, 96)[..., 6:90, 6:90]
    agent = _normalize(state, "agent_pos", obs["agent_pos"][:, :TO]).reshape(B * TO, 2)
    with torch.no_grad():
        features = torch.cat([torch.relu(core(image)), agent], dim=-1)
    return _sample(state, features.reshape(B, -1), generator)


def _obs_lowdim(batch=3):
    gen = torch.Generator().manual_seed(5)
    return {"keypoint": torch.rand(batch, TO, 18, generator=gen) * 512, "agent_pos": torch.rand(batch, TO, 2, generator=gen) * 512}


def _obs_image(batch=2):
    gen = torch.Generator().manual_seed(6)
    return {"image": torch.rand(batch, TO, 3, 96, 96, generator=gen), "agent_pos": torch.rand(batch, TO, 2, generator=gen) * 512}


@pytest.mark.parametrize("use_ema", [True, False])
def test_lowdim_import_predicts_like_dp(lowdim_dp, tmp_path, use_ema):
    path, state, ema = lowdim_dp
    out = dp_import.import_dp_checkpoint(path, tmp_path / "ckpt")
    policy = BasePolicy.from_checkpoint(out, use_ema=use_ema)  # nothing but the directory
    obs = _obs_lowdim()
    got = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))["action"]
    want = dp_lowdim_predict(ema if use_ema else state, obs, torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)  # action units are pixels (0..512)
    assert not torch.allclose(got, dp_lowdim_predict(state if use_ema else ema, obs, torch.Generator().manual_seed(0)))


def test_lowdim_import_config_and_metadata(lowdim_dp, tmp_path):
    path, _, _ = lowdim_dp
    dp_import.main([str(path), str(tmp_path / "ckpt"), "--task", "pusht_lowdim"])
    cfg = OmegaConf.load(tmp_path / "ckpt" / "config.yaml")
    assert (cfg.horizon, cfg.n_obs_steps, cfg.n_action_steps) == (T, TO, TA)
    assert list(cfg.policy.model.down_dims) == UNET["down_dims"]
    assert cfg.policy.model.kernel_size == 3
    assert cfg.policy.model.diffusion_step_embed_dim == 16
    assert cfg.policy.model.n_groups == 4
    assert cfg.policy.noise_scheduler.beta_schedule == "squaredcos_cap_v2"
    assert cfg.policy.num_inference_steps == 10
    assert cfg.policy.inference_scheduler == "ddpm"
    assert cfg.task.name == "pusht_lowdim"
    info = json.loads((tmp_path / "ckpt" / "dp_import.json").read_text())
    assert info["epoch"] == 56
    assert info["global_step"] == 1234
    assert info["ema"] is True
    normalizer = json.loads((tmp_path / "ckpt" / "normalizer.json").read_text())
    assert len(normalizer["keypoint"]["scale"]) == 18
    assert len(normalizer["agent_pos"]["scale"]) == 2
    assert not list((tmp_path / "ckpt").glob("*.pt")), "no pickle in the imported checkpoint"


def test_image_import_predicts_like_dp(image_dp, tmp_path):
    path, _, ema = image_dp
    out = dp_import.import_dp_checkpoint(path, tmp_path / "ckpt")
    cfg = OmegaConf.load(out / "config.yaml")
    assert cfg.policy.obs_encoder.feature_activation == "relu"
    assert list(cfg.policy.obs_encoder.crop_shape) == [84, 84]
    policy = BasePolicy.from_checkpoint(out)
    obs = _obs_image()
    got = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))["action"]
    want = dp_hybrid_predict(ema, obs, torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)


def _globals(data: bytes) -> set[str]:
    ops = list(pickletools.genops(data))
    names = {arg.replace(" ", ".") for op, arg, _ in ops if op.name == "GLOBAL"}
    return names | {f"{ops[i - 2][1]}.{ops[i - 1][1]}" for i, (op, _, _) in enumerate(ops) if op.name == "STACK_GLOBAL"}


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_checkpoint_is_refused_before_running(lowdim_dp, tmp_path):
    marker = tmp_path / "pwned"
    payload = torch.load(lowdim_dp[0], weights_only=False)  # our own test file
    payload["pickles"]["epoch"] = _Exploit(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(payload, path)
    with pytest.raises(DisallowedGlobalError, match=r"'(posix|os)\.system'"):
        dp_import.import_dp_checkpoint(path, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()

    # the same exploit hidden in a nested dill-pickled entry
    payload["pickles"]["epoch"] = pickle.dumps(_Exploit(marker))
    torch.save(payload, path)
    with pytest.raises(DisallowedGlobalError, match="system"):
        dp_import.load_dp_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("data, name", [
    (b"cbuiltins\neval\n(S'1+1'\ntR.", "builtins.eval"),
    (b"c__builtin__\ngetattr\n(c__builtin__\nobject\nS'__subclasses__'\ntR.", "builtins.getattr"),
    (b"cdill._dill\n_load_type\n(S'CodeType'\ntR.", "CodeType"),
    (b"csubprocess\nPopen\n(S'true'\ntR.", "subprocess.Popen"),
])
def test_refused_globals_are_named(data, name):
    with pytest.raises(DisallowedGlobalError, match=name):
        dp_import.restricted_loads(data)


def test_allowed_globals_cover_a_real_payload(lowdim_dp):
    """What the allowlist admits is what the DP-layout file holds: OmegaConf, tensors, numpy, builtins."""
    payload = torch.load(lowdim_dp[0], weights_only=False)
    payload["pickles"]["np"] = np.arange(3.0)
    buf = io.BytesIO()
    pickle.dump(payload["cfg"], buf, protocol=2)
    assert {"omegaconf.dictconfig.DictConfig", "typing.Any"} <= _globals(buf.getvalue())
    assert OmegaConf.to_container(dp_import.restricted_loads(buf.getvalue())) == OmegaConf.to_container(payload["cfg"])
    assert dp_import.restricted_loads(pickle.dumps(np.arange(3.0), protocol=2)).tolist() == [0.0, 1.0, 2.0]
    # dill writes builtin types as _load_type("dict"): allowed for plain data types only
    assert dp_import.restricted_loads(b"cdill._dill\n_load_type\n(S'dict'\ntR.") is dict


def test_unsupported_checkpoints_fail_clearly(lowdim_dp, tmp_path):
    payload = torch.load(lowdim_dp[0], weights_only=False)
    payload["cfg"].policy.obs_as_global_cond = False
    torch.save(payload, tmp_path / "inpaint.ckpt")
    with pytest.raises(UnsupportedCheckpointError, match="inpainting"):
        dp_import.import_dp_checkpoint(tmp_path / "inpaint.ckpt", tmp_path / "a")
    payload["cfg"].policy.obs_as_global_cond = True
    payload["cfg"].policy._target_ = "diffusion_policy.policy.diffusion_transformer_lowdim_policy.DiffusionTransformerLowdimPolicy"
    torch.save(payload, tmp_path / "dpt.ckpt")
    with pytest.raises(UnsupportedCheckpointError, match="DiffusionTransformerLowdimPolicy"):
        dp_import.import_dp_checkpoint(tmp_path / "dpt.ckpt", tmp_path / "b")
    payload["cfg"].policy._target_ = "diffusion_policy.policy.diffusion_unet_lowdim_policy.DiffusionUnetLowdimPolicy"
    payload["state_dicts"]["model"]["model.extra.weight"] = torch.zeros(1)
    torch.save(payload, tmp_path / "extra.ckpt")
    with pytest.raises(UnsupportedCheckpointError, match="model.extra.weight"):
        dp_import.import_dp_checkpoint(tmp_path / "extra.ckpt", tmp_path / "c")
