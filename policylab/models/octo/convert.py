"""Convert Octo's released JAX weights into a policylab `OctoModel` directory.

Usage::

    python -m policylab.models.octo.convert <octo checkpoint> <out dir> [--action-head]

Reads
    Octo 1.5 checkpoints (``octo-small-1.5``, ``octo-base-1.5`` from the ``rail-berkeley``
    organisation on the Hugging Face hub, downloaded by the user; nothing is fetched here):

    - an ``.npz`` holding Octo's parameter tree flattened with ``/``-joined paths
      (``octo_transformer/BlockTransformer_0/Transformer_0/encoderblock_0/...``, an optional
      leading ``params/`` is stripped). Export one from any JAX environment that can load Octo,
      see ``docs/octo.md``. Pass ``--octo-config <checkpoint>/config.json`` to read the camera
      order, ``repeat_task_tokens`` and action sizes from Octo's own config.
    - an Octo checkpoint directory as written by ``OctoModel.save_pretrained`` (``config.json``,
      ``example_batch.msgpack``, ``dataset_statistics.json`` and numbered Orbax step directories,
      e.g. ``<step>/default/``). Reading Orbax needs the optional ``orbax-checkpoint`` package
      (and jax); without it the converter stops with an error that says so.

    The December 2023 releases (``octo-small``, ``octo-base``) used an off-by-one attention mask
    (``use_correct_attention=False``) and no repeated task tokens; their config is refused.

Writes
    ``<out dir>/config.json`` (an `OctoConfig`), ``model.safetensors`` (policylab names, loads
    into `OctoModel` with ``strict=True``) and ``conversion.json`` (source, every Octo parameter
    left unused and why).

Every Octo parameter is either converted or listed as unused: the frozen T5-base text encoder
(``task_tokenizers_language/hf_model``; policylab encodes instructions with a separate text
encoder), and the diffusion action head (``heads_action``) unless ``--action-head``. Any other
parameter left over is an error (``--allow-unexpected`` lists it instead). Every array's shape is
checked against the shape the inferred config implies, and the result is loaded strictly.

Layout conventions applied: Dense kernels ``(in, out)`` -> ``Linear.weight = kernel.T``; conv
kernels HWIO -> OIHW; attention q/k/v kernels ``(D, H, Dh)`` -> ``reshape(D, H*Dh).T`` packed
as ``[q; k; v]``, out kernel ``(H, Dh, D)`` -> ``reshape(H*Dh, D).T``; norm ``scale`` ->
``weight``; position embeddings copied. The numerical conventions (GELU tanh, eps 1e-6,
weight standardisation, finite masking) live in the model code.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from policylab.models.octo.action_head import RESNET_EXPANSION
from policylab.models.octo.config import (
    STEM_PATCH,
    ActionHeadConfig,
    OctoConfig,
    StemConfig,
)
from policylab.models.octo.model import OctoModel
from policylab.models.octo.tokenizers import STEM_KERNEL

ROOT = "octo_transformer"
BLOCKS = f"{ROOT}/BlockTransformer_0/Transformer_0"
HEAD = "heads_action/diffusion_model"
STEM = "SmallStem16_0"
# Octo's GroupNorm uses Flax's default of 32 groups; the count is not stored in the weights.
OCTO_NORM_GROUPS = 32
OCTO_CAMERA_ORDER = ("primary", "wrist")
# The released heads predict 4 steps; the weights only store horizon * action_dim, so without
# Octo's config.json this default splits it.
OCTO_ACTION_HORIZON = 4
KNOWN_UNUSED = {
    f"{ROOT}/task_tokenizers_language/hf_model/": "frozen T5-base text encoder; policylab encodes text separately",
    "heads_action/": "diffusion action head (convert it with --action-head)",
}


class ConversionError(ValueError):
    """A parameter is missing, has the wrong shape, or is not understood."""


@dataclass
class Rule:
    """One policylab tensor made from one or more Octo arrays of known shapes."""

    target: str
    sources: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    fn: Callable[..., np.ndarray]


def _copy(x):
    return x


def _dense(src: str, dst: str, d_in: int, d_out: int) -> Iterator[Rule]:
    yield Rule(f"{dst}.weight", (f"{src}/kernel",), ((d_in, d_out),), lambda k: k.T)
    yield Rule(f"{dst}.bias", (f"{src}/bias",), ((d_out,),), _copy)


def _norm(src: str, dst: str, dim: int) -> Iterator[Rule]:
    yield Rule(f"{dst}.weight", (f"{src}/scale",), ((dim,),), _copy)
    yield Rule(f"{dst}.bias", (f"{src}/bias",), ((dim,),), _copy)


def _conv(src: str, dst: str, k: int, c_in: int, c_out: int) -> Iterator[Rule]:
    yield Rule(f"{dst}.weight", (f"{src}/kernel",), ((k, k, c_in, c_out),), lambda w: w.transpose(3, 2, 0, 1))
    yield Rule(f"{dst}.bias", (f"{src}/bias",), ((c_out,),), _copy)


def _attention(src: str, dst: str, d: int, heads: int, head_dim: int) -> Iterator[Rule]:
    qkv = tuple(f"{src}/{name}" for name in ("query", "key", "value"))
    yield Rule(
        f"{dst}.in_proj.weight",
        tuple(f"{p}/kernel" for p in qkv),
        ((d, heads, head_dim),) * 3,
        lambda *ks: np.concatenate([k.reshape(d, heads * head_dim).T for k in ks]),
    )
    yield Rule(
        f"{dst}.in_proj.bias",
        tuple(f"{p}/bias" for p in qkv),
        ((heads, head_dim),) * 3,
        lambda *bs: np.concatenate([b.reshape(heads * head_dim) for b in bs]),
    )
    yield Rule(
        f"{dst}.out_proj.weight",
        (f"{src}/out/kernel",),
        ((heads, head_dim, d),),
        lambda k: k.reshape(heads * head_dim, d).T,
    )
    yield Rule(f"{dst}.out_proj.bias", (f"{src}/out/bias",), ((d,),), _copy)


def _stem_rules(cam: str, cfg: OctoConfig) -> Iterator[Rule]:
    src = f"{ROOT}/observation_tokenizers_{cam}/{STEM}"
    dst = f"observation_tokenizers.{cam}.stem"
    widths = (2 * cfg.image_channels, *cfg.stem.widths)
    for i, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
        yield from _conv(f"{src}/StdConv_{i}", f"{dst}.convs.{i}", STEM_KERNEL, c_in, c_out)
        yield from _norm(f"{src}/GroupNorm_{i}", f"{dst}.norms.{i}", c_out)
    yield from _conv(f"{src}/embedding", f"{dst}.embedding", 1, cfg.stem.widths[-1], cfg.stem.out_dim)


def _transformer_rules(cfg: OctoConfig) -> Iterator[Rule]:
    d = cfg.token_dim
    for layer in range(cfg.num_layers):
        src, dst = f"{BLOCKS}/encoderblock_{layer}", f"transformer.blocks.{layer}"
        yield from _norm(f"{src}/LayerNorm_0", f"{dst}.norm1", d)
        yield from _attention(f"{src}/MultiHeadDotProductAttention_0", f"{dst}.attn", d, cfg.num_heads, cfg.head_dim)
        yield from _norm(f"{src}/LayerNorm_1", f"{dst}.norm2", d)
        yield from _dense(f"{src}/MlpBlock_0/Dense_0", f"{dst}.mlp.0", d, cfg.mlp_dim)
        yield from _dense(f"{src}/MlpBlock_0/Dense_1", f"{dst}.mlp.2", cfg.mlp_dim, d)
    yield from _norm(f"{BLOCKS}/encoder_norm", "transformer.encoder_norm", d)


def _head_rules(cfg: OctoConfig) -> Iterator[Rule]:
    head = cfg.action_head
    size = head.action_dim * head.action_horizon
    yield Rule(
        "action_head.time_features.kernel", (f"{HEAD}/time_preprocess/kernel",), ((head.time_dim // 2, 1),), _copy
    )
    yield from _dense(f"{HEAD}/cond_encoder/Dense_0", "action_head.cond_encoder.0", head.time_dim, 2 * head.time_dim)
    yield from _dense(f"{HEAD}/cond_encoder/Dense_1", "action_head.cond_encoder.2", 2 * head.time_dim, head.time_dim)
    net = f"{HEAD}/reverse_network"
    yield from _dense(f"{net}/Dense_0", "action_head.input", head.time_dim + cfg.token_dim + size, head.hidden_dim)
    for i in range(head.num_blocks):
        src, dst = f"{net}/MLPResNetBlock_{i}", f"action_head.blocks.{i}"
        yield from _norm(f"{src}/LayerNorm_0", f"{dst}.norm", head.hidden_dim)
        wide = RESNET_EXPANSION * head.hidden_dim
        yield from _dense(f"{src}/Dense_0", f"{dst}.fc1", head.hidden_dim, wide)
        yield from _dense(f"{src}/Dense_1", f"{dst}.fc2", wide, head.hidden_dim)
    yield from _dense(f"{net}/Dense_1", "action_head.output", head.hidden_dim, size)


def conversion_rules(cfg: OctoConfig) -> list[Rule]:
    """Every policylab tensor of ``OctoModel(cfg)`` with its Octo source(s) and expected shapes."""
    d, horizon = cfg.token_dim, cfg.max_horizon
    rules: list[Rule] = []
    if cfg.language_dim:
        rules += _dense(f"{ROOT}/task_language_projection", "projections.task_language", cfg.language_dim, d)
        rules.append(
            Rule(
                "pos_embeddings.task_language",
                (f"{ROOT}/task_language_pos_embedding",),
                ((1, cfg.language_tokens, d),),
                _copy,
            )
        )
    step_groups = {f"obs_{cam}": cfg.camera_tokens(cam) for cam in cfg.cameras}
    for cam in cfg.cameras:
        rules += _stem_rules(cam, cfg)
        rules += _dense(f"{ROOT}/obs_{cam}_projection", f"projections.obs_{cam}", cfg.stem.out_dim, d)
    if cfg.proprio_dim:
        rules += _dense(f"{ROOT}/obs_proprio_projection", "projections.obs_proprio", 1, d)
        step_groups["obs_proprio"] = cfg.proprio_dim
    step_groups.update({f"readout_{name}": n for name, n in cfg.readouts.items()})
    for group, n in step_groups.items():
        rules.append(Rule(f"pos_embeddings.{group}", (f"{ROOT}/{group}_pos_embedding",), ((1, horizon, n, d),), _copy))
    rules += _transformer_rules(cfg)
    if cfg.action_head is not None:
        rules += _head_rules(cfg)
    return rules


def convert_params(flat: dict[str, np.ndarray], cfg: OctoConfig) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Apply `conversion_rules`. Returns the policylab state dict and the Octo paths used.

    Raises `ConversionError` naming every missing path and every shape mismatch.
    """
    state, used, problems = {}, set(), []
    for rule in conversion_rules(cfg):
        arrays = []
        for path, shape in zip(rule.sources, rule.shapes):
            if path not in flat:
                problems.append(f"missing Octo parameter {path} (expected shape {shape})")
            elif tuple(flat[path].shape) != shape:
                problems.append(f"Octo parameter {path} has shape {tuple(flat[path].shape)}, expected {shape}")
            else:
                arrays.append(np.asarray(flat[path], dtype=np.float32))
        if len(arrays) == len(rule.sources):
            state[rule.target] = torch.from_numpy(np.ascontiguousarray(rule.fn(*arrays)))
            used.update(rule.sources)
    if problems:
        raise ConversionError("cannot convert Octo parameters:\n  " + "\n  ".join(problems))
    return state, used



def _shape(flat: dict, path: str) -> tuple[int, ...]:
    if path not in flat:
        raise ConversionError(f"missing Octo parameter {path}; is this an Octo checkpoint?")
    return tuple(flat[path].shape)


def _cameras(
    flat: dict, order: list[str] | None, image_sizes: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    prefix = f"{ROOT}/observation_tokenizers_"
    names = sorted({k[len(prefix) :].split("/")[0] for k in flat if k.startswith(prefix)})
    for cam in names:
        encoders = {k.split("/")[2] for k in flat if k.startswith(f"{prefix}{cam}/")}
        if encoders != {STEM}:
            raise ConversionError(f"camera {cam!r} uses encoder(s) {sorted(encoders)}; only {STEM} is supported")
    order = order or [c for c in OCTO_CAMERA_ORDER if c in names] + [c for c in names if c not in OCTO_CAMERA_ORDER]
    if sorted(order) != names:
        raise ConversionError(f"camera order {order} does not match the checkpoint's cameras {names}")
    cameras = {}
    for cam in order:
        n_tokens = _shape(flat, f"{ROOT}/obs_{cam}_pos_embedding")[2]
        side = math.isqrt(n_tokens)
        if cam in image_sizes:
            cameras[cam] = tuple(image_sizes[cam])
        elif side * side == n_tokens:
            cameras[cam] = (side * STEM_PATCH, side * STEM_PATCH)
        else:
            raise ConversionError(
                f"camera {cam!r} has {n_tokens} tokens, not a square image; pass --image-size {cam}=HxW"
            )
    return cameras


def _action_head(flat: dict, octo_model_cfg: dict, token_dim: int) -> ActionHeadConfig:
    kernel = _shape(flat, f"{HEAD}/time_preprocess/kernel")
    hidden = _shape(flat, f"{HEAD}/reverse_network/Dense_0/kernel")[1]
    size = _shape(flat, f"{HEAD}/reverse_network/Dense_1/kernel")[1]
    num_blocks = len({k.split("/")[3] for k in flat if k.startswith(f"{HEAD}/reverse_network/MLPResNetBlock_")})
    kwargs = octo_model_cfg.get("heads", {}).get("action", {}).get("kwargs", {})
    default_horizon = OCTO_ACTION_HORIZON if size % OCTO_ACTION_HORIZON == 0 else 1
    horizon = kwargs.get("action_horizon", default_horizon)
    return ActionHeadConfig(
        action_dim=kwargs.get("action_dim", size // horizon),
        action_horizon=horizon,
        time_dim=2 * kernel[0],
        num_blocks=num_blocks,
        hidden_dim=hidden,
    )


def infer_config(
    flat: dict[str, np.ndarray],
    octo_config: dict | None = None,
    camera_order: list[str] | None = None,
    image_sizes: dict[str, tuple[int, int]] | None = None,
    action_head: bool = False,
) -> OctoConfig:
    """An `OctoConfig` from the parameter shapes (and Octo's ``config.json`` where shapes are silent)."""
    model_cfg = (octo_config or {}).get("model", {})
    if model_cfg.get("use_correct_attention") is False:
        raise ConversionError("this is a pre-1.5 Octo model (use_correct_attention=False); only Octo 1.5 is supported")
    camera_order = camera_order or [k for k in model_cfg.get("observation_tokenizers", {}) if k != "proprio"] or None
    d = _shape(flat, f"{BLOCKS}/encoder_norm/scale")[0]
    _, heads, _ = _shape(flat, f"{BLOCKS}/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel")
    cameras = _cameras(flat, camera_order, image_sizes or {})
    stem_root = f"{ROOT}/observation_tokenizers_{next(iter(cameras))}/{STEM}"
    n_convs = len({k for k in flat if k.startswith(f"{stem_root}/StdConv_") and k.endswith("/kernel")})
    widths = tuple(_shape(flat, f"{stem_root}/StdConv_{i}/kernel")[3] for i in range(n_convs))
    has_language = f"{ROOT}/task_language_projection/kernel" in flat
    readout_prefix = f"{ROOT}/readout_"
    readouts = {
        k[len(readout_prefix) : -len("_pos_embedding")]: flat[k].shape[2]
        for k in flat
        if k.startswith(readout_prefix) and k.endswith("_pos_embedding")
    }
    proprio = f"{ROOT}/obs_proprio_pos_embedding"
    return OctoConfig(
        token_dim=d,
        num_layers=len({k.split("/")[3] for k in flat if k.startswith(f"{BLOCKS}/encoderblock_")}),
        num_heads=heads,
        mlp_dim=_shape(flat, f"{BLOCKS}/encoderblock_0/MlpBlock_0/Dense_0/kernel")[1],
        max_horizon=_shape(flat, f"{ROOT}/readout_action_pos_embedding")[1],
        cameras=cameras,
        image_channels=_shape(flat, f"{stem_root}/StdConv_0/kernel")[2] // 2,
        stem=StemConfig(
            widths=widths, out_dim=_shape(flat, f"{stem_root}/embedding/kernel")[3], norm_groups=OCTO_NORM_GROUPS
        ),
        language_dim=_shape(flat, f"{ROOT}/task_language_projection/kernel")[0] if has_language else 0,
        language_tokens=_shape(flat, f"{ROOT}/task_language_pos_embedding")[1] if has_language else 0,
        repeat_task_tokens=bool(model_cfg.get("repeat_task_tokens", True)),
        proprio_dim=flat[proprio].shape[2] if proprio in flat else 0,
        readouts=readouts,
        action_head=_action_head(flat, model_cfg, d) if action_head else None,
    )



def flatten_tree(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict -> ``{"a/b/c": array}``."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_tree(value, f"{path}/"))
        else:
            out[path] = np.asarray(value)
    return out


def _strip_params_prefix(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k.removeprefix("params/"): v for k, v in flat.items()}


def read_orbax_params(directory: Path) -> dict[str, np.ndarray]:
    """Parameters of the latest numbered step of an Octo checkpoint directory (needs orbax)."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as err:
        raise ImportError(
            "reading an Octo checkpoint directory needs the optional package orbax-checkpoint "
            "(pip install orbax-checkpoint, which brings jax); alternatively export the parameters "
            "to an .npz in a JAX environment (see docs/octo.md) and convert that"
        ) from err
    steps = sorted((p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not steps:
        raise ConversionError(f"no numbered Orbax step directory in {directory}")
    item = steps[-1] / "default" if (steps[-1] / "default").is_dir() else steps[-1]
    return flatten_tree(ocp.PyTreeCheckpointer().restore(str(item.resolve())))


def read_octo_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict | None]:
    """``(flat params, Octo config.json or None)`` from an ``.npz`` or a checkpoint directory."""
    path = Path(path)
    if path.is_dir():
        config_file = path / "config.json"
        octo_config = json.loads(config_file.read_text()) if config_file.exists() else None
        return _strip_params_prefix(read_orbax_params(path)), octo_config
    with np.load(path) as data:
        return _strip_params_prefix({k: data[k] for k in data.files}), None



def split_unused(flat: dict, used: set[str]) -> tuple[dict[str, str], list[str]]:
    """Unused paths: ``({path: reason} for known subtrees, [unexpected paths])``."""
    known, unexpected = {}, []
    for path in sorted(set(flat) - used):
        reason = next((why for prefix, why in KNOWN_UNUSED.items() if path.startswith(prefix)), None)
        if reason is None:
            unexpected.append(path)
        else:
            known[path] = reason
    return known, unexpected


def convert(
    src: str | Path,
    out_dir: str | Path,
    action_head: bool = False,
    octo_config: dict | None = None,
    camera_order: list[str] | None = None,
    image_sizes: dict[str, tuple[int, int]] | None = None,
    allow_unexpected: bool = False,
) -> dict:
    """Convert ``src`` into ``out_dir``; returns the conversion report (also written to JSON)."""
    flat, dir_config = read_octo_checkpoint(src)
    cfg = infer_config(flat, octo_config or dir_config, camera_order, image_sizes, action_head)
    state, used = convert_params(flat, cfg)
    known, unexpected = split_unused(flat, used)
    if unexpected and not allow_unexpected:
        raise ConversionError("Octo parameters policylab does not understand:\n  " + "\n  ".join(unexpected))
    with torch.device("meta"):
        model = OctoModel(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    model.save_pretrained(out_dir)
    report = {
        "source": Path(src).name,
        "converted_octo_params": len(used),
        "policylab_tensors": len(state),
        "unused": known,
        "unexpected_unused": unexpected,
    }
    (Path(out_dir) / "conversion.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _image_size(text: str) -> tuple[str, tuple[int, int]]:
    cam, size = text.split("=")
    h, w = size.lower().split("x")
    return cam, (int(h), int(w))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="Octo parameters: .npz of /-joined paths, or an Octo checkpoint dir")
    parser.add_argument("out_dir", help="where config.json, model.safetensors, conversion.json go")
    parser.add_argument("--action-head", action="store_true", help="also convert the diffusion action head")
    parser.add_argument("--octo-config", help="Octo's config.json (for an .npz input)")
    parser.add_argument("--cameras", help="camera order, comma separated (default: primary,wrist,...)")
    parser.add_argument(
        "--image-size", action="append", default=[], type=_image_size, help="CAM=HxW for non-square cameras"
    )
    parser.add_argument(
        "--allow-unexpected", action="store_true", help="list unknown Octo parameters instead of failing"
    )
    args = parser.parse_args(argv)
    report = convert(
        args.checkpoint,
        args.out_dir,
        action_head=args.action_head,
        octo_config=json.loads(Path(args.octo_config).read_text()) if args.octo_config else None,
        camera_order=args.cameras.split(",") if args.cameras else None,
        image_sizes=dict(args.image_size),
        allow_unexpected=args.allow_unexpected,
    )
    by_reason: dict[str, int] = {}
    for reason in report["unused"].values():
        by_reason[reason] = by_reason.get(reason, 0) + 1
    n_octo, n_torch = report["converted_octo_params"], report["policylab_tensors"]
    print(f"converted {n_octo} Octo arrays into {n_torch} tensors -> {args.out_dir}")
    for reason, n in by_reason.items():
        print(f"unused: {n} arrays ({reason})")
    for path in report["unexpected_unused"]:
        print(f"unused, not understood: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
