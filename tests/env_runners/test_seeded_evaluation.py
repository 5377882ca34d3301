"""Reproducible evaluation: the runner seeds the policy's noise from each episode's seed (one
generator per env), so an episode's trajectory depends on its seed and the policy only (not on
earlier runs, torch's global generator or n_envs), and two eval.py runs of one checkpoint on the
same seeds give identical scores. A policy without a `generator` argument keeps working, unseeded."""

import json

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

import policylab.envs.pusht  # noqa: F401  (registers the PushT ids)
from policylab.common.checkpoint import save_checkpoint
from policylab.env_runners.gym_runner import GymEnvRunner
from policylab.evaluate import main as eval_main
from tests.helpers import make_pusht_store
from tests.policies.test_contract import build

TO, TA, MAX_STEPS = 2, 8, 24
SEEDS = [100000, 100001, 100002]


class NoisyPolicy:
    """Moves the agent by 40 px of Gaussian noise per action, drawn from `generator`."""

    device = torch.device("cpu")

    def predict_action(self, obs, generator=None):
        pos = obs["agent_pos"][:, -1:]
        return {"action": pos + 40 * randn_tensor((pos.shape[0], TA, 2), generator=generator)}


class UnseededNoisyPolicy:
    device = torch.device("cpu")

    def predict_action(self, obs):
        pos = obs["agent_pos"][:, -1:]
        return {"action": pos + 40 * torch.randn(pos.shape[0], TA, 2)}


def trajectories(policy, tmp_path, n_envs: int, global_seed: int, n_train: int = 0,
                 batches: list | None = None) -> tuple[dict, dict]:
    """({seed: agent positions the policy saw (n, 2)}, metrics) of the 3 test episodes; `batches`
    collects the seeds of each policy call."""
    runner = GymEnvRunner(str(tmp_path), env_id="policylab.envs.pusht:policylab/PushTKeypoints-v0",
                          env_kwargs={"legacy": True}, n_obs_steps=TO, n_action_steps=TA, max_steps=MAX_STEPS,
                          n_train=n_train, n_test=len(SEEDS), n_envs=n_envs, n_train_vis=0, n_test_vis=0,
                          vector_env="sync")
    seen = {s: [] for s in SEEDS}

    def observe(seeds, obs):
        if batches is not None:
            batches.append(list(seeds))
        for seed, pos in zip(seeds, obs["agent_pos"][:, -1]):
            if seed in seen:
                seen[seed].append(pos)

    torch.manual_seed(global_seed)
    try:
        metrics = runner.run(policy, observe=observe)
    finally:
        runner.close()
    return {s: torch.stack(p) for s, p in seen.items()}, metrics


def test_episode_noise_comes_from_its_seed(tmp_path):
    first, metrics = trajectories(NoisyPolicy(), tmp_path, n_envs=2, global_seed=0)
    assert all(len(p) == MAX_STEPS // TA for p in first.values())  # each decision seen once, padding never
    for n_envs, global_seed in ((2, 1), (3, 2), (1, 3)):  # again, and in other chunks
        again, metrics_again = trajectories(NoisyPolicy(), tmp_path, n_envs=n_envs, global_seed=global_seed)
        assert metrics_again == metrics
        assert all(torch.equal(again[s], first[s]) for s in SEEDS)
    assert not torch.equal(first[SEEDS[0]], first[SEEDS[1]])
    a, _ = trajectories(UnseededNoisyPolicy(), tmp_path, n_envs=2, global_seed=0)
    b, _ = trajectories(UnseededNoisyPolicy(), tmp_path, n_envs=2, global_seed=1)
    assert not all(torch.equal(a[s], b[s]) for s in SEEDS)  # without the generator: the global RNG's noise


def test_two_eval_runs_of_one_checkpoint_give_identical_scores(tmp_path):
    store = make_pusht_store(tmp_path / "pusht.zarr", lengths=[20, 24])
    cfg, policy, _ = build("diffusion_edm", "pusht_lowdim", None, store)
    checkpoint = save_checkpoint(tmp_path / "checkpoints" / "latest", cfg, policy)
    logs = []
    for run, n_envs in enumerate((2, 1)):
        torch.manual_seed(run)
        out = tmp_path / f"eval{run}"
        eval_main([f"checkpoint={checkpoint}", f"output_dir={out}", "device=cpu", "n_train=0", "n_test=2",
                   "n_test_vis=0", "max_steps=16", f"n_envs={n_envs}", "vector_env=sync"])
        logs.append(json.loads((out / "eval_log.json").read_text()))
    assert logs[0] == logs[1] and set(logs[0]) >= {"test/sim_max_reward_100000", "test/sim_max_reward_100001"}
    assert np.isfinite(logs[0]["test/mean_score"])


def test_a_test_episode_never_shares_a_batch_with_train_episodes(tmp_path):
    """A network's output for one row moves at float rounding with the rows batched beside it, so the
    test episodes run in their own chunks: their trajectories are the same whatever n_train is."""
    store = make_pusht_store(tmp_path / "pusht.zarr", lengths=[20, 24])
    _, policy, _ = build("diffusion_edm", "pusht_lowdim", None, store)
    policy.eval()
    alone, metrics = trajectories(policy, tmp_path / "a", n_envs=2, global_seed=0)
    batches = []
    beside, metrics_beside = trajectories(policy, tmp_path / "b", n_envs=2, global_seed=1, n_train=1,
                                          batches=batches)
    assert [set(b) <= set(SEEDS) or set(b) == {0} for b in batches] == [True] * len(batches)
    assert any(set(b) == {0} for b in batches)  # the train episode ran, alone (its chunk padded)
    assert all(torch.equal(alone[s], beside[s]) for s in SEEDS)
    assert {k: v for k, v in metrics_beside.items() if k.startswith("test/")} == metrics
