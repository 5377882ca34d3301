"""SERL/ConRFT's ResNet-10 pickle -> the torch trunk: the safe reader, the key/shape checks, and one
forward against a numpy re-computation of the flax layers.

The weights files here are written by `write_flax_pickle` with the opcodes ConRFT's
`resnet10_params.pkl` uses (protocol 4, plain dicts, each leaf a
`jax._src.array._reconstruct_array(numpy.core.multiarray._reconstruct, ...)` call), so the reader
sees the real format without jax being installed.
"""

import os
import pickle
import pickletools
import struct

import numpy as np
import pytest
import torch

from policylab.models.encoders.frozen_resnet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TRUNK_STAGE_SIZES,
    FrozenTrunkEncoder,
    ResNetV1Trunk,
    same_padding,
)
from policylab.models.encoders.serl_weights import (
    SAFETENSORS_FORMAT,
    convert,
    flax_to_torch,
    load_trunk_state_dict,
    load_trunk_weights,
    main,
    read_flax_pickle,
    save_trunk_weights,
)

# What `pickletools` shows in ConRFT's resnet10_params.pkl (examples/experiments/, commit 3bacb6f).
REAL_FILE_GLOBALS = {("jax._src.array", "_reconstruct_array"), ("numpy.core.multiarray", "_reconstruct"),
                     ("numpy", "ndarray"), ("numpy", "dtype")}
REAL_FILE_OPCODES = {"BINBYTES", "BINGET", "BININT", "BININT1", "BININT2", "BUILD", "EMPTY_DICT", "FRAME",
                     "MARK", "MEMOIZE", "NEWFALSE", "NEWTRUE", "NONE", "PROTO", "REDUCE", "SETITEM",
                     "SETITEMS", "SHORT_BINBYTES", "SHORT_BINUNICODE", "STACK_GLOBAL", "TUPLE", "TUPLE1",
                     "TUPLE3", "STOP"}


# ---- a writer of the real file's pickle format, without jax -----------------------------------

def _str(s: str) -> bytes:
    data = s.encode()
    return b"\x8c" + bytes([len(data)]) + data


def _global(module: str, name: str) -> bytes:
    return _str(module) + _str(name) + b"\x93"


def _int(x: int) -> bytes:
    if 0 <= x < 256:
        return b"K" + bytes([x])
    if 0 <= x < 65536:
        return b"M" + struct.pack("<H", x)
    return b"J" + struct.pack("<i", x)


def _tuple(items: list[bytes]) -> bytes:
    if 1 <= len(items) <= 3:
        return b"".join(items) + {1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(items)]
    return b"(" + b"".join(items) + b"t"


def _jax_array(array: np.ndarray) -> bytes:
    """`jax.Array.__reduce__` as jax 0.4 pickles a float32 array."""
    array = np.ascontiguousarray(array, dtype="<f4")
    raw = array.tobytes()
    args = _tuple([_global("numpy", "ndarray"), _tuple([_int(0)]), b"C\x01b"])
    dtype = (_global("numpy", "dtype") + _tuple([_str("f4"), b"\x89", b"\x88"]) + b"R"
             + _tuple([_int(3), _str("<"), b"N", b"N", b"N", b"J" + struct.pack("<i", -1),
                       b"J" + struct.pack("<i", -1), _int(0)]) + b"b")
    arr_state = _tuple([_int(1), _tuple([_int(s) for s in array.shape]), dtype, b"\x89",
                        b"B" + struct.pack("<I", len(raw)) + raw])
    aval_state = b"}(" + _str("weak_type") + b"\x89" + _str("named_shape") + b"}u"
    return (_global("jax._src.array", "_reconstruct_array")
            + _tuple([_global("numpy.core.multiarray", "_reconstruct"), args, arr_state, aval_state]) + b"R")


def _dict(tree: dict) -> bytes:
    items = [_str(k) + (_dict(v) if isinstance(v, dict) else _jax_array(v)) for k, v in tree.items()]
    if len(items) == 1:
        return b"}" + items[0] + b"s"
    return b"}(" + b"".join(items) + b"u"


def write_flax_pickle(tree: dict, path) -> None:
    with open(path, "wb") as f:
        f.write(b"\x80\x04" + _dict(tree) + b".")


def flax_resnet_tree(stage_sizes=(1, 1, 1, 1), num_filters=64, seed=0) -> dict:
    """A random param tree with the names and shapes SERL's flax ResNetEncoder gives."""
    rng = np.random.default_rng(seed)

    def conv(k, cin, cout):
        return {"kernel": (rng.standard_normal((k, k, cin, cout)) * np.sqrt(2.0 / (k * k * cin))).astype(np.float32)}

    def norm(c):
        return {"bias": (0.1 * rng.standard_normal(c)).astype(np.float32),
                "scale": (1.0 + 0.1 * rng.standard_normal(c)).astype(np.float32)}

    tree, channels, index = {}, num_filters, 0
    for stage, size in enumerate(stage_sizes):
        filters = num_filters * 2 ** stage
        for j in range(size):
            stride = 2 if stage > 0 and j == 0 else 1
            block = {"Conv_0": conv(3, channels, filters), "Conv_1": conv(3, filters, filters),
                     "MyGroupNorm_0": norm(filters), "MyGroupNorm_1": norm(filters)}
            if stride != 1 or channels != filters:
                block.update(conv_proj=conv(1, channels, filters), norm_proj=norm(filters))
            tree[f"ResNetBlock_{index}"] = block
            channels, index = filters, index + 1
    tree["conv_init"] = conv(7, 3, num_filters)
    tree["norm_init"] = norm(num_filters)
    return tree


# ---- flax's layers, re-computed in numpy (NHWC, float64) --------------------------------------

def np_conv(x, kernel, stride, pads):
    """flax nn.Conv without bias: x (B, H, W, Ci), kernel (kh, kw, Ci, Co), pads ((t, b), (l, r))."""
    x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    kh, kw = kernel.shape[:2]
    oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            out += np.einsum("bhwc,co->bhwo", patch, kernel[i, j])
    return out


def np_same(size, k, stride):
    # XLA's SAME: output ceil(n / s); the padding total split with the extra pixel after.
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def np_conv_same(x, kernel, stride):
    k = kernel.shape[0]
    return np_conv(x, kernel, stride, (np_same(x.shape[1], k, stride), np_same(x.shape[2], k, stride)))


def np_group_norm(x, p, groups=4, eps=1e-5):
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(b, h, w, c) * p["scale"] + p["bias"]


def np_max_pool_same(x, k=3, stride=2):
    pads = (np_same(x.shape[1], k, stride), np_same(x.shape[2], k, stride))
    x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-np.inf)
    oh, ow = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    windows = [x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
               for i in range(k) for j in range(k)]
    return np.max(windows, axis=0)


def np_resnet_v1(tree, images_uint8, stage_sizes):
    """SERL's ResNetEncoder(pre_pooling=True) in numpy: uint8 (B, H, W, 3) -> (B, h, w, 512)."""
    def relu(v):
        return np.maximum(v, 0.0)

    x = (images_uint8.astype(np.float64) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    x = np_conv(x, tree["conv_init"]["kernel"], 2, ((3, 3), (3, 3)))
    x = np_max_pool_same(relu(np_group_norm(x, tree["norm_init"])))
    index = 0
    for stage, size in enumerate(stage_sizes):
        for j in range(size):
            p, stride = tree[f"ResNetBlock_{index}"], 2 if stage > 0 and j == 0 else 1
            y = relu(np_group_norm(np_conv_same(x, p["Conv_0"]["kernel"], stride), p["MyGroupNorm_0"]))
            y = np_group_norm(np_conv_same(y, p["Conv_1"]["kernel"], 1), p["MyGroupNorm_1"])
            if "conv_proj" in p:
                x = np_group_norm(np_conv_same(x, p["conv_proj"]["kernel"], stride), p["norm_proj"])
            x, index = relu(x + y), index + 1
    return x


# ---- tests ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet10_pkl(tmp_path_factory):
    tree = flax_resnet_tree()
    path = tmp_path_factory.mktemp("serl") / "resnet10_params.pkl"
    write_flax_pickle(tree, path)
    return tree, path


@pytest.fixture(scope="module")
def resnet18_pkl(tmp_path_factory):
    tree = flax_resnet_tree(TRUNK_STAGE_SIZES["resnet18"], seed=1)
    path = tmp_path_factory.mktemp("serl") / "resnet18.pkl"
    write_flax_pickle(tree, path)
    return tree, path


def test_written_file_uses_the_real_files_globals_and_opcodes(resnet10_pkl):
    _, path = resnet10_pkl
    ops = list(pickletools.genops(path.read_bytes()))
    names = {op.name for op, _, _ in ops}
    assert names <= REAL_FILE_OPCODES
    strings, globals_ = [], set()
    for op, arg, _ in ops:
        if op.name == "SHORT_BINUNICODE":
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            globals_.add(tuple(strings[-2:]))
    assert globals_ == REAL_FILE_GLOBALS


def test_reads_the_jax_pickle_as_numpy_without_jax(resnet10_pkl):
    tree, path = resnet10_pkl
    with pytest.raises(ImportError):
        import jax  # noqa: F401
    read = read_flax_pickle(path)
    assert read.keys() == tree.keys()
    for block in ("ResNetBlock_0", "ResNetBlock_3"):
        for layer, params in tree[block].items():
            for name, array in params.items():
                got = read[block][layer][name]
                assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.flags.writeable
                np.testing.assert_array_equal(got, array)
    assert "conv_proj" not in read["ResNetBlock_0"] and read["ResNetBlock_1"]["conv_proj"]["kernel"].shape == (1, 1, 64, 128)


def test_reads_a_plain_numpy_pickle_of_the_same_tree(tmp_path):
    tree = {"conv_init": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)},
            "norm_init": {"scale": np.ones(3, np.float64), "bias": np.zeros(3, np.int32)}}
    path = tmp_path / "numpy.pkl"
    path.write_bytes(pickle.dumps(tree, protocol=4))
    read = read_flax_pickle(path)
    np.testing.assert_array_equal(read["conv_init"]["kernel"], tree["conv_init"]["kernel"])
    assert read["norm_init"]["bias"].dtype == np.int32


@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval"), ("numpy", "load")])
def test_refuses_any_other_global_by_name_without_running_it(tmp_path, module, name):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"\x80\x04" + _global(module, name) + _tuple([_str(f"touch {marker}")]) + b"R.")
    with pytest.raises(ValueError, match=rf"evil\.pkl.*refuses the pickle global {module}\.{name}"):
        read_flax_pickle(path)
    assert not marker.exists()


def test_refuses_object_arrays(tmp_path):
    path = tmp_path / "objects.pkl"
    path.write_bytes(pickle.dumps({"a": np.array([1, None], dtype=object)}, protocol=4))
    with pytest.raises(ValueError, match=r"objects\.pkl.*refused dtype"):
        read_flax_pickle(path)


def test_truncated_file_is_refused_naming_the_file(resnet10_pkl, tmp_path):
    _, path = resnet10_pkl
    data = path.read_bytes()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"cut\.pkl \([\d,]+ bytes\).*truncated"):
        read_flax_pickle(cut)
    with pytest.raises(ValueError, match=r"cut\.pkl"):
        FrozenTrunkEncoder((3, 64, 64), trunk_weights=cut)


def test_same_padding_is_xlas():
    assert same_padding(64, 3, 2) == (0, 1)  # even input, stride 2: the extra pixel goes after
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(64, 1, 2) == (0, 0)
    assert same_padding(16, 3, 1) == (1, 1)


@pytest.mark.parametrize("trunk", ["resnet10", "resnet18"])
def test_converted_trunk_matches_numpy_flax_forward(request, trunk):
    stage_sizes = TRUNK_STAGE_SIZES[trunk]
    tree, path = request.getfixturevalue(f"{trunk}_pkl")
    model = load_trunk_weights(ResNetV1Trunk(stage_sizes), path).eval()
    # 64 x 48 exercises asymmetric SAME padding (even sizes) and a symmetric one (3 -> 2).
    images = np.random.default_rng(2).integers(0, 256, size=(2, 64, 48, 3), dtype=np.uint8)
    expected = np_resnet_v1(tree, images, stage_sizes)
    with torch.no_grad():
        got = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)
        got_uint8 = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    assert got.shape == (2, 512, 2, 2) and expected.shape == (2, 2, 2, 512)
    np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_uint8, got)


def test_safetensors_round_trip_and_either_file_in_the_encoder(resnet10_pkl, tmp_path):
    _, path = resnet10_pkl
    out = tmp_path / "trunk.safetensors"
    model = convert(path, out)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert f.metadata() == {"format": SAFETENSORS_FORMAT, "stage_sizes": "1,1,1,1"}
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    loaded = load_trunk_state_dict(out)
    assert loaded.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    from_pkl = FrozenTrunkEncoder((3, 64, 64), trunk_weights=path).trunk_features(images)
    from_st = FrozenTrunkEncoder((3, 64, 64), trunk_weights=out).trunk_features(images)
    torch.testing.assert_close(from_pkl, from_st, rtol=0, atol=0)


def test_conversion_cli(resnet10_pkl, tmp_path, capsys):
    _, path = resnet10_pkl
    main([str(path), str(tmp_path / "t.safetensors")])
    assert "4,905,792 trunk parameters" in capsys.readouterr().out
    assert (tmp_path / "t.safetensors").is_file()


def test_wrong_architecture_names_the_file_and_first_mismatched_key(tmp_path, resnet18_pkl):
    _, resnet18 = resnet18_pkl
    # ResNet-18's block 1 is still stage 1 (64 -> 64), ResNet-10's is stage 2 (64 -> 128).
    with pytest.raises(ValueError, match=r"resnet18\.pkl: trunk key 'blocks\.1\.conv_0\.weight' has shape "
                                         r"\(64, 64, 3, 3\), the trunk .* expects \(128, 64, 3, 3\)"):
        FrozenTrunkEncoder((3, 64, 64), trunk="resnet10", trunk_weights=resnet18)

    narrow = tmp_path / "narrow.pkl"
    write_flax_pickle(flax_resnet_tree(num_filters=32), narrow)
    with pytest.raises(ValueError, match=r"narrow\.pkl: trunk key 'conv_init\.weight' has shape \(32, 3, 7, 7\)"):
        load_trunk_weights(ResNetV1Trunk(), narrow)

    tree = flax_resnet_tree()
    del tree["norm_init"]
    missing = tmp_path / "missing.pkl"
    write_flax_pickle(tree, missing)
    with pytest.raises(ValueError, match=r"missing\.pkl: missing trunk key 'norm_init\.weight'"):
        load_trunk_weights(ResNetV1Trunk(), missing)


def test_unknown_flax_names_and_extra_keys_are_refused(tmp_path):
    tree = flax_resnet_tree()
    tree["Dense_0"] = {"kernel": np.zeros((2, 2), np.float32)}
    with pytest.raises(ValueError, match=r"extra\.pkl: Dense_0/kernel is not a ResNet-v1 trunk parameter"):
        flax_to_torch(tree, "extra.pkl")
    state = ResNetV1Trunk().state_dict()
    state["fc.weight"] = torch.zeros(2)
    path = tmp_path / "extra.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"extra\.safetensors: unexpected trunk key 'fc\.weight'"):
        load_trunk_weights(ResNetV1Trunk(), path)


def test_other_suffixes_and_missing_files_are_refused(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"weights\.pt: trunk weights must be a SERL/ConRFT \.pkl or a \.safetensors"):
        load_trunk_state_dict(path)
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        load_trunk_state_dict(tmp_path / "nope.pkl")


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    import safetensors.torch

    target = tmp_path / "trunk.safetensors"
    target.write_bytes(b"old")

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_trunk_weights(ResNetV1Trunk(), target)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["trunk.safetensors"]
