"""The frozen ResNet-v1 trunk's weights: SERL/ConRFT's ImageNet ResNet-10 pickle, or safetensors.

SERL and ConRFT ship the trunk as `resnet10_params.pkl`: a pickled flax param tree (plain dicts)
whose leaves are jax arrays, e.g. `{"conv_init": {"kernel": (7, 7, 3, 64)}, "norm_init":
{"scale", "bias"}, "ResNetBlock_0": {"Conv_0", "Conv_1", "MyGroupNorm_0", "MyGroupNorm_1",
"conv_proj"?, "norm_proj"?}, ...}`. A jax array pickles as
`jax._src.array._reconstruct_array(numpy.core.multiarray._reconstruct, (numpy.ndarray, (0,), b"b"),
ndarray_state, aval_state)`. `read_flax_pickle` reads that without jax and without running the
pickle's globals: an allow-list unpickler maps exactly those names (and `numpy.dtype`, numeric
dtypes only) to builders of numpy arrays, and refuses any other global by name.

    python -m policylab.models.encoders.serl_weights resnet10_params.pkl trunk.safetensors

converts once; `FrozenTrunkEncoder(trunk_weights=...)` accepts either file.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import sys
from collections.abc import Mapping

import numpy as np
import torch

from policylab.models.encoders.frozen_resnet import TRUNK_STAGE_SIZES, ResNetV1Trunk

PathLike = str | os.PathLike
# Leaf dtypes a weights file may hold; object dtypes (which would unpickle objects) never.
_NUMERIC_KINDS = "biuf"
_FLAX_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_FLAX_LAYER_NAMES = {"Conv_0": "conv_0", "Conv_1": "conv_1", "MyGroupNorm_0": "norm_0",
                     "MyGroupNorm_1": "norm_1", "conv_proj": "conv_proj", "norm_proj": "norm_proj"}
_BLOCK = re.compile(r"ResNetBlock_(\d+)")
SAFETENSORS_FORMAT = "policylab.frozen_resnet_trunk"


class _NdarrayClass:
    """Stands in for `numpy.ndarray` in the pickle: only our `_reconstruct` accepts it."""


_NDARRAY = _NdarrayClass()


def _numeric_dtype(spec: object, align: bool = False, copy: bool = False) -> np.dtype:
    dtype = np.dtype(spec, align=bool(align), copy=bool(copy))
    if dtype.kind not in _NUMERIC_KINDS or dtype.hasobject:
        raise pickle.UnpicklingError(f"refused dtype {dtype!r}: only numeric arrays are read")
    return dtype


def _empty_ndarray(cls: object, shape: object, typecode: object) -> np.ndarray:
    """numpy's `_reconstruct`: an empty array that `__setstate__` (BUILD) then fills."""
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError(f"_reconstruct of {cls!r}: only numpy.ndarray is read")
    return np.empty(0, dtype=np.uint8)


def _array_from_state(state: object) -> np.ndarray:
    """An ndarray from its pickled state `(version, shape, dtype, fortran_order, raw bytes)`."""
    if not (isinstance(state, tuple) and len(state) == 5):
        raise pickle.UnpicklingError(f"unexpected ndarray state {type(state).__name__}")
    _, shape, dtype, fortran, raw = state
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS or dtype.hasobject:
        raise pickle.UnpicklingError(f"refused array dtype {dtype!r}")
    if not (isinstance(shape, tuple) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise pickle.UnpicklingError(f"bad array shape {shape!r}")
    if not isinstance(raw, bytes) or len(raw) != int(np.prod(shape)) * dtype.itemsize:
        raise pickle.UnpicklingError(f"array of shape {shape} {dtype} with a wrong byte count")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


def _jax_array(fun: object, args: object, arr_state: object, aval_state: object) -> np.ndarray:
    """jax's `_reconstruct_array`, minus the device: the numpy array it would put on one."""
    if fun is not _empty_ndarray or not isinstance(args, tuple) or not isinstance(aval_state, dict):
        raise pickle.UnpicklingError("jax array not in the form jax pickles one")
    _empty_ndarray(*args)
    return _array_from_state(arr_state)


_ALLOWED_GLOBALS = {
    ("jax._src.array", "_reconstruct_array"): _jax_array,
    # numpy 1.x pickles name numpy.core, numpy 2.x numpy._core.
    ("numpy.core.multiarray", "_reconstruct"): _empty_ndarray,
    ("numpy._core.multiarray", "_reconstruct"): _empty_ndarray,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _numeric_dtype,
}


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, path: PathLike):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"{self.path}: refuses the pickle global {module}.{name}; a weights pickle may only "
                f"name {sorted(f'{m}.{n}' for m, n in _ALLOWED_GLOBALS)}")
        return _ALLOWED_GLOBALS[module, name]


def read_flax_pickle(path: PathLike) -> dict:
    """A flax param tree pickled with jax (or numpy) leaves -> the same nested dict of numpy arrays,
    without jax and without calling any global outside the allow-list."""
    with open(path, "rb") as f:
        try:
            tree = _AllowListUnpickler(f, path).load()
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, KeyError, IndexError) as e:
            size = os.path.getsize(path)
            raise ValueError(f"{path} ({size:,} bytes): not a readable flax weights pickle: {e} "
                             "(a truncated file ends mid-array; re-download it)") from e
    _check_tree(tree, path, "")
    return tree


def _check_tree(tree: object, path: PathLike, prefix: str) -> None:
    if isinstance(tree, np.ndarray):
        if tree.dtype.kind not in _NUMERIC_KINDS or tree.dtype.hasobject:
            raise ValueError(f"{path}: {prefix} has dtype {tree.dtype}, expected a numeric array")
        return
    if not isinstance(tree, dict) or not all(isinstance(k, str) for k in tree):
        raise ValueError(f"{path}: {prefix or 'the top level'} is a {type(tree).__name__}, "
                         "expected a dict of str keys or an array")
    for key, value in tree.items():
        _check_tree(value, path, f"{prefix}/{key}" if prefix else key)


def _torch_key(flax_path: tuple[str, ...]) -> str | None:
    """`("ResNetBlock_1", "Conv_0", "kernel")` -> `"blocks.1.conv_0.weight"`; None if unknown."""
    *layers, leaf = flax_path
    if leaf not in _FLAX_LEAF_NAMES:
        return None
    if layers in (["conv_init"], ["norm_init"]):
        return f"{layers[0]}.{_FLAX_LEAF_NAMES[leaf]}"
    if len(layers) == 2 and (block := _BLOCK.fullmatch(layers[0])) and layers[1] in _FLAX_LAYER_NAMES:
        return f"blocks.{block.group(1)}.{_FLAX_LAYER_NAMES[layers[1]]}.{_FLAX_LEAF_NAMES[leaf]}"
    return None


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.ndarray]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def flax_to_torch(tree: Mapping, path: PathLike = "<tree>") -> dict[str, torch.Tensor]:
    """SERL's ResNet param tree -> a `ResNetV1Trunk` state_dict. Conv kernels go from flax's
    (kh, kw, Cin, Cout) to torch's (Cout, Cin, kh, kw); GroupNorm scale/bias are weight/bias."""
    state = {}
    for flax_path, array in _flatten(tree).items():
        key = _torch_key(flax_path)
        if key is None:
            raise ValueError(f"{path}: {'/'.join(flax_path)} is not a ResNet-v1 trunk parameter")
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        state[key] = tensor.permute(3, 2, 0, 1).contiguous() if tensor.ndim == 4 else tensor
    return state


def load_trunk_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """A trunk state_dict from SERL's `.pkl` or a `.safetensors` (as `save_trunk_weights` writes)."""
    suffix = os.path.splitext(str(path))[1]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"trunk weights file {path} does not exist")
    if suffix == ".pkl":
        return flax_to_torch(read_flax_pickle(path), path)
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    raise ValueError(f"{path}: trunk weights must be a SERL/ConRFT .pkl or a .safetensors file")


def check_trunk_state_dict(state: Mapping[str, torch.Tensor], trunk: ResNetV1Trunk, path: PathLike) -> None:
    """Raise, naming the file and the first mismatched key, unless `state` fits `trunk` exactly."""
    expected = trunk.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise ValueError(f"{path}: missing trunk key {key!r} {tuple(value.shape)}: not a weights "
                             f"file of this trunk (stage sizes {trunk.stage_sizes})")
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(f"{path}: trunk key {key!r} has shape {tuple(state[key].shape)}, the trunk "
                             f"(stage sizes {trunk.stage_sizes}) expects {tuple(value.shape)}")
    extra = [key for key in state if key not in expected]
    if extra:
        raise ValueError(f"{path}: unexpected trunk key {extra[0]!r}: not a weights file of this "
                         f"trunk (stage sizes {trunk.stage_sizes})")


def load_trunk_weights(trunk: ResNetV1Trunk, path: PathLike) -> ResNetV1Trunk:
    """Load `path` (.pkl or .safetensors) into `trunk`, checked key by key and shape by shape."""
    state = load_trunk_state_dict(path)
    check_trunk_state_dict(state, trunk, path)
    trunk.load_state_dict(state)
    return trunk


def save_trunk_weights(trunk: ResNetV1Trunk, path: PathLike) -> None:
    """Write `trunk`'s state_dict as safetensors, atomically (a temp file, then a rename)."""
    from safetensors.torch import save_file

    tmp = f"{path}.tmp{os.getpid()}"
    metadata = {"format": SAFETENSORS_FORMAT, "stage_sizes": ",".join(map(str, trunk.stage_sizes))}
    try:
        save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def convert(pkl_path: PathLike, out_path: PathLike, trunk: str = "resnet10") -> ResNetV1Trunk:
    """SERL's `.pkl` -> a checked `.safetensors` of the `trunk` architecture; returns the trunk."""
    model = load_trunk_weights(ResNetV1Trunk(TRUNK_STAGE_SIZES[trunk]), pkl_path)
    save_trunk_weights(model, out_path)
    return model


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Convert SERL/ConRFT's resnet10_params.pkl to safetensors.")
    parser.add_argument("pkl")
    parser.add_argument("out", help="the .safetensors to write")
    parser.add_argument("--trunk", default="resnet10", choices=sorted(TRUNK_STAGE_SIZES))
    args = parser.parse_args(argv)
    model = convert(args.pkl, args.out, args.trunk)
    count = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {count:,} trunk parameters", file=sys.stdout)


if __name__ == "__main__":
    main()
