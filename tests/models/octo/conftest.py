"""Fixtures for the Octo tests: a parameter tree with Octo's own names and shapes.

The tree is written from Octo's Flax module layout (names and shapes as Flax creates them:
Dense kernels (in, out), conv kernels HWIO, attention kernels (D, heads, head_dim)), not from
policylab's converter, so converting it checks the converter against an independent description.
"""

from __future__ import annotations

import numpy as np
import pytest

# A small Octo-shaped model: stem widths stay multiples of Octo's 32 GroupNorm groups.
SMALL_OCTO = {
    "token_dim": 64,
    "num_heads": 4,
    "num_layers": 2,
    "mlp_dim": 128,
    "max_horizon": 3,
    "cameras": {"primary": (64, 64), "wrist": (32, 32)},
    "stem_widths": (32, 32, 64, 64),
    "stem_out": 48,
    "language_dim": 40,
    "language_tokens": 5,
    "action_dim": 7,
    "action_horizon": 4,
    "time_dim": 32,
    "head_hidden": 64,
    "head_blocks": 2,
}


def _dense(tree, path, d_in, d_out, rng):
    tree[f"{path}/kernel"] = rng.normal(0, 1 / np.sqrt(d_in), (d_in, d_out))
    tree[f"{path}/bias"] = rng.normal(0, 0.1, (d_out,))


def _norm(tree, path, dim, rng):
    tree[f"{path}/scale"] = 1 + rng.normal(0, 0.1, (dim,))
    tree[f"{path}/bias"] = rng.normal(0, 0.1, (dim,))


def _conv(tree, path, k, c_in, c_out, rng):
    tree[f"{path}/kernel"] = rng.normal(0, 1 / np.sqrt(k * k * c_in), (k, k, c_in, c_out))
    tree[f"{path}/bias"] = rng.normal(0, 0.1, (c_out,))


def build_octo_tree(spec: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Flat ``{"/"-joined Octo path: float32 array}`` for an Octo 1.5 model described by ``spec``."""
    rng = np.random.default_rng(seed)
    s, t = spec, {}
    d, h = s["token_dim"], s["num_heads"]
    root = "octo_transformer"
    _dense(t, f"{root}/task_language_projection", s["language_dim"], d, rng)
    t[f"{root}/task_language_pos_embedding"] = rng.normal(0, 0.02, (1, s["language_tokens"], d))
    for cam, (hh, ww) in s["cameras"].items():
        stem = f"{root}/observation_tokenizers_{cam}/SmallStem16_0"
        widths = (6, *s["stem_widths"])
        for i in range(4):
            _conv(t, f"{stem}/StdConv_{i}", 3, widths[i], widths[i + 1], rng)
            _norm(t, f"{stem}/GroupNorm_{i}", widths[i + 1], rng)
        _conv(t, f"{stem}/embedding", 1, widths[-1], s["stem_out"], rng)
        _dense(t, f"{root}/obs_{cam}_projection", s["stem_out"], d, rng)
        t[f"{root}/obs_{cam}_pos_embedding"] = rng.normal(0, 0.02, (1, s["max_horizon"], (hh // 16) * (ww // 16), d))
    t[f"{root}/readout_action_pos_embedding"] = rng.normal(0, 0.02, (1, s["max_horizon"], 1, d))
    blocks = f"{root}/BlockTransformer_0/Transformer_0"
    for layer in range(s["num_layers"]):
        blk = f"{blocks}/encoderblock_{layer}"
        _norm(t, f"{blk}/LayerNorm_0", d, rng)
        for name in ("query", "key", "value"):
            t[f"{blk}/MultiHeadDotProductAttention_0/{name}/kernel"] = rng.normal(0, 1 / np.sqrt(d), (d, h, d // h))
            t[f"{blk}/MultiHeadDotProductAttention_0/{name}/bias"] = rng.normal(0, 0.1, (h, d // h))
        t[f"{blk}/MultiHeadDotProductAttention_0/out/kernel"] = rng.normal(0, 1 / np.sqrt(d), (h, d // h, d))
        t[f"{blk}/MultiHeadDotProductAttention_0/out/bias"] = rng.normal(0, 0.1, (d,))
        _norm(t, f"{blk}/LayerNorm_1", d, rng)
        _dense(t, f"{blk}/MlpBlock_0/Dense_0", d, s["mlp_dim"], rng)
        _dense(t, f"{blk}/MlpBlock_0/Dense_1", s["mlp_dim"], d, rng)
    _norm(t, f"{blocks}/encoder_norm", d, rng)
    # A few arrays of the frozen T5 text encoder, which the converter must list as unused.
    t5 = f"{root}/task_tokenizers_language/hf_model"
    t[f"{t5}/shared/embedding"] = rng.normal(0, 1, (11, s["language_dim"]))
    t[f"{t5}/encoder/block/0/layer/0/SelfAttention/q/kernel"] = rng.normal(0, 1, (s["language_dim"], s["language_dim"]))
    head = "heads_action/diffusion_model"
    size = s["action_dim"] * s["action_horizon"]
    t[f"{head}/time_preprocess/kernel"] = rng.normal(0, 0.2, (s["time_dim"] // 2, 1))
    _dense(t, f"{head}/cond_encoder/Dense_0", s["time_dim"], 2 * s["time_dim"], rng)
    _dense(t, f"{head}/cond_encoder/Dense_1", 2 * s["time_dim"], s["time_dim"], rng)
    _dense(t, f"{head}/reverse_network/Dense_0", s["time_dim"] + d + size, s["head_hidden"], rng)
    for i in range(s["head_blocks"]):
        blk = f"{head}/reverse_network/MLPResNetBlock_{i}"
        _norm(t, f"{blk}/LayerNorm_0", s["head_hidden"], rng)
        _dense(t, f"{blk}/Dense_0", s["head_hidden"], 4 * s["head_hidden"], rng)
        _dense(t, f"{blk}/Dense_1", 4 * s["head_hidden"], s["head_hidden"], rng)
    _dense(t, f"{head}/reverse_network/Dense_1", s["head_hidden"], size, rng)
    return {k: v.astype(np.float32) for k, v in t.items()}


@pytest.fixture
def octo_tree() -> dict[str, np.ndarray]:
    return build_octo_tree(SMALL_OCTO)


@pytest.fixture
def octo_npz(tmp_path, octo_tree):
    path = tmp_path / "octo_params.npz"
    np.savez(path, **octo_tree)
    return path


@pytest.fixture
def octo_spec() -> dict:
    return SMALL_OCTO
