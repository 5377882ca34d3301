"""Converter: an Octo-named parameter tree converts, loads strictly, and errors name the culprit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from policylab.models.octo import OctoModel
from policylab.models.octo.convert import ConversionError, convert, main

BLOCK0 = "octo_transformer/BlockTransformer_0/Transformer_0/encoderblock_0"


def test_round_trip_loads_strictly_with_octo_layouts(tmp_path, octo_npz, octo_tree, octo_spec):
    report = convert(octo_npz, tmp_path / "out", action_head=True)
    model = OctoModel.from_pretrained(tmp_path / "out")  # load_state_dict(strict=True) inside
    cfg = model.cfg
    assert (cfg.token_dim, cfg.num_heads, cfg.num_layers, cfg.mlp_dim) == (64, 4, 2, 128)
    assert cfg.cameras == {"primary": (64, 64), "wrist": (32, 32)}
    assert (cfg.language_dim, cfg.language_tokens, cfg.max_horizon) == (40, 5, 3)
    assert cfg.action_head is not None
    assert cfg.action_head.hidden_dim == 64

    model.requires_grad_(False)
    attn = model.transformer.blocks[0].attn
    q = octo_tree[f"{BLOCK0}/MultiHeadDotProductAttention_0/query/kernel"]  # (D, H, Dh)
    v = octo_tree[f"{BLOCK0}/MultiHeadDotProductAttention_0/value/kernel"]
    out = octo_tree[f"{BLOCK0}/MultiHeadDotProductAttention_0/out/kernel"]  # (H, Dh, D)
    d = q.shape[0]
    # torch computes x @ W.T, flax x @ kernel: W.T must equal the kernel with heads flattened head-major.
    np.testing.assert_array_equal(attn.in_proj.weight[:d].T.numpy(), q.reshape(d, -1))
    np.testing.assert_array_equal(attn.in_proj.weight[2 * d :].T.numpy(), v.reshape(d, -1))
    np.testing.assert_array_equal(attn.out_proj.weight.T.numpy(), out.reshape(-1, d))
    conv = model.observation_tokenizers["wrist"].stem.convs[1].weight
    kernel = octo_tree["octo_transformer/observation_tokenizers_wrist/SmallStem16_0/StdConv_1/kernel"]
    np.testing.assert_array_equal(conv.numpy()[5, 7, 2, 1], kernel[2, 1, 7, 5])
    gn = model.observation_tokenizers["primary"].stem.norms[3].weight
    np.testing.assert_array_equal(
        gn.numpy(), octo_tree["octo_transformer/observation_tokenizers_primary/SmallStem16_0/GroupNorm_3/scale"]
    )

    assert report["unexpected_unused"] == []
    assert all("hf_model" in p for p in report["unused"])
    assert len(report["unused"]) == 2
    n_used = report["converted_octo_params"]
    assert n_used + len(report["unused"]) == len(octo_tree)


def test_action_head_is_listed_unused_by_default(tmp_path, octo_npz):
    report = convert(octo_npz, tmp_path / "out")
    assert any(p.startswith("heads_action/") for p in report["unused"])
    model = OctoModel.from_pretrained(tmp_path / "out")
    assert model.action_head is None
    written = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert written["unused"] == report["unused"]


def test_missing_parameter_is_named(tmp_path, octo_tree):
    path = f"{BLOCK0}/MlpBlock_0/Dense_1/bias"
    del octo_tree[path]
    np.savez(tmp_path / "p.npz", **octo_tree)
    with pytest.raises(ConversionError, match=f"missing Octo parameter {path}"):
        convert(tmp_path / "p.npz", tmp_path / "out")


def test_wrong_shape_is_named(tmp_path, octo_tree):
    path = "octo_transformer/observation_tokenizers_primary/SmallStem16_0/GroupNorm_2/bias"
    octo_tree[path] = np.zeros(63, np.float32)
    np.savez(tmp_path / "p.npz", **octo_tree)
    with pytest.raises(ConversionError, match=f"{path} has shape \\(63,\\), expected \\(64,\\)"):
        convert(tmp_path / "p.npz", tmp_path / "out")


def test_unknown_parameter_fails_unless_allowed(tmp_path, octo_tree):
    extra = "octo_transformer/some_new_group_projection/kernel"
    octo_tree[extra] = np.zeros((3, 3), np.float32)
    np.savez(tmp_path / "p.npz", **octo_tree)
    with pytest.raises(ConversionError, match=extra):
        convert(tmp_path / "p.npz", tmp_path / "out")
    report = convert(tmp_path / "p.npz", tmp_path / "out", allow_unexpected=True)
    assert extra in report["unexpected_unused"]


def test_unsupported_image_encoder_is_named(tmp_path, octo_tree):
    octo_tree["octo_transformer/observation_tokenizers_wrist/ViTResnet_0/conv_root/kernel"] = np.zeros((7, 7, 6, 64))
    np.savez(tmp_path / "p.npz", **octo_tree)
    with pytest.raises(ConversionError, match="camera 'wrist' uses encoder.*ViTResnet_0"):
        convert(tmp_path / "p.npz", tmp_path / "out")


def test_pre_15_config_is_refused(tmp_path, octo_npz):
    with pytest.raises(ConversionError, match="use_correct_attention"):
        convert(octo_npz, tmp_path / "out", octo_config={"model": {"use_correct_attention": False}})


def test_octo_config_sets_order_and_flags(tmp_path, octo_npz):
    octo_config = {"model": {"observation_tokenizers": {"wrist": {}, "primary": {}}, "repeat_task_tokens": False}}
    convert(octo_npz, tmp_path / "out", octo_config=octo_config)
    cfg = OctoModel.from_pretrained(tmp_path / "out").cfg
    assert list(cfg.cameras) == ["wrist", "primary"]
    assert cfg.repeat_task_tokens is False


def test_params_prefix_is_stripped(tmp_path, octo_tree):
    np.savez(tmp_path / "p.npz", **{f"params/{k}": v for k, v in octo_tree.items()})
    report = convert(tmp_path / "p.npz", tmp_path / "out")
    assert report["unexpected_unused"] == []


def test_checkpoint_dir_without_orbax_says_what_to_install(tmp_path):
    try:
        import orbax.checkpoint  # noqa: F401

        pytest.skip("orbax is installed here")
    except ImportError:
        pass
    (tmp_path / "octo" / "300000" / "default").mkdir(parents=True)
    with pytest.raises(ImportError, match="orbax-checkpoint"):
        convert(tmp_path / "octo", tmp_path / "out")


def test_cli(tmp_path, octo_npz, capsys):
    assert main([str(octo_npz), str(tmp_path / "out"), "--image-size", "wrist=32x32"]) == 0
    assert "unused" in capsys.readouterr().out
    model = OctoModel.from_pretrained(tmp_path / "out")
    assert model.cfg.cameras["wrist"] == (32, 32)
    assert all(torch.isfinite(p).all() for p in model.parameters())
