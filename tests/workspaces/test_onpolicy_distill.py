"""On-policy distillation (policylab/workspaces/onpolicy_distill.py) on a tiny student and teacher
and real PushT rollouts: a round records the student's rollouts on training seeds (never test
seeds) into the pool; each batch holds exactly round(pool_share * B) pool observations; the teacher
labels exactly the batch's observations, on the student's own noise; the student moves toward the
teacher there; a run stopped and resumed (with an episode recorded after its checkpoint) equals the
uninterrupted run; eval.py loads the result."""

from __future__ import annotations

import json
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from policylab.common.logging import read_logs
from policylab.data.replay_buffer import ReplayBuffer
from policylab.evaluate import main as eval_main
from policylab.policies.base import BasePolicy
from policylab.policies.consistency_ctm import ConsistencyCTMPolicy
from policylab.workspaces.base import train
from policylab.workspaces.onpolicy_distill import (
    POOL,
    OnPolicyDistillWorkspace,
    distill_loss,
    recording_seeds,
)
from tests.helpers import compose_config
from tests.policies.test_contract import build
from tests.policies.test_edm_ctm import TO, PointMassF, T, ctm, edm

BATCH, SHARE = 8, 0.5


@pytest.fixture(scope="module")
def checkpoints(store, tmp_path_factory):
    """A tiny consistency_ctm student (warm-started from its untrained EDM teacher) and that teacher."""
    from policylab.common.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    cfg, student, _ = build("consistency_ctm", "pusht_lowdim", None, store, teacher_dir=root)
    return SimpleNamespace(student=save_checkpoint(root / "student", cfg, student), teacher=cfg.policy.teacher)


def config(store, checkpoints, *extra):
    return compose_config(["workspace=onpolicy_distill", "task=pusht_lowdim", f"task.dataset.zarr_path={store}",
                           f"distill.student={checkpoints.student}", f"distill.teacher={checkpoints.teacher}",
                           "distill.steps_per_round=3", "training.eval_every=3", "training.checkpoint_every=3", "distill.record_episodes=2", f"distill.pool_share={SHARE}",
                           "training.num_steps=6", f"training.batch_size={BATCH}", "training.device=cpu",
                           "logging.mode=disabled", "task.env_runner.n_train=0", "task.env_runner.n_test=2",
                           "task.env_runner.n_test_vis=0", "task.env_runner.n_envs=2",
                           "task.env_runner.vector_env=sync", "task.env_runner.max_steps=16", *extra])


def test_a_round_records_training_seeds_and_the_teacher_labels_the_batch(store, checkpoints, tmp_path):
    ws = OnPolicyDistillWorkspace(config(store, checkpoints), tmp_path / "run")
    ws.start_run()
    try:
        ws.build()
        ws.start()
        recorded = ws._record(0)
        seeds = ws.pool.store.episode_meta("episode_seeds")
        assert list(seeds) == [200000, 200001] and recorded["pool/episodes"] == 2
        assert not set(seeds) & set(range(100000, 100002))  # the eval runner's test seeds
        assert 2 <= len(ws.pool) <= 2 * 16 // 4 and "record/mean_score" in recorded  # a row per decision taken
        with pytest.raises(ValueError, match="distill.record_start_seed"):
            recording_seeds(ws.cfg.task.env_runner, SimpleNamespace(record_start_seed=99999, record_episodes=2), 0)

        seen = {"teacher": [], "student": []}
        solve, jump = ws.policy.teacher.solve, ws.policy.trajectory_fn
        ws.policy.teacher.solve = lambda x, cond, **kw: seen["teacher"].append((x, cond)) or solve(x, cond, **kw)
        ws.policy.trajectory_fn = lambda x, *args, **kw: seen["student"].append(x) or jump(x, *args, **kw)
        state = ws.generator.get_state()
        metrics = ws.train_step()
        obs, n_pool = ws.next_batch(torch.Generator().set_state(state))  # the batch that step drew
        assert n_pool == metrics["pool_rows_in_batch"] == round(SHARE * BATCH)
        for k, rows in obs.items():
            pool = ws.pool.obs[k].flatten(1)
            in_pool = (rows.flatten(1)[:, None] == pool[None]).all(-1).any(-1)
            assert in_pool[BATCH - n_pool:].all() and not in_pool[:BATCH - n_pool].any(), k
        [(x, cond)], [x_student] = seen["teacher"], seen["student"]
        with torch.no_grad():
            assert torch.equal(cond, ws.policy.teacher.encode_obs(ws.policy.normalize_obs(obs)))
        assert torch.equal(x, x_student) and x.shape[0] == BATCH  # every observation, the student's own noise
    finally:
        ws.close()
        ws.end_run()


class Demos:
    """Demo windows whose observation is 0."""

    def __len__(self) -> int:
        return 256

    def get_batch(self, idx):
        return {"obs": {"state": torch.zeros(len(idx), TO, 1)}, "action": torch.zeros(len(idx), T, 1)}


class ToyPool:
    def __init__(self, obs: dict):
        self.obs = obs

    def __len__(self) -> int:
        return len(self.obs["state"])


def test_the_student_moves_toward_the_teacher_on_the_pool():
    """Moved from the bench script's test: the workspace's batches (half demo windows, half pool
    observations off the demos), the teacher labelling exactly those rows, and the student's error
    on the pool halving in 30 steps."""
    torch.manual_seed(0)
    teacher = edm(model=partial(PointMassF, from_obs=True))  # its action chunk repeats the observation
    labelled = []
    teacher.model.register_forward_hook(lambda m, args, kwargs, out: labelled.append(kwargs["global_cond"][:, 0]),
                                        with_kwargs=True)
    student = ctm(ctm_weight=0.0, dsm_weight=0.0, endpoint_weight=1.0)
    object.__setattr__(student, "teacher", teacher)
    stand_in = SimpleNamespace(c={"training": SimpleNamespace(batch_size=64), "distill": SimpleNamespace(pool_share=0.5)},
                               dataset=Demos(), pool=ToyPool({"state": torch.full((50, TO, 1), 0.5)}),
                               generator=torch.Generator().manual_seed(1), device=torch.device("cpu"))

    def error_on_pool() -> float:
        with torch.no_grad():
            pred = student.predict_action(stand_in.pool.obs, generator=torch.Generator().manual_seed(0))["action_pred"]
        return (pred - 0.5).abs().mean().item()

    before = error_on_pool()
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    for _ in range(30):
        obs, n_pool = OnPolicyDistillWorkspace.next_batch(stand_in)
        loss = distill_loss(student, obs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    rows = torch.stack(labelled)  # every teacher evaluation: 30 steps x 16 sampler evaluations, 64 samples
    assert n_pool == 32 and rows.shape == (30 * 16, 64)
    assert torch.all(rows[:, :32] == 0) and torch.all(rows[:, 32:] == 0.5)
    assert error_on_pool() < 0.5 * before, (before, error_on_pool())


def weights(run_dir):
    return load_file(str(run_dir / "checkpoints" / "latest" / "model.safetensors"))


def test_a_stopped_and_resumed_run_equals_the_uninterrupted_one(store, checkpoints, tmp_path):
    train(config(store, checkpoints), tmp_path / "full")
    train(config(store, checkpoints, "training.num_steps=3"), tmp_path / "part")  # stops after round 0
    with ReplayBuffer.create_from_path(tmp_path / "part" / POOL, mode="a") as pool:  # killed mid-recording of round 1
        pool.add_episode({k: np.ones((2, *pool[k].shape[1:]), np.float32) for k in pool.keys()},  # noqa: SIM118 (no __iter__)
                         episode_meta={"episode_seeds": np.int64(7), "episode_rounds": np.int64(1)})
    train(config(store, checkpoints, "training.resume=true"), tmp_path / "part")

    full, part = weights(tmp_path / "full"), weights(tmp_path / "part")
    assert full.keys() == part.keys() and all(torch.equal(full[k], part[k]) for k in full)
    pools = [ReplayBuffer.create_from_path(tmp_path / run / POOL) for run in ("full", "part")]
    assert [list(p.episode_meta("episode_seeds")) for p in pools] == [[200000, 200001, 200002, 200003]] * 2
    assert all(np.array_equal(pools[0][k][:], pools[1][k][:]) for k in pools[0].keys())  # noqa: SIM118
    losses = [{r["global_step"]: r["train_loss"] for r in read_logs(tmp_path / run / "logs.jsonl") if "train_loss" in r}
              for run in ("full", "part")]
    assert losses[0] == losses[1] and sorted(losses[0]) == [3, 6]  # log_every 50: each round's end
    rounds = [r for r in read_logs(tmp_path / "full" / "logs.jsonl") if "test/mean_score" in r]
    assert [r["global_step"] for r in rounds] == [3, 6] and all("record/mean_score" in r for r in rounds)

    latest = tmp_path / "part" / "checkpoints" / "latest"
    assert isinstance(BasePolicy.from_checkpoint(latest), ConsistencyCTMPolicy)
    eval_main([f"checkpoint={latest}", f"output_dir={tmp_path / 'eval'}", "device=cpu", "n_test=1", "max_steps=8"])
    assert "test/mean_score" in json.loads((tmp_path / "eval" / "eval_log.json").read_text())


def test_a_round_on_camera_observations_pools_the_frames_the_student_acted_on(store, tmp_path):
    """Image PushT (docs/one_step.md, "On cameras"): the pool holds the 96x96 frames and agent
    positions of the student's rollouts, and a batch mixes them with demo windows of the same shapes."""
    from policylab.common.checkpoint import save_checkpoint

    cfg, student, _ = build("consistency_ctm", "pusht_image", None, store, teacher_dir=tmp_path)
    ckpts = SimpleNamespace(student=save_checkpoint(tmp_path / "student", cfg, student), teacher=cfg.policy.teacher)
    ws = OnPolicyDistillWorkspace(config(store, ckpts, "task=pusht_image"), tmp_path / "run")
    ws.start_run()
    try:
        ws.build()
        ws.start()
        recorded = ws._record(0)
        assert recorded["pool/episodes"] == 2 and set(ws.pool.obs) == {"image", "agent_pos"}
        assert ws.pool.obs["image"].shape[1:] == (cfg.n_obs_steps, 3, 96, 96)
        frames = ws.pool.obs["image"]
        assert 0 <= frames.min() and frames.max() <= 1 and frames.std() > 0  # rendered frames, not blanks
        metrics = ws.train_step()
        assert metrics["pool_rows_in_batch"] == round(SHARE * BATCH) and np.isfinite(metrics["train_loss"])
    finally:
        ws.close()
        ws.end_run()


def test_debug_tiny_shortens_an_onpolicy_run_through_train_py(store, checkpoints, tmp_path):
    """`debug=tiny` picks the workspace's short schedule (debug_workspace/tiny_onpolicy_distill.yaml):
    2 rounds of 2 steps, 2 recorded rollouts each, a score and a checkpoint after each round."""
    from tests.helpers import run_train, tiny

    run_dir = tmp_path / "run"
    result = run_train(tiny(store, run_dir, "workspace=onpolicy_distill", f"distill.student={checkpoints.student}",
                            f"distill.teacher={checkpoints.teacher}", "training.device=cpu"))
    assert result.returncode == 0, result.stderr[-3000:]
    logs = read_logs(run_dir / "logs.jsonl")
    assert [r["global_step"] for r in logs if "test/mean_score" in r] == [2, 4]
    assert ReplayBuffer.create_from_path(run_dir / POOL, mode="r").n_episodes == 4
    assert (run_dir / "checkpoints" / "latest" / "model.safetensors").exists()
