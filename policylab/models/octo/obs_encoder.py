"""Octo as the observation encoder of a policylab policy (diffusion, consistency, ConRFT actor).

Takes the policy's observation window ``{key: (B, To, *shape)}`` (``consumes_time_window``), feeds
the rgb keys to Octo's cameras, and returns the action readout embedding of the last timestep,
optionally followed by the low-dim keys. Config example (``policy.obs_encoder``; the policy
supplies ``shape_meta``)::

    _target_: policylab.models.octo.obs_encoder.OctoObsEncoder
    _partial_: true
    size: octo_small          # or tiny / octo_base
    weights: null             # or a directory written by policylab.models.octo.convert
    frozen: false
    n_obs_steps: ${n_obs_steps}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from policylab.common.shape_meta import ShapeMeta
from policylab.models.octo.cache import EmbeddingCache
from policylab.models.octo.config import OctoConfig, get_config
from policylab.models.octo.model import CONFIG_FILE, OctoModel
from policylab.models.octo.text import get_text_encoder

DEFAULT_CAMERA_NAMES = ("primary", "wrist")
LOW_DIM_MODES = ("concat", "tokens", "ignore")


def default_camera_keys(rgb_keys: list[str]) -> dict[str, str]:
    """Octo camera name -> obs key: rgb keys in shape_meta order become primary, wrist, camera2, ..."""
    names = list(DEFAULT_CAMERA_NAMES) + [f"camera{i}" for i in range(len(DEFAULT_CAMERA_NAMES), len(rgb_keys))]
    return dict(zip(names, rgb_keys))


class OctoObsEncoder(nn.Module):
    """``forward(obs {key: (B, To, *shape)}, index=None) -> (B, output_dim())``.

    Args:
        shape_meta: Diffusion Policy style ``{"obs": {key: {"shape": [...], "type": "rgb"|"low_dim"}}}``;
            rgb shapes are ``(C, H, W)``.
        size: preset for a fresh model (``tiny``, ``octo_small``, ``octo_base``). With ``weights``
            the model comes from the checkpoint and ``size``, unless None, must agree with it.
        weights: directory of a converted checkpoint (`convert`); the model comes from its config.
        frozen: no gradients, always eval mode; required for ``cache_embeddings``.
        n_obs_steps: To, the window the policy passes; must be <= the model's ``max_horizon``.
        camera_keys: ``{octo camera: obs key}``; default maps rgb keys in order to primary, wrist, ...
            Checkpoint cameras without a key get zero images masked out (Octo's ``pad_mask_dict``).
        image_size: square size every camera is resized to for a fresh model (default: the
            shape_meta size, which must be a multiple of 16). With ``weights``, images are resized
            to the checkpoint's sizes.
        input_image_range: value range of incoming images, mapped to Octo's [0, 1] input
            (use ``(-1, 1)`` if the policy normalizes images before encoding).
        instruction: fixed language instruction for every sample, or None for no language tokens.
        text_encoder: ``minilm`` (packaged, offline; fresh models only) or ``t5`` (with ``t5_dir``;
            needed for released Octo weights).
        low_dim: ``concat`` appends the low-dim keys of all To steps to the embedding, ``tokens``
            feeds them to Octo as proprio tokens (fresh models only), ``ignore`` drops them.
        cache_embeddings: with ``frozen``, cache embeddings by the ``index`` passed to `forward`.
        readout: which readout's embedding to return.
    """

    consumes_time_window = True

    def __init__(
        self,
        shape_meta: ShapeMeta | Mapping,
        size: str | None = "tiny",
        weights: str | None = None,
        frozen: bool = False,
        n_obs_steps: int = 2,
        camera_keys: dict[str, str] | None = None,
        image_size: int | None = None,
        input_image_range: tuple[float, float] = (0.0, 1.0),
        instruction: str | None = None,
        text_encoder: str = "minilm",
        t5_dir: str | None = None,
        low_dim: str = "concat",
        cache_embeddings: bool = False,
        readout: str = "action",
    ):
        super().__init__()
        if low_dim not in LOW_DIM_MODES:
            raise ValueError(f"low_dim must be one of {LOW_DIM_MODES}, got {low_dim!r}")
        if cache_embeddings and not frozen:
            raise ValueError("cache_embeddings needs frozen=True: a trainable encoder's embeddings change")
        shape_meta = ShapeMeta.parse(shape_meta)
        obs_meta = shape_meta.obs
        rgb_keys = shape_meta.rgb_keys
        if not rgb_keys:
            raise ValueError("OctoObsEncoder needs at least one rgb observation key in shape_meta")
        self.low_dim_keys = shape_meta.low_dim_keys
        low_dim_size = sum(int(torch.Size(obs_meta[k].shape).numel()) for k in self.low_dim_keys)
        self.camera_keys = camera_keys or default_camera_keys(rgb_keys)
        self.low_dim_mode = low_dim if self.low_dim_keys else "ignore"
        self.n_obs_steps = n_obs_steps
        self.input_image_range = tuple(input_image_range)
        self.readout = readout
        self.frozen = frozen

        language = get_text_encoder(text_encoder, t5_dir) if instruction is not None else None
        cfg = self._model_config(obs_meta, size, weights, image_size, language, low_dim_size)
        if n_obs_steps > cfg.max_horizon:
            raise ValueError(f"n_obs_steps={n_obs_steps} exceeds the model's max_horizon={cfg.max_horizon}")
        self.model = OctoModel.from_pretrained(weights, action_head=None) if weights else OctoModel(cfg)
        self.cfg = self.model.cfg
        self._register_language(language, instruction)
        self.cache = EmbeddingCache(self.cfg.token_dim) if cache_embeddings else None
        self._low_dim_out = n_obs_steps * low_dim_size if self.low_dim_mode == "concat" else 0
        if frozen:
            self.model.requires_grad_(False)
            self.model.eval()

    def _model_config(self, obs_meta, size, weights, image_size, language, low_dim_size) -> OctoConfig:
        if weights:
            cfg = OctoConfig.from_dict(_read_json(weights))
            preset = get_config(size) if size else cfg
            if (cfg.token_dim, cfg.num_layers) != (preset.token_dim, preset.num_layers):
                raise ValueError(
                    f"weights in {weights} are not an {size!r} model (D={cfg.token_dim}, layers={cfg.num_layers})"
                )
            self._check_weights_compat(cfg, language, low_dim_size)
            return cfg
        cameras = {}
        for cam, key in self.camera_keys.items():
            _, h, w = obs_meta[key].shape
            cameras[cam] = (image_size, image_size) if image_size else (h, w)
        return get_config(size or "tiny").replace(
            cameras=cameras,
            image_channels=obs_meta[next(iter(self.camera_keys.values()))].shape[0],
            language_dim=language.dim if language else 0,
            language_tokens=language.max_tokens if language else 0,
            proprio_dim=low_dim_size if self.low_dim_mode == "tokens" else 0,
            action_head=None,
        )

    def _check_weights_compat(self, cfg: OctoConfig, language, low_dim_size: int) -> None:
        unknown = set(self.camera_keys) - set(cfg.cameras)
        if unknown:
            raise ValueError(f"cameras {sorted(unknown)} are not in the checkpoint (it has {list(cfg.cameras)})")
        if self.low_dim_mode == "tokens" and cfg.proprio_dim != low_dim_size:
            raise ValueError(
                f"low_dim='tokens' needs a checkpoint with a {low_dim_size}-d proprio tokenizer "
                f"(it has {cfg.proprio_dim}); use 'concat'"
            )
        if language is not None and not cfg.language_dim:
            raise ValueError("an instruction was given but the checkpoint has no language tokenizer")
        if language is not None and language.dim != cfg.language_dim:
            raise ValueError(
                f"the checkpoint expects {cfg.language_dim}-d language tokens but the text encoder gives "
                f"{language.dim}-d; released Octo weights need text_encoder='t5' with a local T5-base (t5_dir)"
            )

    def _register_language(self, language, instruction: str | None) -> None:
        # Non-persistent: recomputed from the instruction at construction, not stored in checkpoints.
        if language is None or not self.cfg.language_dim:
            self.language_tokens = None
            return
        tokens, _ = language([instruction])
        self.register_buffer("language_tokens", tokens, persistent=False)

    def output_dim(self) -> int:
        return self.cfg.token_dim + self._low_dim_out

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def _images(self, obs: dict, batch: int, window: int, ref: torch.Tensor):
        lo, hi = self.input_image_range
        images, pad_masks = {}, {}
        for cam, (h, w) in self.cfg.cameras.items():
            key = self.camera_keys.get(cam)
            if key is None:
                images[f"image_{cam}"] = ref.new_zeros(batch, window, self.cfg.image_channels, h, w)
                pad_masks[f"image_{cam}"] = torch.zeros(batch, window, dtype=torch.bool, device=ref.device)
                continue
            x = (obs[key] - lo) / (hi - lo)
            if tuple(x.shape[-2:]) != (h, w):
                x = F.interpolate(x.flatten(0, 1), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
                x = x.unflatten(0, (batch, window))
            images[f"image_{cam}"] = x
        return images, pad_masks

    def _octo_inputs(self, obs: dict) -> tuple[dict, dict]:
        ref = obs[next(iter(self.camera_keys.values()))]
        batch, window = ref.shape[:2]
        images, pad_masks = self._images(obs, batch, window, ref)
        octo_obs = {**images, "pad_mask_dict": pad_masks}
        if self.low_dim_mode == "tokens":
            octo_obs["proprio"] = torch.cat([obs[k].flatten(2) for k in self.low_dim_keys], dim=-1)
        task = {}
        if self.language_tokens is not None:
            task["language_tokens"] = self.language_tokens.expand(batch, -1, -1)
            task["language_mask"] = torch.ones(batch, dtype=torch.bool, device=ref.device)
        return octo_obs, task

    def _embed(self, obs: dict) -> torch.Tensor:
        octo_obs, task = self._octo_inputs(obs)
        if self.frozen:
            with torch.no_grad():
                return self.model.encode(octo_obs, task, readout=self.readout)
        return self.model.encode(octo_obs, task, readout=self.readout)

    def _embed_cached(self, obs: dict, index: torch.Tensor) -> torch.Tensor:
        device = obs[next(iter(self.camera_keys.values()))].device
        cached, hit = self.cache.lookup(index)
        out = cached.to(device)
        miss = (~hit).nonzero().squeeze(1).to(device)
        if len(miss):
            fresh = self._embed({k: v[miss] for k, v in obs.items() if isinstance(v, torch.Tensor)})
            self.cache.store(index.to(device)[miss], fresh)
            out[miss] = fresh.to(out.dtype)
        return out

    def forward(self, obs: dict, index: torch.Tensor | None = None) -> torch.Tensor:
        """obs ``{key: (B, To, *shape)}``, index ``(B,)`` dataset indices (cache key) -> ``(B, output_dim())``."""
        window = obs[next(iter(self.camera_keys.values()))].shape[1]
        if window != self.n_obs_steps:
            raise ValueError(f"expected a window of To={self.n_obs_steps} observations, got {window}")
        if self.cache is not None and index is not None:
            embedding = self._embed_cached(obs, index)
        else:
            embedding = self._embed(obs)
        if self.low_dim_mode != "concat":
            return embedding
        low_dim = [obs[k].flatten(1) for k in self.low_dim_keys]
        return torch.cat([embedding, *low_dim], dim=-1)


def _read_json(directory: str) -> dict:
    return json.loads((Path(directory) / CONFIG_FILE).read_text())
