"""A tiny real policy module with the policylab policy interface, for eval tests without training.

It is deterministic: every predicted action is the newest end-effector pose moved `step` m
further along +x per step of the horizon, so tests can predict where the robot must go.
"""

from __future__ import annotations

import time

import torch
from torch import nn

SHAPE_META = {"obs": {"camera_0": {"shape": [3, 96, 128], "type": "rgb"},
                      "robot_eef_pose": {"shape": [6], "type": "low_dim"}},
              "action": {"shape": [6]}}


class StandInPolicy(nn.Module):
    """predict_action({camera_0: (B, To, 3, H, W), robot_eef_pose: (B, To, 6)}) -> action (B, Ta, 6)."""

    def __init__(self, n_obs_steps: int = 2, n_action_steps: int = 4, horizon: int = 8, step: float = 0.01,
                 delay: float = 0.0, shape_meta=None, path=None, device: str = "cpu"):
        super().__init__()
        self.shape_meta = shape_meta or SHAPE_META
        self.n_obs_steps, self.n_action_steps, self.horizon = n_obs_steps, n_action_steps, horizon
        self.delay = delay
        self.register_buffer("offsets", torch.zeros(horizon, 6))
        self.offsets[:, 0] = step * torch.arange(1, horizon + 1)
        self.calls = 0

    @property
    def device(self) -> torch.device:
        return self.offsets.device

    def predict_action(self, obs: dict) -> dict:
        for key, attr in self.shape_meta["obs"].items():
            want = (self.n_obs_steps, *attr["shape"])
            if tuple(obs[key].shape[1:]) != want:
                raise ValueError(f"obs[{key}] has shape {tuple(obs[key].shape)}, expected (B, *{want})")
        if self.delay:
            time.sleep(self.delay)  # simulates slow inference
        self.calls += 1
        pose = obs["robot_eef_pose"][:, -1]
        action_pred = pose[:, None, :] + self.offsets[None]
        start = self.n_obs_steps - 1
        return {"action": action_pred[:, start:start + self.n_action_steps], "action_pred": action_pred}
