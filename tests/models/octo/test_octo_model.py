"""The tiny Octo config on CPU: shapes, block-causal behaviour end to end, files."""

from __future__ import annotations

import pytest
import torch

from policylab.models.octo import OctoModel, get_config
from policylab.models.octo.model import example_inputs


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    cfg = get_config("tiny")
    return OctoModel(cfg).eval(), cfg


def run(model, obs, task):
    with torch.no_grad():
        return model(obs, task)


def test_forward_shapes_and_encode(tiny):
    model, cfg = tiny
    obs, task = example_inputs(cfg, batch=3, window=2)
    embedding, out = model.encode(obs, task, return_tokens=True)
    d = cfg.token_dim
    assert embedding.shape == (3, d)
    assert out["task_language"].tokens.shape == (3, cfg.language_tokens, d)
    assert out["obs_primary"].tokens.shape == (3, 2, 16, d)
    assert out["obs_wrist"].tokens.shape == (3, 2, 4, d)
    assert out["obs_task_language"].tokens.shape == (3, 2, cfg.language_tokens, d)
    assert out["readout_action"].tokens.shape == (3, 2, 1, d)
    torch.testing.assert_close(embedding, out["readout_action"].tokens[:, -1].mean(1))


def test_future_does_not_reach_the_past(tiny):
    model, cfg = tiny
    obs, task = example_inputs(cfg, batch=2, window=3)
    before = run(model, obs, task)
    obs["image_primary"][:, 2] = torch.rand_like(obs["image_primary"][:, 2])
    after = run(model, obs, task)
    for name in ("obs_primary", "obs_wrist", "readout_action"):
        torch.testing.assert_close(after[name].tokens[:, :2], before[name].tokens[:, :2])
    assert not torch.allclose(after["readout_action"].tokens[:, 2], before["readout_action"].tokens[:, 2])


def test_readouts_read_but_do_not_write(tiny):
    model, cfg = tiny
    obs, task = example_inputs(cfg, batch=2, window=2)
    before = run(model, obs, task)
    with torch.no_grad():
        model.pos_embeddings["readout_action"].add_(1.0)
    after = run(model, obs, task)
    for name in ("task_language", "obs_primary", "obs_wrist", "obs_task_language"):
        torch.testing.assert_close(after[name].tokens, before[name].tokens)
    assert not torch.allclose(after["readout_action"].tokens, before["readout_action"].tokens)


def test_padded_timestep_is_ignored_and_outputs_stay_finite(tiny):
    model, cfg = tiny
    obs, task = example_inputs(cfg, batch=2, window=2)
    obs["timestep_pad_mask"] = torch.tensor([[False, True], [False, True]])
    task["language_mask"] = torch.tensor([False, True])  # sample 0: task rows are fully masked
    before = run(model, obs, task)
    obs["image_primary"][:, 0] = torch.rand_like(obs["image_primary"][:, 0])
    obs["image_wrist"][:, 0] = torch.rand_like(obs["image_wrist"][:, 0])
    after = run(model, obs, task)
    torch.testing.assert_close(after["readout_action"].tokens[:, 1], before["readout_action"].tokens[:, 1])
    assert all(torch.isfinite(g.tokens).all() for g in after.values())


def test_goal_image_and_missing_language(tiny):
    model, cfg = tiny
    obs, task = example_inputs(cfg, batch=2, window=2)
    no_goal = model.encode(obs, task)
    zero_goal = model.encode(obs, {**task, "goal_primary": torch.zeros(2, 3, 64, 64)})
    torch.testing.assert_close(no_goal, zero_goal)  # a missing goal is a zero image, as in Octo
    assert not torch.allclose(no_goal, model.encode(obs, {**task, "goal_primary": torch.ones(2, 3, 64, 64)}))
    out = model(obs, {})  # no language: the language groups are skipped
    assert "task_language" not in out
    assert "obs_task_language" not in out


def test_shape_errors_name_the_input(tiny):
    model, cfg = tiny
    obs, task = example_inputs(cfg, batch=2, window=2)
    with pytest.raises(ValueError, match="image_wrist"):
        model({**obs, "image_wrist": torch.zeros(2, 2, 3, 48, 48)}, task)
    with pytest.raises(ValueError, match="max_horizon"):
        model(*example_inputs(cfg, batch=1, window=cfg.max_horizon + 1))
    with pytest.raises(ValueError, match="language_tokens"):
        model(obs, {"language_tokens": torch.zeros(2, 3, cfg.language_dim)})


def test_save_and_load_pretrained(tiny, tmp_path):
    model, cfg = tiny
    model.save_pretrained(tmp_path)
    loaded = OctoModel.from_pretrained(tmp_path).eval()
    assert loaded.cfg == cfg
    obs, task = example_inputs(cfg, batch=2, window=2)
    torch.testing.assert_close(loaded.encode(obs, task), model.encode(obs, task))
    assert OctoModel.from_pretrained(tmp_path, action_head=None).action_head is None


def test_trains(tiny):
    model, cfg = tiny
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    obs, task = example_inputs(cfg, batch=4, window=2)
    target = torch.randn(4, cfg.token_dim)
    losses = []
    for _ in range(5):
        loss = (model.encode(obs, task) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert model.observation_tokenizers["primary"].stem.convs[0].weight.grad is not None


def test_action_head_shapes(tiny):
    model, cfg = tiny
    size = cfg.action_head.action_dim * cfg.action_head.action_horizon
    eps = model.action_head(torch.randn(3, cfg.token_dim), torch.randn(3, size), torch.rand(3, 1))
    assert eps.shape == (3, size)
