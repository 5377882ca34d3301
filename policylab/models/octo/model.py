"""Octo-style model: tokenizers + block-wise causal transformer + readouts (`OctoTransformer`).

Sequence for Octo 1.5 with window To=2 (primary 256x256, wrist 128x128, 16 language tokens):
``[task_language(16)] + per t [obs_primary(256), obs_wrist(64), obs_task_language(16),
readout_action(1)]`` = 690 tokens.

Inputs (policylab layout, channels first, images float in [0, 1]):

- ``obs["image_<cam>"]``: ``(B, To, C, H, W)`` for every camera of the config;
- ``obs["proprio"]``: ``(B, To, P)`` when ``cfg.proprio_dim > 0``;
- ``obs["timestep_pad_mask"]``: ``(B, To)`` bool, False for padded timesteps (default all True);
- ``obs["pad_mask_dict"]``: optional ``{"image_<cam>": (B, To)}`` bool, False = missing image;
- ``task["language_tokens"]``: ``(B, L, Dl)`` text-encoder token embeddings, and
  ``task["language_mask"]``: ``(B,)`` bool (per example, as Octo: padding tokens inside an
  instruction are not masked); without ``language_tokens`` the language group is skipped;
- ``task["goal_<cam>"]``: ``(B, C, H, W)`` goal image; missing goals are zero images.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from policylab.models.octo.action_head import OctoDiffusionHeadNet
from policylab.models.octo.config import OctoConfig
from policylab.models.octo.tokenizers import ImageTokenizer, proprio_tokens
from policylab.models.octo.transformer import (
    AttentionRule,
    BlockTransformer,
    TokenGroup,
)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# Flax initialisers Octo uses: normal(0.02) position embeddings, xavier-uniform kernels.
POS_EMBED_INIT_STD = 0.02

TASK_RULES = {"task_*": AttentionRule.CAUSAL}
OBS_RULES = {"task_*": AttentionRule.CAUSAL, "obs_*": AttentionRule.CAUSAL}


def readout_rules(group_name: str) -> dict[str, AttentionRule]:
    """A readout reads the task and observations and its own earlier readouts, nothing else."""
    return {**OBS_RULES, group_name: AttentionRule.CAUSAL}


class OctoModel(nn.Module):
    """The Octo transformer (and optionally its diffusion head network) in PyTorch."""

    def __init__(self, cfg: OctoConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.token_dim
        eps = cfg.group_norm_eps
        self.observation_tokenizers = nn.ModuleDict(
            {cam: ImageTokenizer(cfg.image_channels, cfg.stem, eps) for cam in cfg.cameras}
        )
        self.projections = nn.ModuleDict()
        self.pos_embeddings = nn.ParameterDict()
        if cfg.language_dim:
            self.projections["task_language"] = nn.Linear(cfg.language_dim, d)
            self.pos_embeddings["task_language"] = nn.Parameter(torch.zeros(1, cfg.language_tokens, d))
        for cam in cfg.cameras:
            self.projections[f"obs_{cam}"] = nn.Linear(cfg.stem.out_dim, d)
            self._add_step_embedding(f"obs_{cam}", cfg.camera_tokens(cam))
        if cfg.proprio_dim:
            self.projections["obs_proprio"] = nn.Linear(1, d)
            self._add_step_embedding("obs_proprio", cfg.proprio_dim)
        for name, n_tokens in cfg.readouts.items():
            self._add_step_embedding(f"readout_{name}", n_tokens)
        self.transformer = BlockTransformer(d, cfg.num_layers, cfg.num_heads, cfg.mlp_dim, cfg.layer_norm_eps)
        self.action_head = OctoDiffusionHeadNet(d, cfg.action_head, cfg.layer_norm_eps) if cfg.action_head else None
        self.reset_parameters()

    def _add_step_embedding(self, group: str, n_tokens: int) -> None:
        self.pos_embeddings[group] = nn.Parameter(torch.zeros(1, self.cfg.max_horizon, n_tokens, self.cfg.token_dim))

    def reset_parameters(self) -> None:
        for p in self.pos_embeddings.values():
            nn.init.normal_(p, std=POS_EMBED_INIT_STD)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def _task_groups(self, task: dict, batch: int) -> list[TokenGroup]:
        if not self.cfg.language_dim or task.get("language_tokens") is None:
            return []
        lang = task["language_tokens"]
        expected = (batch, self.cfg.language_tokens, self.cfg.language_dim)
        if tuple(lang.shape) != expected:
            raise ValueError(f"task['language_tokens'] has shape {tuple(lang.shape)}, expected {expected}")
        mask = task.get("language_mask")
        mask = torch.ones(batch, dtype=torch.bool, device=lang.device) if mask is None else mask.bool()
        if mask.dim() == 1:
            mask = mask[:, None].expand(-1, lang.shape[1])
        tokens = self.projections["task_language"](lang) + self.pos_embeddings["task_language"]
        return [TokenGroup("task_language", tokens, mask, TASK_RULES)]

    def _step_group(self, name: str, tokens: torch.Tensor, mask: torch.Tensor, rules) -> TokenGroup:
        horizon = tokens.shape[1]
        tokens = tokens + self.pos_embeddings[name][:, :horizon]
        return TokenGroup(name, tokens, mask[:, :, None].expand(tokens.shape[:3]), rules)

    def _observation_groups(self, obs: dict, task: dict, step_mask: torch.Tensor) -> list[TokenGroup]:
        pad_masks = obs.get("pad_mask_dict") or {}
        groups = []
        for cam, tokenizer in self.observation_tokenizers.items():
            key = f"image_{cam}"
            images = obs[key]
            self._check_image(key, images)
            tokens = self.projections[f"obs_{cam}"](tokenizer(images, task.get(f"goal_{cam}")))
            mask = step_mask & pad_masks[key].bool() if key in pad_masks else step_mask
            groups.append(self._step_group(f"obs_{cam}", tokens, mask, OBS_RULES))
        if self.cfg.proprio_dim:
            tokens = self.projections["obs_proprio"](proprio_tokens(obs["proprio"]))
            groups.append(self._step_group("obs_proprio", tokens, step_mask, OBS_RULES))
        return groups

    def _check_image(self, key: str, images: torch.Tensor) -> None:
        h, w = self.cfg.cameras[key.removeprefix("image_")]
        if images.dim() != 5 or tuple(images.shape[2:]) != (self.cfg.image_channels, h, w):
            raise ValueError(
                f"obs[{key!r}] has shape {tuple(images.shape)}, expected (B, To, {self.cfg.image_channels}, {h}, {w})"
            )

    def _repeated_task_group(self, task_group: TokenGroup, horizon: int) -> TokenGroup:
        # Octo 1.5 quirk: this group's mask is the language mask only, not AND-ed with the
        # timestep padding mask.
        tokens = task_group.tokens[:, None].expand(-1, horizon, -1, -1)
        mask = task_group.mask[:, None].expand(-1, horizon, -1)
        return TokenGroup("obs_task_language", tokens, mask, OBS_RULES)

    def _readout_groups(self, batch: int, horizon: int, ref: torch.Tensor) -> list[TokenGroup]:
        groups = []
        for name, n_tokens in self.cfg.readouts.items():
            group = f"readout_{name}"
            tokens = self.pos_embeddings[group][:, :horizon].expand(batch, -1, -1, -1)
            mask = torch.ones(batch, horizon, n_tokens, dtype=torch.bool, device=ref.device)
            groups.append(TokenGroup(group, tokens, mask, readout_rules(group)))
        return groups

    def token_groups(self, obs: dict, task: dict | None = None) -> tuple[list[TokenGroup], list[TokenGroup]]:
        """Input token groups: ``(prefix groups, timestep groups)`` in sequence order."""
        task = task or {}
        first = obs[f"image_{next(iter(self.cfg.cameras))}"]
        batch, horizon = first.shape[:2]
        if horizon > self.cfg.max_horizon:
            raise ValueError(f"window To={horizon} exceeds max_horizon={self.cfg.max_horizon}")
        step_mask = obs.get("timestep_pad_mask")
        if step_mask is None:
            step_mask = torch.ones(batch, horizon, dtype=torch.bool, device=first.device)
        prefix = self._task_groups(task, batch)
        steps = self._observation_groups(obs, task, step_mask.bool())
        if self.cfg.repeat_task_tokens and prefix:
            steps.append(self._repeated_task_group(prefix[0], horizon))
        steps += self._readout_groups(batch, horizon, first)
        return prefix, steps

    def forward(self, obs: dict, task: dict | None = None) -> dict[str, TokenGroup]:
        """All output groups by name (``task_language``, ``obs_<cam>``, ``readout_<name>``, ...);
        prefix groups have tokens ``(B, n, D)``, timestep groups ``(B, To, n, D)``."""
        prefix, steps = self.token_groups(obs, task)
        return self.transformer(prefix, steps)

    def encode(self, obs: dict, task: dict | None = None, readout: str = "action", return_tokens: bool = False):
        """Readout embedding of the last timestep, mean over its readout tokens: ``(B, D)``.

        With ``return_tokens=True`` returns ``(embedding, outputs)`` where ``outputs`` is what
        `forward` returns.
        """
        outputs = self(obs, task)
        embedding = outputs[f"readout_{readout}"].tokens[:, -1].mean(dim=1)
        return (embedding, outputs) if return_tokens else embedding

    def save_pretrained(self, directory: str | Path) -> None:
        """``config.json`` + ``model.safetensors`` in ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))

    @classmethod
    def from_pretrained(cls, directory: str | Path, **config_changes) -> OctoModel:
        """Build from ``config.json`` and load ``model.safetensors`` strictly.

        ``config_changes`` may only touch fields that own no parameters (e.g. ``action_head=None``
        drops the head and its weights).
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg = OctoConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
        model = cls(cfg.replace(**config_changes) if config_changes else cfg)
        state = load_file(str(directory / WEIGHTS_FILE))
        if model.action_head is None:
            state = {k: v for k, v in state.items() if not k.startswith("action_head.")}
        model.load_state_dict(state, strict=True)
        return model


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def example_inputs(cfg: OctoConfig, batch: int, window: int, generator: torch.Generator | None = None):
    """Random ``(obs, task)`` matching ``cfg``, for tests and benchmarks."""
    obs = {
        f"image_{cam}": torch.rand(batch, window, cfg.image_channels, h, w, generator=generator)
        for cam, (h, w) in cfg.cameras.items()
    }
    if cfg.proprio_dim:
        obs["proprio"] = torch.randn(batch, window, cfg.proprio_dim, generator=generator)
    task = {}
    if cfg.language_dim:
        task["language_tokens"] = torch.randn(batch, cfg.language_tokens, cfg.language_dim, generator=generator)
        task["language_mask"] = torch.ones(batch, dtype=torch.bool)
    return obs, task
