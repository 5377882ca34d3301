"""Numerics against float64 NumPy written from Octo's formulas, on Flax-layout parameters.

The references take the parameters exactly as Octo stores them (Dense (in, out), conv HWIO,
attention (D, heads, head_dim)), so a test passes only if the converter's layout transforms and the
model's conventions (GELU tanh, eps 1e-6, weight standardisation with population std, finite
masking, goal image fused as zeros -> -1) together reproduce Octo.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policylab.models.octo import OctoModel
from policylab.models.octo.convert import convert
from policylab.models.octo.transformer import attention_bias

TOL = 1e-5
LN_EPS = GN_EPS = 1e-6
STD_EPS = 1e-5
GROUPS = 32
ROOT = "octo_transformer"
BLOCKS = f"{ROOT}/BlockTransformer_0/Transformer_0"
BLOCK0 = f"{BLOCKS}/encoderblock_0"
STEM = f"{ROOT}/observation_tokenizers_primary/SmallStem16_0"



def np_layer_norm(x, scale, bias):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LN_EPS) * scale + bias


def np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_attention(x, p, mask):
    """x (N, D), mask (N, N) bool; q/k/v kernels (D, H, Dh), out kernel (H, Dh, D)."""
    q = np.einsum("nd,dhk->nhk", x, p["query/kernel"]) + p["query/bias"]
    k = np.einsum("nd,dhk->nhk", x, p["key/kernel"]) + p["key/bias"]
    v = np.einsum("nd,dhk->nhk", x, p["value/kernel"]) + p["value/bias"]
    logits = np.einsum("qhk,mhk->hqm", q / np.sqrt(q.shape[-1]), k)
    logits = np.where(mask[None], logits, np.finfo(np.float32).min)
    logits = logits - logits.max(-1, keepdims=True)
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    y = np.einsum("hqm,mhk->qhk", weights, v)
    return np.einsum("qhk,hkd->qd", y, p["out/kernel"]) + p["out/bias"]


def subtree(tree, prefix):
    return {k[len(prefix) + 1 :]: v.astype(np.float64) for k, v in tree.items() if k.startswith(prefix + "/")}


def np_encoder_block(x, tree, mask, block=BLOCK0):
    def sub(name):
        return subtree(tree, f"{block}/{name}")

    ln0, ln1 = sub("LayerNorm_0"), sub("LayerNorm_1")
    d0, d1 = sub("MlpBlock_0/Dense_0"), sub("MlpBlock_0/Dense_1")
    x = x + np_attention(np_layer_norm(x, ln0["scale"], ln0["bias"]), sub("MultiHeadDotProductAttention_0"), mask)
    h = np_layer_norm(x, ln1["scale"], ln1["bias"])
    return x + np_gelu_tanh(h @ d0["kernel"] + d0["bias"]) @ d1["kernel"] + d1["bias"]


def np_conv_nhwc(x, kernel, bias, stride, pad):
    """x (N, H, W, C), kernel (kh, kw, C, O)."""
    kh, kw = kernel.shape[:2]
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel) + bias


def np_group_norm(x, scale, bias):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, GROUPS, c // GROUPS)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + GN_EPS)).reshape(n, h, w, c) * scale + bias


def np_small_stem16(pixels_uint8, tree, stem=STEM):
    """Octo: obs image + all-zero goal image on channels, x / 127.5 - 1, SmallStem16, tokens (N, h*w, F)."""
    goal = np.zeros_like(pixels_uint8)
    x = np.concatenate([pixels_uint8, goal], axis=-1).astype(np.float64) / 127.5 - 1.0
    for i in range(4):
        w = tree[f"{stem}/StdConv_{i}/kernel"].astype(np.float64)
        w = (w - w.mean(axis=(0, 1, 2))) / (w.std(axis=(0, 1, 2)) + STD_EPS)
        x = np_conv_nhwc(x, w, tree[f"{stem}/StdConv_{i}/bias"], stride=2, pad=1)
        x = np_group_norm(x, tree[f"{stem}/GroupNorm_{i}/scale"], tree[f"{stem}/GroupNorm_{i}/bias"])
        x = np.maximum(x, 0)
    x = np_conv_nhwc(x, tree[f"{stem}/embedding/kernel"].astype(np.float64), tree[f"{stem}/embedding/bias"], 1, 0)
    return x.reshape(x.shape[0], -1, x.shape[-1])


def np_octo_readout(tree, spec, pixels, lang, step_mask):
    """Octo 1.5's transformer for one sample, from its description: returns (readout (To, D), all tokens).

    pixels: {cam: (To, H, W, 3) uint8}; lang: (L, Dl); step_mask: (To,) bool.
    Sequence: [task] + per t [obs_primary, obs_wrist, obs_task_language, readout_action].
    """

    def dense(x, name):
        p = subtree(tree, f"{ROOT}/{name}")
        return x @ p["kernel"] + p["bias"]

    task = dense(lang, "task_language_projection") + tree[f"{ROOT}/task_language_pos_embedding"][0]
    tokens, kinds, steps, valid = [task], ["task"] * len(task), [-1] * len(task), [True] * len(task)
    window = len(step_mask)
    cam_tokens = {
        cam: dense(
            np_small_stem16(pixels[cam], tree, f"{ROOT}/observation_tokenizers_{cam}/SmallStem16_0"),
            f"obs_{cam}_projection",
        )
        for cam in spec["cameras"]
    }
    for t in range(window):
        for cam in spec["cameras"]:
            x = cam_tokens[cam][t] + tree[f"{ROOT}/obs_{cam}_pos_embedding"][0, t]
            tokens.append(x)
            kinds += ["obs"] * len(x)
            steps += [t] * len(x)
            valid += [bool(step_mask[t])] * len(x)
        tokens.append(task)  # repeated task tokens: masked by the language mask only
        kinds += ["obs"] * len(task)
        steps += [t] * len(task)
        valid += [True] * len(task)
        tokens.append(tree[f"{ROOT}/readout_action_pos_embedding"][0, t])
        kinds.append("readout")
        steps.append(t)
        valid.append(True)
    x = np.concatenate(tokens).astype(np.float64)
    kinds, steps, valid = np.array(kinds), np.array(steps), np.array(valid)
    kq, kk = kinds[:, None], kinds[None, :]
    causal = steps[None, :] <= steps[:, None]
    mask = (kk == "task") | ((kq != "task") & (kk == "obs") & causal) | ((kq == "readout") & (kk == "readout") & causal)
    mask &= valid[None, :]
    for layer in range(spec["num_layers"]):
        x = np_encoder_block(x, tree, mask, f"{BLOCKS}/encoderblock_{layer}")
    norm = subtree(tree, f"{BLOCKS}/encoder_norm")
    x = np_layer_norm(x, norm["scale"], norm["bias"])
    return x[kinds == "readout"], x



@pytest.fixture
def converted(tmp_path, octo_npz):
    convert(octo_npz, tmp_path / "out")
    return OctoModel.from_pretrained(tmp_path / "out").eval()


def test_encoder_block_matches_numpy_reference(converted, octo_tree):
    rng = np.random.default_rng(1)
    n, d = 23, converted.cfg.token_dim
    x = rng.normal(0, 1, (n, d))
    mask = rng.random((n, n)) < 0.6
    mask[3] = False  # a fully masked row: Octo's finite fill gives a uniform average, not NaN
    expected = np_encoder_block(x, octo_tree, mask)
    with torch.no_grad():
        bias = attention_bias(torch.from_numpy(mask)[None], torch.float32)
        got = converted.transformer.blocks[0](torch.from_numpy(x).float()[None], bias)[0].double().numpy()
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    assert np.isfinite(got[3]).all()


def test_small_stem16_matches_numpy_reference(converted, octo_tree):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    expected = np_small_stem16(pixels, octo_tree)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)[:, None]  # (B, To=1, C, H, W) in [0, 1]
    with torch.no_grad():
        got = converted.observation_tokenizers["primary"](images)[:, 0].double().numpy()
    assert got.shape == (2, 16, 48)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("break_convention", ["exact_gelu", "torch_default_layer_norm_eps"])
def test_reference_rejects_a_broken_convention(converted, octo_tree, break_convention):
    """Negative control: the tolerance is tight enough to catch each convention going wrong."""
    block = converted.transformer.blocks[0]
    if break_convention == "exact_gelu":
        block.mlp[1] = torch.nn.GELU()
    else:
        block.norm1.eps = block.norm2.eps = 1e-5
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (23, converted.cfg.token_dim))
    mask = np.ones((23, 23), dtype=bool)
    expected = np_encoder_block(x, octo_tree, mask)
    with torch.no_grad():
        bias = attention_bias(torch.from_numpy(mask)[None], torch.float32)
        got = block(torch.from_numpy(x).float()[None], bias)[0].double().numpy()
    assert np.abs(got - expected).max() > TOL


def test_full_model_matches_numpy_reference(converted, octo_tree, octo_spec):
    """Token assembly, projections, position embeddings, repeated task tokens, mask, all blocks."""
    rng = np.random.default_rng(3)
    window = 2
    pixels = [
        {cam: rng.integers(0, 256, (window, h, w, 3), dtype=np.uint8) for cam, (h, w) in octo_spec["cameras"].items()}
        for _ in range(2)
    ]
    lang = rng.normal(0, 1, (2, octo_spec["language_tokens"], octo_spec["language_dim"]))
    step_mask = np.array([[False, True], [True, True]])  # sample 0: first timestep is padding
    obs = {
        f"image_{cam}": torch.from_numpy(np.stack([p[cam] for p in pixels])).permute(0, 1, 4, 2, 3).float() / 255
        for cam in octo_spec["cameras"]
    }
    obs["timestep_pad_mask"] = torch.from_numpy(step_mask)
    task = {"language_tokens": torch.from_numpy(lang).float()}
    with torch.no_grad():
        embedding, out = converted.encode(obs, task, return_tokens=True)
    for b in range(2):
        readout, _ = np_octo_readout(octo_tree, octo_spec, pixels[b], lang[b], step_mask[b])
        np.testing.assert_allclose(out["readout_action"].tokens[b, :, 0].double().numpy(), readout, atol=TOL, rtol=0)
        np.testing.assert_allclose(embedding[b].double().numpy(), readout[-1], atol=TOL, rtol=0)
