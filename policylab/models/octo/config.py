"""Configuration of the Octo-style model: sizes, cameras, task inputs, readouts.

A config is plain data (dataclasses of ints, tuples and dicts) so it round-trips through JSON next
to converted weights and through Hydra. Presets:

- ``octo_small`` / ``octo_base``: the layout of Octo 1.5's released checkpoints (primary camera
  256x256, wrist 128x128, 16 T5-base language tokens of width 768, window up to 10, one action
  readout, diffusion action head for 7-d actions over 4 steps).
- ``tiny``: the same structure at toy widths, for CPU tests.

Cameras and image sizes usually come from the task (``shape_meta``) or from converted weights;
``with_cameras`` replaces them on a preset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# SmallStem16 downsamples by 16 (four stride-2 convs); a camera of H x W yields (H/16)(W/16) tokens.
STEM_PATCH = 16


@dataclass(frozen=True)
class StemConfig:
    """SmallStem16 widths: ``widths`` are the four 3x3 stride-2 convs, ``out_dim`` the 1x1 `embedding`."""

    widths: tuple[int, ...] = (32, 96, 192, 384)
    out_dim: int = 512
    norm_groups: int = 32


@dataclass(frozen=True)
class ActionHeadConfig:
    """Octo's diffusion action head network (`heads_action/diffusion_model`)."""

    action_dim: int = 7
    action_horizon: int = 4
    time_dim: int = 32
    num_blocks: int = 3
    hidden_dim: int = 256


@dataclass(frozen=True)
class OctoConfig:
    """Everything needed to build an `OctoModel`.

    Attributes:
        token_dim: D, width of every token.
        num_layers, num_heads, mlp_dim: transformer sizes (head dim = D / num_heads).
        max_horizon: number of timesteps the per-timestep position embeddings cover; the window
            `To` at run time must be <= this.
        cameras: ordered ``{name: (H, W)}``; each camera gets its own SmallStem16, projection
            and position embedding. Octo's names are ``primary`` and ``wrist``.
        image_channels: channels of one camera image; the stem sees twice as many because the
            goal image of the same camera is stacked on channels (Octo's early fusion).
        stem: SmallStem16 widths.
        language_dim: width of the text encoder's token embeddings (768 for T5-base);
            0 disables the language task tokens.
        language_tokens: number of language tokens (Octo pads/truncates to 16).
        repeat_task_tokens: Octo 1.5 also tiles the task tokens into every timestep as the
            group ``obs_task_language``.
        proprio_dim: dimension of the proprio vector tokenized one token per dimension; 0 = none
            (the released Octo models use none).
        readouts: ``{name: n_tokens}``; Octo has ``{"action": 1}``.
        action_head: diffusion action head network, or None (an encoder does not need it).
        layer_norm_eps, group_norm_eps: 1e-6 in Flax (PyTorch defaults are 1e-5).
    """

    token_dim: int = 384
    num_layers: int = 12
    num_heads: int = 6
    mlp_dim: int = 1536
    max_horizon: int = 10
    cameras: dict[str, tuple[int, int]] = field(default_factory=lambda: {"primary": (256, 256), "wrist": (128, 128)})
    image_channels: int = 3
    stem: StemConfig = field(default_factory=StemConfig)
    language_dim: int = 768
    language_tokens: int = 16
    repeat_task_tokens: bool = True
    proprio_dim: int = 0
    readouts: dict[str, int] = field(default_factory=lambda: {"action": 1})
    action_head: ActionHeadConfig | None = field(default_factory=ActionHeadConfig)
    layer_norm_eps: float = 1e-6
    group_norm_eps: float = 1e-6

    def __post_init__(self):
        if self.token_dim % self.num_heads:
            raise ValueError(f"token_dim {self.token_dim} is not divisible by num_heads {self.num_heads}")
        for name, (h, w) in self.cameras.items():
            if h % STEM_PATCH or w % STEM_PATCH:
                raise ValueError(f"camera {name!r}: image size {h}x{w} is not a multiple of {STEM_PATCH}")
        for width in self.stem.widths:
            if width % self.stem.norm_groups:
                raise ValueError(f"stem width {width} is not divisible by norm_groups {self.stem.norm_groups}")

    @property
    def head_dim(self) -> int:
        return self.token_dim // self.num_heads

    def camera_tokens(self, name: str) -> int:
        h, w = self.cameras[name]
        return (h // STEM_PATCH) * (w // STEM_PATCH)

    def with_cameras(self, cameras: dict[str, tuple[int, int]]) -> OctoConfig:
        return dataclasses.replace(self, cameras={k: tuple(v) for k, v in cameras.items()})

    def replace(self, **changes) -> OctoConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["cameras"] = {k: list(v) for k, v in self.cameras.items()}
        out["stem"]["widths"] = list(self.stem.widths)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> OctoConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown OctoConfig keys: {sorted(unknown)}")
        data = dict(data)
        if "cameras" in data:
            data["cameras"] = {k: tuple(v) for k, v in data["cameras"].items()}
        if "stem" in data:
            stem = dict(data["stem"])
            stem["widths"] = tuple(stem.get("widths", StemConfig.widths))
            data["stem"] = StemConfig(**stem)
        if data.get("action_head") is not None:
            data["action_head"] = ActionHeadConfig(**data["action_head"])
        return cls(**data)


PRESETS: dict[str, OctoConfig] = {
    "octo_small": OctoConfig(),
    "octo_base": OctoConfig(token_dim=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "tiny": OctoConfig(
        token_dim=32,
        num_layers=2,
        num_heads=2,
        mlp_dim=64,
        max_horizon=4,
        cameras={"primary": (64, 64), "wrist": (32, 32)},
        stem=StemConfig(widths=(8, 8, 16, 16), out_dim=32, norm_groups=4),
        language_dim=32,
        language_tokens=4,
        action_head=ActionHeadConfig(time_dim=8, num_blocks=1, hidden_dim=32),
    ),
}


def get_config(name: str, **changes) -> OctoConfig:
    """A preset by name (``octo_small``, ``octo_base``, ``tiny``), with optional field changes."""
    if name not in PRESETS:
        raise KeyError(f"unknown Octo preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name].replace(**changes) if changes else PRESETS[name]
