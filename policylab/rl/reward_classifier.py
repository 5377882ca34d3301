"""A binary success classifier on camera frames, and the gym wrapper that makes it the env's reward.

On a robot there is no ground-truth reward: as HIL-SERL and ConRFT, a classifier trained on
labelled frames (`policylab.rl.success_frames`, `policylab.robot_apps.success_recording`) says when the
task is done, and the RL workspaces run on its 0/1 reward unchanged.

    frames {key: (B, 3, H, W) float in [0, 1], or (B, D) low-dim} -> RewardClassifier -> logits (B,)

The network is the policies' image encoder (`MultiImageObsEncoder`: a ResNet with GroupNorm per
camera, spatial-softmax keypoints; a pre-trained trunk from a local torchvision-format file,
optionally frozen) and an MLP head; or, with `trunk`, ConRFT's classifier encoder: per camera a
frozen ResNet-v1 trunk (ImageNet ResNet-10 from SERL/ConRFT's file) and the trained spatial-
embedding head (`FrozenTrunkEncoder`, the critic's `critic_trunk=resnet10`), low-dim keys appended. `load_reward_classifier` rebuilds it from a checkpoint of
`workspace=reward_classifier` (its `config.yaml` + `model.safetensors`; no code in the config runs).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from policylab.common import checkpoint as ckpt
from policylab.models.encoders.frozen_resnet import FrozenTrunkEncoder
from policylab.models.encoders.multi_image import MultiImageObsEncoder


class RewardClassifier(nn.Module):
    """`{key: (B, *shape)}` -> success logits `(B,)`.

    Args:
        obs_meta: `{key: {"shape": [...], "type": "rgb" | "low_dim"}}` of the keys it reads.
        rgb_model_name, pretrained_weights, resize_shape, crop_shape, random_crop: as
            `MultiImageObsEncoder` (GroupNorm always; ImageNet normalization with pretrained weights).
        freeze_trunk: keep the ResNet trunks fixed (only the keypoint pools and the head learn).
        hidden_dim, dropout: the head, Linear -> LayerNorm -> ReLU -> Dropout -> Linear(1).
        trunk: "resnet10" / "resnet18": ConRFT's encoder instead (`FrozenTrunkEncoder` per camera on
            the full frame, its trunk frozen and saved with the classifier; the ResNet, resize and
            crop options above do not apply, the head does). None: the trained ResNet above.
        trunk_weights: the frozen trunk's SERL `.pkl` or `.safetensors`; None: random, with a warning.
    """

    def __init__(self, obs_meta: Mapping, rgb_model_name: str = "resnet18", pretrained_weights: str | None = None,
                 freeze_trunk: bool = False, resize_shape: Sequence[int] | None = None,
                 crop_shape: Sequence[int] | None = None, random_crop: bool = True, hidden_dim: int = 256,
                 dropout: float = 0.1, trunk: str | None = None, trunk_weights: str | None = None):
        super().__init__()
        if not any(attr.get("type") == "rgb" for attr in obs_meta.values()):
            raise ValueError(f"a reward classifier needs at least one rgb key, got {dict(obs_meta)}")
        if freeze_trunk and pretrained_weights is None:
            raise ValueError("freeze_trunk needs pretrained_weights (a frozen random trunk learns nothing)")
        self.obs_meta = {key: dict(attr) for key, attr in obs_meta.items()}
        if trunk is not None:
            self.encoder = FrozenTrunkCameras(self.obs_meta, trunk, trunk_weights)
        else:
            self.encoder = MultiImageObsEncoder(
                {"obs": self.obs_meta}, rgb_model_name=rgb_model_name, pretrained_weights=pretrained_weights,
                resize_shape=None if resize_shape is None else tuple(resize_shape),
                crop_shape=None if crop_shape is None else tuple(crop_shape), random_crop=random_crop,
                use_group_norm=True, imagenet_norm=pretrained_weights is not None)
        if freeze_trunk and trunk is None:
            for model in self.encoder.key_model_map.values():
                model.backbone.requires_grad_(False)
        self.head = nn.Sequential(nn.Linear(self.encoder.output_dim(), hidden_dim), nn.LayerNorm(hidden_dim),
                                  nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, 1))

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.encoder({key: obs[key] for key in self.obs_meta})).squeeze(-1)

    @torch.no_grad()
    def probability(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Success probability `(B,)`, in eval mode (center crops, no dropout)."""
        was_training = self.training
        self.eval()
        try:
            return torch.sigmoid(self.forward(obs))
        finally:
            self.train(was_training)


class FrozenTrunkCameras(nn.Module):
    """`{key: (B, *shape)}` -> `(B, D)`: a `FrozenTrunkEncoder` per rgb key (sorted), then the
    low-dim keys flattened (sorted), concatenated (ConRFT's classifier encoder)."""

    def __init__(self, obs_meta: Mapping, trunk: str, trunk_weights: str | None):
        super().__init__()
        self.rgb_keys = sorted(k for k, a in obs_meta.items() if a.get("type") == "rgb")
        self.low_dim_keys = sorted(k for k in obs_meta if k not in self.rgb_keys)
        self.cameras = nn.ModuleDict({key: FrozenTrunkEncoder(obs_meta[key]["shape"], trunk=trunk,
                                                              trunk_weights=trunk_weights)
                                      for key in self.rgb_keys})
        low_dim = sum(int(np.prod(obs_meta[k]["shape"])) for k in self.low_dim_keys)
        self._output_dim = sum(c.output_dim() for c in self.cameras.values()) + low_dim

    def output_dim(self) -> int:
        return self._output_dim

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.cameras[key](obs[key]) for key in self.rgb_keys]
        parts += [obs[key].flatten(1) for key in self.low_dim_keys]
        return torch.cat(parts, dim=-1)


def build_reward_classifier(cfg: Mapping, shape_meta: Mapping) -> RewardClassifier:
    """The classifier a `classifier:` config section describes over the task's `shape_meta`.

    `cfg["obs_keys"]` picks the keys it reads (each must be in `shape_meta.obs`); the other
    fields are `RewardClassifier`'s arguments.
    """
    fields = dict(cfg)
    keys = list(fields.pop("obs_keys"))
    obs = shape_meta["obs"]
    missing = [key for key in keys if key not in obs]
    if missing:
        raise KeyError(f"classifier.obs_keys {missing} are not in the task's shape_meta.obs {sorted(obs)}")
    return RewardClassifier({key: obs[key] for key in keys}, **fields)


def load_reward_classifier(path: str | Path, device: str | torch.device = "cpu") -> RewardClassifier:
    """A trained classifier from a `workspace=reward_classifier` checkpoint directory, in eval mode."""
    from policylab.common.safe_config import resolve_checked

    cfg = ckpt.load_config(path)
    if "classifier" not in cfg:
        raise ckpt.CheckpointError(f"{path} is not a reward-classifier checkpoint: its config has no 'classifier'")
    fields = resolve_checked(cfg.classifier, "classifier")  # data only: nothing in it is built or run
    fields["pretrained_weights"] = None  # the checkpoint holds the trunk; the original file need not exist
    fields["freeze_trunk"] = False
    fields["trunk_weights"] = None
    with warnings.catch_warnings():  # a frozen trunk built at random here gets the checkpoint's weights next
        warnings.filterwarnings("ignore", message="FrozenTrunkEncoder: no trunk_weights")
        model = build_reward_classifier(fields, resolve_checked(cfg.task.shape_meta, "task.shape_meta"))
    ckpt.load_weights(model, Path(path) / ckpt.MODEL)
    return model.to(device).eval()


def binary_metrics(prob: np.ndarray, label: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of `prob >= threshold` against 0/1 `label`, both (N,)."""
    pred, label = np.asarray(prob) >= threshold, np.asarray(label).astype(bool)
    tp, fp, fn = int((pred & label).sum()), int((pred & ~label).sum()), int((~pred & label).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {"accuracy": float((pred == label).mean()) if len(label) else 0.0, "precision": precision,
            "recall": recall, "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "n_positive": int(label.sum()), "n_negative": int((~label).sum())}


def frames_to_tensor(frame: np.ndarray) -> torch.Tensor:
    """One camera frame as the classifier takes it: `(1, 3, H, W)` float in [0, 1].

    Accepts the env's `(3, H, W)` float in [0, 1], a camera's `(H, W, 3)` uint8, or a stack of
    either (`(To, ...)`, e.g. RealEnv's observation window: the last frame is used).
    """
    frame = np.asarray(frame)
    if frame.ndim == 4:
        frame = frame[-1]
    if frame.ndim != 3:
        raise ValueError(f"a camera frame must be (3, H, W) or (H, W, 3), got shape {frame.shape}")
    if frame.dtype == np.uint8:
        if frame.shape[-1] == 3:
            frame = np.moveaxis(frame, -1, 0)
        return torch.from_numpy(np.ascontiguousarray(frame)).float().div_(255).unsqueeze(0)
    if frame.shape[0] != 3:
        raise ValueError(f"a float camera frame must be (3, H, W) in [0, 1], got shape {frame.shape}")
    return torch.as_tensor(frame, dtype=torch.float32).unsqueeze(0)


class ClassifierReward(gym.Wrapper):
    """The env's reward replaced by the classifier's: 1.0 when it says success, else 0.0.

    Success needs `probability >= threshold` and every `conditions` entry: `{obs key: [low, high]}`
    holds for that key's (last) value, bounds scalar or per entry (e.g. `{gripper: [0.2, 0.9]}`: the
    fingers closed on something). With `terminate_on_success` success ends the episode (a robot has no other signal);
    the env's own termination still ends it too. `info` gains `env_reward`, `classifier_prob` and
    `classifier_success`; `info["is_success"]` is the env's when the env reports one (sim: the
    ground truth for the success curve), else the classifier's; an `info["human_success"]` from the
    env (the operator's key on a robot) counts as success too. `drop_obs_keys` are removed from
    observations after classification (cameras only the classifier reads).
    """

    def __init__(self, env: gym.Env, classifier: RewardClassifier | str | Path, threshold: float = 0.5,
                 conditions: Mapping[str, Sequence[float]] | None = None, terminate_on_success: bool = True,
                 drop_obs_keys: Sequence[str] = (), device: str = "cpu"):
        super().__init__(env)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if not isinstance(classifier, nn.Module):
            classifier = load_reward_classifier(classifier, device)
        self.classifier = classifier.to(device).eval()
        self.device = torch.device(device)
        self.threshold = float(threshold)
        self.conditions = {key: (np.asarray(lo, np.float64), np.asarray(hi, np.float64))
                           for key, (lo, hi) in (conditions or {}).items()}
        self.terminate_on_success = terminate_on_success
        self.drop_obs_keys = tuple(drop_obs_keys)
        space = env.observation_space
        needed = set(self.classifier.obs_meta) | set(self.conditions)
        if isinstance(space, gym.spaces.Dict):
            missing = sorted(needed - set(space.spaces))
            if missing:
                raise KeyError(f"the env's observations have no {missing} (it has {sorted(space.spaces)}); "
                               f"render the cameras the classifier reads (e.g. env_kwargs.image_obs: true)")
            self.observation_space = gym.spaces.Dict(
                {k: v for k, v in space.spaces.items() if k not in self.drop_obs_keys})

    def classify(self, obs: Mapping) -> tuple[float, bool]:
        """(probability, success) of one observation."""
        batch = {}
        for key, attr in self.classifier.obs_meta.items():
            if attr.get("type") == "rgb":
                batch[key] = frames_to_tensor(obs[key]).to(self.device)
            else:
                batch[key] = torch.as_tensor(np.asarray(obs[key], np.float32).reshape(-1)[-attr["shape"][0]:],
                                             device=self.device).unsqueeze(0)
        prob = float(self.classifier.probability(batch)[0])
        ok = prob >= self.threshold
        for key, (lo, hi) in self.conditions.items():
            value = np.asarray(obs[key], dtype=np.float64)
            value = value[-1] if value.ndim > 1 else value
            ok = ok and bool(np.all((value >= lo) & (value <= hi)))
        return prob, ok

    def _strip(self, obs):
        if not self.drop_obs_keys or not isinstance(obs, Mapping):
            return obs
        return {k: v for k, v in obs.items() if k not in self.drop_obs_keys}

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self._strip(obs), info

    def step(self, action):
        obs, env_reward, terminated, truncated, info = self.env.step(action)
        prob, success = self.classify(obs)
        success = success or bool(info.get("human_success", False))  # the operator's label (robot: the y key)
        info = {**info, "env_reward": float(env_reward), "classifier_prob": prob, "classifier_success": success}
        info.setdefault("is_success", success)
        terminated = bool(terminated) or (success and self.terminate_on_success)
        return self._strip(obs), float(success), terminated, truncated, info
