"""ConRFT's update: Cal-QL gap and TD target by hand, the critic ensemble, augmentation, presets,
and a learning test where RL fine-tuning must beat the behaviour-cloned actor."""

import copy
import functools
import math
from typing import ClassVar

import numpy as np
import pytest
import torch

from policylab.common.shape_meta import ShapeMeta
from policylab.data.normalizer import LinearNormalizer, SingleFieldLinearNormalizer
from policylab.data.replay_buffer import ReplayBuffer
from policylab.models.conrft_mlp import ConRFTMLP
from policylab.models.critic import CriticEnsemble, CriticObsEncoder
from policylab.policies.consistency import ConsistencyBCPolicy
from policylab.rl.buffers import MixedSampler, OnlineReplayStore
from policylab.rl.conrft import ConRFT, augment, calql_gap, td_target
from policylab.rl.transitions import TransitionSampler, TransitionSpec
from tests.helpers import compose_config, conrft_config


def test_calql_gap_by_hand():
    q_data = torch.tensor([[1.0, 0.0]])                          # E=1, B=2
    q_cand = torch.tensor([[[0.0, 2.0], [-3.0, -1.0]]])          # N=2 candidates per state
    mc = torch.tensor([0.5, -2.0])
    gap, ood = calql_gap(q_data, q_cand, mc, temp=1.0)
    # state 0: candidates floored at 0.5 -> [0.5, 2.0], plus q_data 1.0
    ood0 = math.log((math.exp(0.5) + math.exp(2.0) + math.exp(1.0)) / 3)
    # state 1: floored at -2 -> [-2, -1], plus 0.0
    ood1 = math.log((math.exp(-2.0) + math.exp(-1.0) + math.exp(0.0)) / 3)
    assert ood[0].tolist() == pytest.approx([ood0, ood1], abs=1e-6)
    assert gap.item() == pytest.approx(((ood0 - 1.0) + (ood1 - 0.0)) / 2, abs=1e-6)
    # equal values: the soft maximum is their mean, so the gap vanishes
    gap_eq, _ = calql_gap(torch.ones(2, 3), torch.ones(2, 3, 4), torch.zeros(3), temp=0.5)
    assert gap_eq.item() == pytest.approx(0.0, abs=1e-6)


def test_td_target_takes_the_ensemble_minimum_and_masks_terminals():
    next_q = torch.tensor([[1.0, 5.0, 2.0], [3.0, 4.0, -1.0]])
    target = td_target(torch.tensor([0.0, 1.0, 0.5]), torch.tensor([0.9, 0.81, 0.9]),
                       torch.tensor([0.0, 0.0, 1.0]), next_q)
    assert target.tolist() == pytest.approx([0.9, 1.0 + 0.81 * 4.0, 0.5])


def low_dim_critic(shared_head=False, ensemble_size=2):
    shape_meta = {"obs": {"s": {"shape": [3]}, "v": {"shape": [1]}}, "action": {"shape": [2]}}
    return CriticEnsemble(shape_meta, n_obs_steps=2, action_dim=4, obs_encoder=functools.partial(CriticObsEncoder),
                          hidden_dims=(16, 16), ensemble_size=ensemble_size, shared_head=shared_head)


@pytest.mark.parametrize("shared_head", [False, True])
def test_critic_members_are_independent_mlps(shared_head):
    torch.manual_seed(0)
    critic = low_dim_critic(shared_head)
    obs = {"s": torch.randn(5, 2, 3), "v": torch.randn(5, 2, 1)}
    action = torch.rand(5, 4) * 2 - 1
    q = critic(obs, action)
    assert q.shape == (2, 5)
    assert not torch.allclose(q[0], q[1])
    # member 0 by hand: [Dense -> LayerNorm -> tanh] x 2 with its own slices of the batched weights
    x = torch.cat([critic.encoder(obs), action], -1)
    for dense, norm in [(critic.trunk[0], critic.trunk[1]), (critic.trunk[3], critic.trunk[4])]:
        x = x @ dense.weight[0] + dense.bias[0]
        x = torch.tanh(torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6) * norm.weight[0] + norm.bias[0])
    head = x @ critic.head.weight[0] + critic.head.bias[0]
    torch.testing.assert_close(q[0], head.squeeze(-1), atol=1e-5, rtol=1e-5)
    # N candidate actions per state fold into the batch
    many = critic.q_from_features(critic.encode(obs), action.unsqueeze(1).expand(-1, 3, -1))
    torch.testing.assert_close(many, q.unsqueeze(-1).expand(-1, -1, 3), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in critic.head.parameters()) == (17 if shared_head else 34)


def test_critic_refuses_a_wrong_action_size():
    with pytest.raises(ValueError, match="dim 4"):
        low_dim_critic()({"s": torch.zeros(1, 2, 3), "v": torch.zeros(1, 2, 1)}, torch.zeros(1, 3))


def test_random_shift_is_a_crop_of_the_padded_image():
    images = torch.arange(2 * 2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 2, 3, 8, 8)
    obs = {"cam": images, "s": torch.zeros(2, 2, 1)}
    assert augment(obs, ["cam"], 0)["cam"] is images
    out = augment(obs, ["cam"], 2, torch.Generator().manual_seed(0))["cam"]
    padded = torch.nn.functional.pad(images.reshape(2, 6, 8, 8), (2,) * 4, mode="replicate")
    for b in range(2):
        crops = [padded[b, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[b].reshape(6, 8, 8), c) for c in crops)
    assert out.shape == images.shape


@pytest.mark.parametrize("preset, stage1, stage2", [
    ("paper", (1.0, 0.1, 0.01), (0.5, 1.0)),
    ("code", (1.0, 0.0, 0.1), (0.1, 1.0)),
    ("anchored", (1.0, 0.1, 0.01), (1.0, 0.1)),
    (None, (1.0, 0.1, 0.01), (1.0, 0.1)),  # the default is `anchored`
])
def test_presets(preset, stage1, stage2):
    cfg = compose_config(["workspace=rl_online", "task=pick_cube_lowdim"] + ([f"conrft={preset}"] if preset else []))
    off, on = cfg.conrft.offline, cfg.conrft.online
    assert (off.bc_weight, off.q_weight, off.cql_alpha) == stage1
    assert off.calql
    assert (on.bc_weight, on.q_weight) == stage2
    assert not on.calql
    assert cfg.conrft.common.discount == cfg.reward.gamma == 0.98
    assert cfg.conrft.common.tau == 0.005
    assert cfg.training.publish_every == 50
    assert cfg.training.training_starts == 100


class Bandit:
    """One-step task: observe s in [-1, 1], succeed (reward 1) iff |a - s| < 0.25.

    Half the demonstrations succeed (a = s), half do the mirror move (a = -s): behaviour cloning
    learns their mean, a ~ 0, which succeeds only for |s| < 0.25; a critic tells the modes apart.
    """

    shape_meta: ClassVar[dict] = {"obs": {"s": {"shape": [1]}}, "action": {"shape": [1]}}

    @staticmethod
    def reward(s, a):
        return (np.abs(a - s) < 0.25).astype(np.float32)

    @classmethod
    def demos(cls, n, rng) -> ReplayBuffer:
        buffer = ReplayBuffer.create_empty_numpy()
        for i in range(n):
            s = rng.uniform(-1, 1, (1, 1)).astype(np.float32)
            a = s if i % 2 == 0 else -s
            buffer.add_episode({"s": s, "action": a.astype(np.float32), "reward": cls.reward(s, a)[:, 0],
                                "terminal": np.ones(1, np.uint8)})
        return buffer


def bandit_actor():
    policy = ConsistencyBCPolicy(Bandit.shape_meta, horizon=1, n_obs_steps=1, n_action_steps=1,
                                 model=functools.partial(ConRFTMLP, hidden_dims=(64, 64), cond_proj_dim=16))
    normalizer = LinearNormalizer()
    normalizer["s"] = SingleFieldLinearNormalizer.create_identity(1)
    normalizer["action"] = SingleFieldLinearNormalizer.create_identity(1)
    policy.set_normalizer(normalizer)
    return policy


def success_rate(policy, n=400, seed=1):
    s = torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (n, 1, 1)).astype(np.float32))
    a = policy.predict_action({"s": s}, generator=torch.Generator().manual_seed(seed))["action"]
    return float(Bandit.reward(s.numpy()[:, 0], a.numpy()[:, 0]).mean())


def test_rl_fine_tuning_beats_behaviour_cloning(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    demos = Bandit.demos(200, rng)
    meta = ShapeMeta.parse(Bandit.shape_meta)
    spec = TransitionSpec(horizon=1, n_obs_steps=1, n_action_steps=1, gamma=0.9, reward_neg=0.0, is_sparse_reward=True)
    demo_sampler = TransitionSampler(demos, meta, spec)
    gen = torch.Generator().manual_seed(0)

    actor = bandit_actor()
    bc_opt = torch.optim.Adam(actor.parameters(), lr=3e-3)
    for _ in range(300):  # the supervised stage
        batch = demo_sampler.sample(64, gen)
        loss, _ = actor.compute_loss(batch)
        bc_opt.zero_grad()
        loss.backward()
        bc_opt.step()
    actor.eval()
    bc_success = success_rate(actor)
    actor.train()

    critic = CriticEnsemble(Bandit.shape_meta, 1, 1, functools.partial(CriticObsEncoder, proprio_dim=16),
                            hidden_dims=(64, 64))
    cfg = conrft_config(bc_weight=1.0, q_weight=0.1, calql=True, cql_alpha=0.01, actor_lr=1e-3, critic_lr=1e-3)
    agent = ConRFT(actor, critic, cfg)
    for _ in range(150):  # Stage I on the demos
        agent.train_step(lambda: demo_sampler.sample(64, gen), gen)

    agent.cfg = conrft_config(bc_weight=0.1, q_weight=1.0, calql=False, actor_lr=1e-3, critic_lr=1e-3)
    online = OnlineReplayStore(tmp_path / "online.zarr", meta, spec)
    mixed = MixedSampler(demo_sampler, online.sampler, 0.5)
    for _ in range(30):  # Stage II: act, store, update
        actor.eval()
        s = rng.uniform(-1, 1, (8, 1, 1)).astype(np.float32)
        a = actor.predict_action({"s": torch.from_numpy(s)})["action"].numpy()[:, 0]
        actor.train()
        for i in range(8):
            online.add_episode({"s": s[i], "action": a[i][None], "reward": Bandit.reward(s[i], a[i][None])[:, 0],
                                "terminal": np.ones(1, np.uint8)})
        for _ in range(5):
            metrics = agent.train_step(lambda: mixed.sample(64, gen), gen)
    actor.eval()
    rl_success = success_rate(actor)
    assert math.isfinite(metrics["critic_loss"])
    assert online.n_episodes == 240
    assert bc_success < 0.5, bc_success          # the mean of two modes
    assert rl_success > bc_success + 0.3, (bc_success, rl_success)


def window_agent(**overrides) -> ConRFT:
    """ConRFT's shape on a 1-d toy: 2 stacked observations, a 2-step window, its index 1 executed."""
    actor = ConsistencyBCPolicy(Bandit.shape_meta, horizon=2, n_obs_steps=2, n_action_steps=1,
                                model=functools.partial(ConRFTMLP, horizon=2, hidden_dims=(16, 16), cond_proj_dim=8))
    normalizer = LinearNormalizer()
    normalizer["s"] = SingleFieldLinearNormalizer.create_identity(1)
    normalizer["action"] = SingleFieldLinearNormalizer.create_identity(1)
    actor.set_normalizer(normalizer)
    critic = CriticEnsemble(Bandit.shape_meta, 2, 1, functools.partial(CriticObsEncoder, proprio_dim=8),
                            hidden_dims=(16, 16))
    return ConRFT(actor, critic, conrft_config("online", **overrides))


def window_batch(seed: int, b: int = 6) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"obs": {"s": torch.rand(b, 2, 1, generator=g)}, "next_obs": {"s": torch.rand(b, 2, 1, generator=g)},
            "action": torch.rand(b, 2, 1, generator=g) * 2 - 1, "reward": torch.rand(b, generator=g),
            "discount": torch.full((b,), 0.98), "done": torch.zeros(b), "mc_return": torch.zeros(b)}


def trained_window_agent(**overrides) -> ConRFT:
    """`window_agent` after 3 learner iterations (ratio 2: 6 updates, 3 of them joint)."""
    torch.manual_seed(0)
    agent = window_agent(**overrides)
    seeds = iter(range(100))
    for _ in range(3):
        agent.train_step(lambda: window_batch(next(seeds)))
    return agent


def adam_steps(agent: ConRFT) -> set[int]:
    return {int(agent.actor_optimizer.state[p]["step"]) for p in agent.actor_optimizer.param_groups[0]["params"]}


@pytest.mark.parametrize("every_update", [False, True])
def test_actor_adam_steps_on_critic_only_updates_with_the_switch(every_update):
    agent = trained_window_agent(actor_step_every_update=every_update)
    # ConRFT's optax update steps both Adams on every update: twice per iteration at ratio 2
    assert adam_steps(agent) == ({6} if every_update else {3})
    params = [p for p in agent.actor_optimizer.param_groups[0]["params"]]
    before = [p.detach().clone() for p in params]
    agent.update(window_batch(99), update_actor=False)
    if not every_update:
        assert all(torch.equal(p, q) for p, q in zip(params, before, strict=True))
        return
    # a zero gradient: Adam's moments decay one step and the momentum moves the actor, by hand
    lr, (b1, b2), eps = 3e-4, (0.9, 0.999), 1e-8
    moved = 0
    for p, old in zip(params, before, strict=True):
        state = agent.actor_optimizer.state[p]
        t = int(state["step"])
        m, v = state["exp_avg"], state["exp_avg_sq"]  # after this step: b1 m_prev, b2 v_prev
        expected = old - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
        torch.testing.assert_close(p.detach(), expected, atol=1e-7, rtol=1e-6)
        moved += int(not torch.equal(p, old))
    assert t == 7 and moved == len(params)


@pytest.mark.parametrize("before_critic_step", [False, True])
def test_both_losses_at_the_pre_update_parameters(before_critic_step):
    agent = trained_window_agent(actor_loss_before_critic_step=before_critic_step)
    # by hand, on a copy at the pre-update parameters: critic loss, then the actor loss, same draws
    reference = copy.deepcopy(agent)
    batch = window_batch(50)
    torch.manual_seed(1)
    b = reference.prepare(batch)
    critic_loss, _ = reference.critic_loss(b, b["nobs"], b["nnext"])
    actor_loss, _ = reference.actor_loss(b, b["nobs"])
    actor_loss.backward()
    torch.manual_seed(1)
    metrics = agent.update(batch)
    assert metrics["critic_loss"] == pytest.approx(critic_loss.item(), rel=1e-6)
    actor_params = agent.actor_optimizer.param_groups[0]["params"]
    same = [torch.allclose(p.grad, q.grad, atol=1e-7, rtol=1e-5) for p, q in
            zip(actor_params, reference.actor_optimizer.param_groups[0]["params"], strict=True)]
    if before_critic_step:
        assert metrics["actor_loss"] == pytest.approx(actor_loss.item(), rel=1e-6)
        assert all(same)
    else:  # policylab's order: the actor's Q term reads the critic after its step
        assert metrics["actor_loss"] != pytest.approx(actor_loss.item(), rel=1e-6)
        assert not all(same)


def test_executed_action_bc_weight_is_conrfts():
    torch.manual_seed(0)
    plain, code = window_agent(), window_agent(bc_executed_weight=1.0)
    assert plain.bc_step_weights() is None
    assert code.bc_step_weights().tolist() == [0.5, 1.0]  # T = 2, To = 2: the executed index is 1
    actor = code.actor
    chunk = torch.tensor([[[0.2], [-0.4]], [[0.9], [0.1]], [[-0.3], [-0.8]]])
    cond = actor.encode_obs(actor.normalize_obs({"s": torch.tensor([[[0.1], [0.3]], [[0.5], [0.7]], [[0.2], [0.4]]])}))
    torch.manual_seed(3)
    loss = actor.bc_loss(chunk, cond, code.bc_step_weights())
    torch.manual_seed(3)
    unweighted = actor.bc_loss(chunk, cond)
    # ConRFT's policy_loss_fn by hand on the same draws: the Karras weight snr + 1/sd^2 times the
    # mean over Da of the executed action's squared error, batch-averaged, weight 1
    torch.manual_seed(3)
    idx = torch.randint(1, actor.num_scales, (3,))
    sigma = actor.train_sigmas[idx]
    noisy = chunk + sigma.reshape(-1, 1, 1) * torch.randn_like(chunk)
    error = (actor.consistency_fn(noisy, sigma, cond) - chunk).pow(2)
    karras = 1 / sigma ** 2 + 1 / 0.5 ** 2
    conrft = (karras * error[:, 1].mean(-1)).mean()
    other = (karras * error[:, 0].mean(-1)).mean()
    assert loss.item() == pytest.approx(conrft.item() + 0.5 * other.item(), rel=1e-6)
    assert unweighted.item() == pytest.approx(0.5 * conrft.item() + 0.5 * other.item(), rel=1e-6)
    # the executed action's gradient: ConRFT's, twice the plain mean's
    out = actor.consistency_fn(noisy, sigma, cond).detach().requires_grad_(True)
    for weights, scale in [(code.bc_step_weights(), 1.0), (torch.tensor([0.5, 0.5]), 0.5)]:
        weighted = (karras * ((out - chunk).pow(2).mean(-1) @ weights)).mean()
        (grad,) = torch.autograd.grad(weighted, out)
        torch.testing.assert_close(grad[:, 1, 0], scale * 2 * (out - chunk)[:, 1, 0].detach() * karras / 3)


def test_code_preset_carries_conrfts_update():
    for preset, expected in [("code", (True, True, 1.0)), ("anchored", (False, False, None)),
                             ("paper", (False, False, None))]:
        common = compose_config(["workspace=rl_online", "task=pick_cube_lowdim", f"conrft={preset}"]).conrft.common
        assert (common.actor_step_every_update, common.actor_loss_before_critic_step,
                common.bc_executed_weight) == expected
