"""Import Diffusion Policy's own `.ckpt` files as policylab checkpoints, without running their code.

    python -m policylab.policies.dp_import <dp.ckpt> <out checkpoint dir> [--task pusht_lowdim|pusht_image]

(A converter of existing files, so `--flags`, not key=value: the rule is in policylab/common/overrides.py.)

A DP checkpoint is its whole workspace, written with `torch.save(payload, pickle_module=dill)`:

    {"cfg": OmegaConf DictConfig (resolved),
     "state_dicts": {"model": policy state_dict, "ema_model": same (with use_ema), "optimizer": ...},
     "pickles": {"global_step": dill bytes, "epoch": dill bytes, "_output_dir": dill bytes}}

Unpickling it normally runs whatever the file names. Here a restricted Unpickler resolves only an
allowlist of globals: torch's tensor-rebuild functions and storages, numpy arrays, scalars and
dtypes, omegaconf's containers and nodes, `collections.OrderedDict`/`defaultdict`, `typing.Any`
and plain builtin types (dill's `_load_type` only for those). Any other global (`os.system`,
`builtins.eval`, a class of DP's) stops the load with `DisallowedGlobalError` naming it. The DP
config is only read as plain values; nothing in it is instantiated or interpolated.

Supported policies (`cfg.policy._target_`), mapped onto a policylab `DiffusionPolicy`:
- `DiffusionUnetLowdimPolicy` with global conditioning (DP's state PushT config):
  `model.*` (ConditionalUnet1D, same names) as is; DP's single `obs` vector (PushT: 9 keypoints
  x 2, then agent x, y) is split into policylab's keys, in the normalizer and in the columns of
  every FiLM layer that reads the observation (policylab orders low-dim keys by name).
- `DiffusionUnetHybridImagePolicy` (DP's image PushT config): `model.*` as is; robomimic's
  `obs_encoder.obs_nets.<camera>` (ResNet18Conv `nets.i` -> torchvision names, SpatialSoftmax
  `nets`/`temperature`, the Linear `nets.3`) onto `obs_encoder.key_model_map.<camera>`, with
  `feature_activation=relu` for robomimic's ReLU after each camera.
Not mapped (and why): the optimizer state (policylab resumes only its own runs), DP's empty
`_dummy_variable`s and `mask_generator`, robomimic's `pos_x`/`pos_y` buffers (policylab computes
the same grid), the duplicate `obs_nets.<camera>.nets.0/1` aliases of `backbone`/`pool`, and the
image normalizer (policylab maps [0, 1] to [-1, 1] inside the encoder, as DP's did). Inpainting
(`obs_as_global_cond: false`), local conditioning, DP-T and the torchvision-ResNet image policy
raise a clear error. `eval_fixed_crop: false` cannot be reproduced (robomimic crops at random in
eval): the import center-crops and says so in `dp_import.json`.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import json
import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from policylab.common.checkpoint import save_checkpoint
from policylab.common.config import CONFIG_DIR, compose
from policylab.data.normalizer import get_image_range_normalizer


class DisallowedGlobalError(pickle.UnpicklingError):
    """The pickle names a global outside the allowlist; nothing it names was imported or called."""


_ALLOWED = {
    "builtins": {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes",
                 "bytearray", "bool", "slice", "range", "object"},
    "collections": {"OrderedDict", "defaultdict"},
    "copyreg": {"_reconstructor"},  # protocol < 2 objects; cls and base are themselves allowlisted
    "_codecs": {"encode"},          # how protocol 2 writes bytes
    "typing": {"Any"},
    "torch": {"Size", "Tensor", "device", "float16", "bfloat16", "float32", "float64", "int8", "int16", "int32",
              "int64", "uint8", "bool", "complex64", "complex128"},
    "torch._utils": {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                     "_rebuild_parameter_with_state"},
    "torch._tensor": {"_rebuild_from_type_v2"},
    "torch.nn.parameter": {"Parameter"},
    "numpy": {"ndarray", "dtype"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},   # numpy 1.x (DP's pin)
    "numpy._core.multiarray": {"_reconstruct", "scalar"},  # numpy 2.x
    "omegaconf.dictconfig": {"DictConfig"},
    "omegaconf.listconfig": {"ListConfig"},
    "omegaconf.base": {"ContainerMetadata", "Metadata"},
    "omegaconf.nodes": {"AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode"},
}
# dill writes builtin types (e.g. a DictConfig's `object_type=dict`) as `_load_type("dict")`;
# the real function also returns CodeType, FunctionType, ...: only plain data types pass here.
_DILL_TYPES = {"dict": dict, "list": list, "tuple": tuple, "set": set, "frozenset": frozenset, "int": int,
               "float": float, "complex": complex, "str": str, "bytes": bytes, "bytearray": bytearray,
               "bool": bool, "object": object, "NoneType": type(None)}


def _dill_load_type(name: str) -> type:
    if name not in _DILL_TYPES:
        raise DisallowedGlobalError(f"refusing to unpickle type {name!r} through dill._dill._load_type; "
                                    f"only plain data types are allowed: {sorted(_DILL_TYPES)}")
    return _DILL_TYPES[name]


_REPLACED = {("dill._dill", "_load_type"): _dill_load_type, ("dill.dill", "_load_type"): _dill_load_type}


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only allowlisted globals (see the module docstring)."""

    def find_class(self, module: str, name: str):
        # Protocol 2 pickles use Python 2 names (`__builtin__.long`): map them first, as pickle does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _REPLACED:
            return _REPLACED[(module, name)]
        if name not in _ALLOWED.get(module, ()):
            raise DisallowedGlobalError(
                f"refusing to unpickle global '{module}.{name}': a checkpoint may only hold tensors, numpy "
                f"arrays, omegaconf configs and builtin containers (this file may run code when loaded "
                f"normally; do not load it with torch.load(weights_only=False))")
        return super().find_class(module, name)


class _RestrictedPickleModule:
    """What `torch.load(pickle_module=...)` needs: an `Unpickler` class and `load`."""

    Unpickler = RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file, **kwargs):
        return RestrictedUnpickler(file, **kwargs).load()


def restricted_loads(data: bytes):
    """Unpickle bytes (e.g. DP's nested `pickles` entries) with the same allowlist."""
    import io

    return RestrictedUnpickler(io.BytesIO(data)).load()


def load_dp_checkpoint(path: str | Path) -> dict:
    """The payload of a DP `.ckpt`, unpickled with the allowlist; `pickles` entries decoded too."""
    # weights_only=False because the allowlist is ours: torch's weights-only unpickler has no
    # omegaconf classes, and allowlisting them there would be global state.
    payload = torch.load(path, map_location="cpu", pickle_module=_RestrictedPickleModule, weights_only=False)
    if not isinstance(payload, dict) or "cfg" not in payload or "state_dicts" not in payload:
        raise ValueError(f"{path} is not a Diffusion Policy workspace checkpoint (no 'cfg' / 'state_dicts')")
    payload["pickles"] = {k: restricted_loads(v) if isinstance(v, bytes) else v
                          for k, v in payload.get("pickles", {}).items()}
    return payload


@dataclass(frozen=True)
class TaskLayout:
    """How DP lays out a task's observations, against policylab's task config of the same data.

    `lowdim_obs`: DP's low-dim policies see one `obs` vector: (policylab key, width) segments in
    DP's order. Image policies keep per-key observations, named as in policylab.
    """

    policylab_task: str
    lowdim_obs: tuple[tuple[str, int], ...] | None = None


TASKS = {
    # PushTLowdimDataset: obs = concat(keypoint (9, 2) flattened, state[:, :2] (agent x, y)).
    "pusht_lowdim": TaskLayout("pusht_lowdim", lowdim_obs=(("keypoint", 18), ("agent_pos", 2))),
    "pusht_image": TaskLayout("pusht_image"),
}
LOWDIM_POLICY = "DiffusionUnetLowdimPolicy"
HYBRID_POLICY = "DiffusionUnetHybridImagePolicy"


class UnsupportedCheckpointError(ValueError):
    """A DP checkpoint this importer cannot map faithfully."""


def _plain(cfg) -> dict:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=False)
    return dict(cfg)


def _value(cfg: Mapping, dotted: str):
    """A plain value of DP's config; an unresolved `${...}` is refused, never evaluated."""
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise UnsupportedCheckpointError(f"DP config has no '{dotted}'")
        node = node[part]
    if isinstance(node, str) and "${" in node:
        raise UnsupportedCheckpointError(f"DP config value {dotted}={node!r} is an unresolved interpolation")
    return node


def _policy_kind(dp_cfg: Mapping) -> str:
    target = str(_value(dp_cfg, "policy._target_"))
    kind = target.rsplit(".", 1)[-1]
    if kind not in (LOWDIM_POLICY, HYBRID_POLICY):
        raise UnsupportedCheckpointError(f"policy {target} is not supported; supported: {LOWDIM_POLICY}, {HYBRID_POLICY}")
    return kind


def policylab_overrides(dp_cfg: Mapping, task: str) -> list[str]:
    """Hydra overrides that make policylab's config describe the same network as DP's config."""
    kind = _policy_kind(dp_cfg)
    policy = dp_cfg["policy"]
    if not _value(dp_cfg, "policy.obs_as_global_cond"):
        raise UnsupportedCheckpointError("obs_as_global_cond=false (inpainting) has no policylab counterpart")
    if kind == LOWDIM_POLICY and (policy.get("obs_as_local_cond") or policy.get("pred_action_steps_only")):
        raise UnsupportedCheckpointError("obs_as_local_cond / pred_action_steps_only are not supported")
    net = "policy.model" if kind == LOWDIM_POLICY else "policy"
    sched = "policy.noise_scheduler"
    scheduler_kind = str(_value(dp_cfg, f"{sched}._target_")).rsplit(".", 1)[-1]
    overrides = [
        f"task={TASKS[task].policylab_task}",
        # The policy's own values: its n_action_steps includes DP's latency steps.
        *(f"{key}={int(_value(dp_cfg, f'policy.{key}'))}" for key in ("horizon", "n_obs_steps", "n_action_steps")),
        f"policy.model.down_dims=[{','.join(str(int(d)) for d in _value(dp_cfg, f'{net}.down_dims'))}]",
        f"policy.model.kernel_size={int(_value(dp_cfg, f'{net}.kernel_size'))}",
        f"policy.model.n_groups={int(_value(dp_cfg, f'{net}.n_groups'))}",
        f"policy.model.diffusion_step_embed_dim={int(_value(dp_cfg, f'{net}.diffusion_step_embed_dim'))}",
        f"policy.model.cond_predict_scale={bool(_value(dp_cfg, f'{net}.cond_predict_scale'))}",
        f"policy.noise_scheduler.num_train_timesteps={int(_value(dp_cfg, f'{sched}.num_train_timesteps'))}",
        f"policy.noise_scheduler.beta_start={float(_value(dp_cfg, f'{sched}.beta_start'))}",
        f"policy.noise_scheduler.beta_end={float(_value(dp_cfg, f'{sched}.beta_end'))}",
        f"policy.noise_scheduler.beta_schedule={_value(dp_cfg, f'{sched}.beta_schedule')}",
        f"policy.noise_scheduler.clip_sample={bool(_value(dp_cfg, f'{sched}.clip_sample'))}",
        f"policy.noise_scheduler.prediction_type={_value(dp_cfg, f'{sched}.prediction_type')}",
        # DP trains and samples with one scheduler; DDIM configs train with DDIM's (identical) betas.
        f"policy.inference_scheduler={'ddim' if scheduler_kind == 'DDIMScheduler' else 'ddpm'}",
        f"policy.num_inference_steps={int(_value(dp_cfg, 'policy.num_inference_steps'))}",
        f"training.use_ema={bool(_value(dp_cfg, 'training.use_ema'))}",
    ]
    if scheduler_kind == "DDPMScheduler":
        overrides.append(f"policy.noise_scheduler.variance_type={_value(dp_cfg, f'{sched}.variance_type')}")
    if kind == HYBRID_POLICY:
        crop = _value(dp_cfg, "policy.crop_shape")
        overrides += [
            f"policy.obs_encoder.crop_shape=[{int(crop[0])},{int(crop[1])}]" if crop else "policy.obs_encoder.crop_shape=null",
            f"policy.obs_encoder.use_group_norm={bool(_value(dp_cfg, 'policy.obs_encoder_group_norm'))}",
            "policy.obs_encoder.rgb_model_name=resnet18", "policy.obs_encoder.pool=spatial_softmax",
            "policy.obs_encoder.share_rgb_model=false", "policy.obs_encoder.imagenet_norm=false",
            "policy.obs_encoder.pretrained_weights=null", "policy.obs_encoder.feature_activation=relu",
        ]
    return overrides


def compose_policylab_config(overrides: list[str], config_dir: str | Path = CONFIG_DIR) -> DictConfig:
    return compose(overrides, config_dir=config_dir, resolve=True)


def feature_permutation(dp_layout: list[tuple[str, int]], policylab_layout: list[tuple[str, int]]) -> torch.Tensor:
    """`perm` with policylab feature j = DP feature perm[j], from per-key (name, width) segments."""
    starts, offset = {}, 0
    for name, width in dp_layout:
        starts[name], offset = (offset, width), offset + width
    perm = []
    for name, width in policylab_layout:
        if name not in starts or starts[name][1] != width:
            raise UnsupportedCheckpointError(f"observation {name!r} (width {width}) is not in DP's layout {dp_layout}")
        perm += range(starts[name][0], starts[name][0] + width)
    if len(perm) != offset:
        raise UnsupportedCheckpointError(f"DP's observation layout {dp_layout} != policylab's {policylab_layout}")
    return torch.tensor(perm)


def encoder_layout(policy) -> list[tuple[str, int]]:
    """policylab's per-step observation feature: cameras (sorted), then low-dim keys (sorted)."""
    enc = policy.obs_encoder
    layout = [(k, enc.key_model_map["rgb" if enc.share_rgb_model else k].output_dim) for k in enc.rgb_keys]
    return layout + [(k, math.prod(enc.key_shape_map[k])) for k in enc.low_dim_keys]


def permute_cond_columns(model_state: dict, perm: torch.Tensor, dsed: int, n_obs_steps: int) -> dict:
    """Reorder the observation part of every FiLM input, (B, dsed + To*Do): step-major, as in both."""
    width = len(perm)
    index = torch.cat([torch.arange(dsed)] + [dsed + t * width + perm for t in range(n_obs_steps)])
    out = dict(model_state)
    for key, value in model_state.items():
        if key.endswith("cond_encoder.1.weight"):
            if value.shape[1] != len(index):
                raise UnsupportedCheckpointError(f"{key} reads {value.shape[1]} features, expected {len(index)}")
            out[key] = value[:, index]
    return out


_STATS = ("min", "max", "mean", "std")


def _normalizer_field(dp_state: dict, key: str, cols=slice(None)) -> dict:
    prefix = f"normalizer.params_dict.{key}."
    if prefix + "scale" not in dp_state:
        raise UnsupportedCheckpointError(f"DP checkpoint has no normalizer for {key!r}")
    field = {n: dp_state[prefix + n].reshape(-1)[cols] for n in ("scale", "offset")}
    field |= {f"input_{s}": dp_state[f"{prefix}input_stats.{s}"].reshape(-1)[cols] for s in _STATS}
    return field


def map_normalizer(dp_state: dict, policy, layout: TaskLayout, kind: str) -> dict:
    fields = {"action": _normalizer_field(dp_state, "action")}
    if kind == LOWDIM_POLICY:
        start = 0
        for name, width in layout.lowdim_obs:
            fields[name] = _normalizer_field(dp_state, "obs", slice(start, start + width))
            start += width
    else:
        for key in policy.obs_keys:
            if key in policy.rgb_keys:
                image = _normalizer_field(dp_state, key)
                if not (torch.allclose(image["scale"], torch.tensor(2.0)) and torch.allclose(image["offset"], torch.tensor(-1.0))):
                    raise UnsupportedCheckpointError(f"DP's {key!r} normalizer is not [0, 1] -> [-1, 1]")
                fields[key] = dict(get_image_range_normalizer().state_dict())
            else:
                fields[key] = _normalizer_field(dp_state, key)
    return {f"normalizer.fields.{k}.{n}": v.clone().float() for k, f in fields.items() for n, v in f.items()}


_RESNET_STAGES = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def map_robomimic_camera(dp_state: dict, camera: str) -> tuple[dict, list[str]]:
    """robomimic VisualCore of one camera -> policylab ResNetImageEncoder keys (and the keys used)."""
    src = f"obs_encoder.obs_nets.{camera}."
    dst = f"obs_encoder.key_model_map.{camera}."
    mapped, used = {}, []
    for key, value in dp_state.items():
        if not key.startswith(src):
            continue
        rest = key[len(src):]
        # VisualCore registers backbone and pool twice: as attributes and inside `nets`.
        alias = re.sub(r"^nets\.0\.", "backbone.", re.sub(r"^nets\.1\.", "pool.", rest))
        if alias != rest:
            if not torch.equal(dp_state.get(src + alias, value), value):
                raise UnsupportedCheckpointError(f"{key} differs from {src + alias}")
            rest = alias
        used.append(key)
        if rest.startswith("backbone.nets."):
            index, _, tail = rest[len("backbone.nets."):].partition(".")
            if index not in _RESNET_STAGES:
                raise UnsupportedCheckpointError(f"unexpected ResNet18Conv entry {key}")
            mapped[f"{dst}backbone.{_RESNET_STAGES[index]}.{tail}"] = value
        elif rest in ("pool.nets.weight", "pool.nets.bias"):
            mapped[f"{dst}pool.0.{rest[len('pool.'):]}"] = value
        elif rest == "pool.temperature":
            mapped[f"{dst}pool.0.temperature"] = value.reshape(1)
        elif rest in ("nets.3.weight", "nets.3.bias"):
            mapped[f"{dst}pool.2.{rest.rsplit('.', 1)[1]}"] = value
        elif rest not in ("pool.pos_x", "pool.pos_y"):
            raise UnsupportedCheckpointError(f"unexpected robomimic encoder entry {key}")
    return mapped, used


def dp_feature_layout(dp_cfg: Mapping, policy, layout: TaskLayout, kind: str) -> list[tuple[str, int]]:
    """DP's per-step observation feature as (key, width) segments.

    Low-dim: the task's `obs` vector. Hybrid: robomimic concatenates per key in DP's shape_meta
    order, a camera giving its encoder feature, a low-dim key its values.
    """
    if kind == LOWDIM_POLICY:
        return list(layout.lowdim_obs)
    widths = dict(encoder_layout(policy))
    return [(key, widths[key]) for key in _value(dp_cfg, "policy.shape_meta.obs")]


def map_state_dict(dp_state: dict, policy, dp_layout: list[tuple[str, int]], layout: TaskLayout, kind: str) -> dict:
    """DP policy state_dict -> a state_dict for `policy`; every DP tensor is used or known to be unused."""
    ignored = {k for k in dp_state if k.endswith("_dummy_variable") or k.startswith("mask_generator.")}
    model = {k[len("model."):]: v for k, v in dp_state.items() if k.startswith("model.")}
    perm = feature_permutation(dp_layout, encoder_layout(policy))
    dsed = policy.model.diffusion_step_encoder[1].in_features
    model = permute_cond_columns(model, perm, dsed, policy.n_obs_steps)
    out = {f"model.{k}": v for k, v in model.items()}
    out |= map_normalizer(dp_state, policy, layout, kind)
    used = set(ignored) | {k for k in dp_state if k.startswith(("model.", "normalizer."))}
    for camera in policy.rgb_keys:
        mapped, camera_keys = map_robomimic_camera(dp_state, camera)
        out |= mapped
        used |= set(camera_keys)
    leftover = sorted(set(dp_state) - used)
    if leftover:
        raise UnsupportedCheckpointError(f"DP tensors with no policylab counterpart: {leftover[:8]}")
    return out


def load_into(policy, state: dict) -> None:
    missing, unexpected = policy.load_state_dict(state, strict=False)
    params = dict(policy.named_parameters())
    missing = [k for k in missing if k in params]
    if missing or unexpected:
        raise UnsupportedCheckpointError(f"mapped weights do not fit the policy: missing {missing[:8]}, "
                                         f"unexpected {unexpected[:8]}")


def import_dp_checkpoint(ckpt: str | Path, out_dir: str | Path, task: str | None = None,
                         config_dir: str | Path = CONFIG_DIR) -> Path:
    """Write a policylab checkpoint directory (config.yaml + safetensors) from a DP `.ckpt`."""
    import hydra

    payload = load_dp_checkpoint(ckpt)
    dp_cfg = _plain(payload["cfg"])
    task = task or str(_value(dp_cfg, "task.name"))
    if task not in TASKS:
        raise UnsupportedCheckpointError(f"task {task!r} has no known layout; choose --task from {sorted(TASKS)}")
    kind = _policy_kind(dp_cfg)
    cfg = compose_policylab_config(policylab_overrides(dp_cfg, task), config_dir)
    _check_shapes(dp_cfg, cfg, TASKS[task], kind)
    policies = {}
    for name in ("model", "ema_model"):
        if name in payload["state_dicts"]:
            policy = hydra.utils.instantiate(cfg.policy)
            dp_layout = dp_feature_layout(dp_cfg, policy, TASKS[task], kind)
            load_into(policy, map_state_dict(dict(payload["state_dicts"][name]), policy, dp_layout, TASKS[task], kind))
            policies[name] = policy.eval()
    if "model" not in policies:
        raise UnsupportedCheckpointError(f"{ckpt} has no state_dicts['model']")
    out_dir = save_checkpoint(out_dir, cfg, policies["model"], policies.get("ema_model"))
    notes = []
    if kind == HYBRID_POLICY and not dp_cfg["policy"].get("eval_fixed_crop", False):
        notes.append("eval_fixed_crop=false: DP cropped at random in eval; policylab center-crops")
    info = {"source": Path(ckpt).name, "dp_policy": dp_cfg["policy"]["_target_"], "task": task,
            "epoch": payload["pickles"].get("epoch"), "global_step": payload["pickles"].get("global_step"),
            "ema": "ema_model" in policies, "notes": notes}
    (out_dir / "dp_import.json").write_text(json.dumps(info, indent=2))
    return out_dir


def _check_shapes(dp_cfg: Mapping, cfg: DictConfig, layout: TaskLayout, kind: str) -> None:
    action = int(math.prod(cfg.task.shape_meta.action.shape))
    if kind == LOWDIM_POLICY:
        dims = {"action_dim": action, "obs_dim": sum(w for _, w in layout.lowdim_obs)}
        for key, want in dims.items():
            if int(_value(dp_cfg, f"policy.{key}")) != want:
                raise UnsupportedCheckpointError(f"DP policy.{key}={_value(dp_cfg, f'policy.{key}')}, task needs {want}")
        return
    dp_obs = _value(dp_cfg, "policy.shape_meta.obs")
    ours = OmegaConf.to_container(cfg.task.shape_meta.obs)
    for key, attr in ours.items():
        if key not in dp_obs or list(dp_obs[key]["shape"]) != list(attr["shape"]):
            raise UnsupportedCheckpointError(f"observation {key!r} {attr['shape']} is not in DP's shape_meta {dp_obs}")
    if set(dp_obs) != set(ours):
        raise UnsupportedCheckpointError(f"DP's observations {sorted(dp_obs)} != policylab's {sorted(ours)}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="a Diffusion Policy .ckpt file")
    parser.add_argument("out_dir", help="the policylab checkpoint directory to write")
    parser.add_argument("--task", choices=sorted(TASKS), default=None, help="default: the DP config's task.name")
    parser.add_argument("--config_dir", default=str(CONFIG_DIR), help="policylab's Hydra config directory")
    args = parser.parse_args(argv)
    out = import_dp_checkpoint(args.ckpt, args.out_dir, args.task, args.config_dir)
    print(f"wrote {out} (load with BasePolicy.from_checkpoint, or eval.py checkpoint={out})")


if __name__ == "__main__":
    main()
