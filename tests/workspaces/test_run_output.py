"""Cadences (0/null is never), the time budget with the final evaluation inside it, what a run
prints and writes to train.log, and the wandb run kept across a resume."""

import time

import pytest
from omegaconf import OmegaConf

from policylab.common.checkpoint import load_training_state
from policylab.common.logging import WANDB_ID_FILE, RunLogger, read_logs
from policylab.workspaces.base import (
    BaseWorkspace,
    DistributedInfo,
    due,
    format_minutes,
)
from policylab.workspaces.supervised import SupervisedWorkspace, TrainingConfig
from tests.helpers import compose_config, run_train, tiny


def test_disabled_cadences_never_run_even_at_the_last_epoch(store, tmp_path):
    run_dir = tmp_path / "run"
    result = run_train(tiny(store, run_dir, "training.rollout_every=0", "training.val_every=null",
                            "training.sample_every=0", "training.checkpoint_every=null"))
    assert result.returncode == 0, result.stderr[-3000:]
    epochs = [r for r in read_logs(run_dir / "logs.jsonl") if "train_loss" in r and "lr" not in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert not any(k in r for r in epochs for k in ("test/mean_score", "val_loss", "train_action_mse"))
    assert not (run_dir / "checkpoints" / "latest").exists() and not (run_dir / "media").exists()
    assert "no checkpoint written" in result.stdout


def test_a_positive_cadence_also_runs_after_the_last_epoch(store, tmp_path):
    run_dir = tmp_path / "run"
    result = run_train(tiny(store, run_dir, "training.num_epochs=3", "training.rollout_every=2",
                            "training.checkpoint_every=100", "training.val_every=0", "training.sample_every=0"))
    assert result.returncode == 0, result.stderr[-3000:]
    scored = [r["epoch"] for r in read_logs(run_dir / "logs.jsonl") if "test/mean_score" in r]
    assert scored == [2, 3]
    assert (run_dir / "checkpoints" / "latest" / "model.safetensors").exists()


def test_run_prints_dir_epochs_and_best_checkpoint_and_train_log_has_them(store, tmp_path):
    run_dir = tmp_path / "run"
    result = run_train(tiny(store, run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert f"run dir: {run_dir.resolve()}" in out
    lines = [line for line in out.splitlines() if " epoch " in line and " step " in line]
    assert len(lines) == 2 and "epoch 1/2 step" in lines[0] and "epoch 2/2 step" in lines[1]
    assert all(" | loss " in line and " | val " in line and " | score " in line and " | left " in line
               for line in lines)
    assert lines[1].endswith("left 0s")
    done = [line for line in out.splitlines() if "done after 2 epochs" in line]
    assert len(done) == 1 and "best checkpoint: " in done[0] and "test/mean_score" in done[0]
    log = (run_dir / "train.log").read_text()
    assert "run dir: " in log and "epoch 2/2 step" in log and "best checkpoint: " in log


def _budget_workspace(minutes: float, elapsed: float, parts: dict, **cadences) -> SupervisedWorkspace:
    ws = SupervisedWorkspace.__new__(SupervisedWorkspace)  # only the budget's state: no model, no data
    cfg = OmegaConf.merge(OmegaConf.structured(TrainingConfig), compose_config([]).training,
                          {"max_train_minutes": minutes, **cadences})
    ws.c, ws.dist = {"training": cfg}, DistributedInfo()
    ws._t_start, ws._part_seconds = time.monotonic() - elapsed, parts
    ws._cpu_start = time.process_time()
    return ws


def test_time_budget_reserves_the_measured_final_evaluation():
    parts = {"rollout": 20.0, "val": 3.0, "checkpoint": 2.0}
    # 40 s elapsed of 60: 40 + 20 + 3 + 2 > 60 with every part enabled, so training stops now
    assert _budget_workspace(1, 40, parts, rollout_every=10, val_every=1, checkpoint_every=10)._over_time_budget()
    # rollouts never run: 40 + 3 + 2 fits
    assert not _budget_workspace(1, 40, parts, rollout_every=0, val_every=1, checkpoint_every=10)._over_time_budget()
    # a part never measured yet counts 0
    assert not _budget_workspace(1, 40, {}, rollout_every=10)._over_time_budget()
    assert not _budget_workspace(None, 1e6, parts)._over_time_budget()


def test_time_budget_ends_a_run_mid_epoch(store, tmp_path):
    run_dir = tmp_path / "run"
    result = run_train(tiny(store, run_dir, "training.num_epochs=100000", "training.max_train_minutes=0.1",
                            "training.rollout_every=0", "training.checkpoint_every=1000000"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(time budget)" in result.stdout
    assert (run_dir / "checkpoints" / "latest").exists()  # the final checkpoint still written


def test_cadence_helpers():
    assert [c for c in range(1, 10) if due(c, 3)] == [3, 6, 9]
    assert not any(due(c, every) for c in range(10) for every in (0, -1, None))
    assert [format_minutes(s) for s in (0, 42.4, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]


def test_wandb_run_id_kept_on_resume_and_videos_logged_as_wandb_video(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    video = tmp_path / "media" / "test_100000.mp4"
    video.parent.mkdir()
    from policylab.common.logging import _wandb_record

    video.write_bytes(b"\x00" * 64)
    record = _wandb_record({"test/mean_score": 0.5, "test/sim_video_100000": str(video), "note": "x", "ok": True})
    assert set(record) == {"test/mean_score", "test/sim_video_100000"}
    assert isinstance(record["test/sim_video_100000"], wandb.Video)

    first = RunLogger(tmp_path, mode="offline")
    run_id = first.run.id
    first.log({"train_loss": 1.0}, step=1)
    first.close()
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == run_id
    time.sleep(1.1)  # wandb names offline run directories to the second: same second, same directory
    resumed = RunLogger(tmp_path, mode="offline", resume_from_step=1)
    assert resumed.run.id == run_id
    resumed.close()
    fresh = RunLogger(tmp_path, mode="offline")
    assert fresh.run.id != run_id
    fresh.close()
    assert sorted(p.name.rsplit("-", 1)[-1] for p in (tmp_path / "wandb").glob("offline-run-*")).count(run_id) == 2


def test_evaluation_pauses_the_learners_clock_and_the_spent_time_is_saved():
    ws = _budget_workspace(1, 40, {})
    ws.eval_seconds = 0.0
    with ws._timed("rollout"):
        time.sleep(0.3)
    assert ws.learner_seconds() == pytest.approx(40, abs=0.2)  # the rollout is not the learner's time
    assert ws.eval_seconds >= 0.3 and ws._part_seconds["rollout"] >= 0.3
    ws.global_step = 7
    state = BaseWorkspace.state_dict(ws)  # the budget's part of the training state
    resumed = _budget_workspace(1, 0, {})
    BaseWorkspace.load_state_dict(resumed, state)
    assert resumed.learner_seconds() == pytest.approx(40, abs=0.2) and resumed.eval_seconds == ws.eval_seconds
    assert resumed._part_seconds == ws._part_seconds  # the closing evaluation's reserve too
    BaseWorkspace.load_state_dict(resumed, {**state, "learner_seconds": 61.0})
    assert resumed._over_time_budget()  # a resumed run spends only what is left


def test_the_learners_cpu_clock_excludes_evaluations_and_is_saved():
    ws = _budget_workspace(1, 0, {})
    ws.eval_seconds, ws.global_step = 0.0, 3

    def burn(seconds: float) -> None:
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    burn(0.2)
    with ws._timed("rollout"):
        burn(0.5)  # an evaluation's CPU is not the learner's
        assert ws.learner_cpu_seconds() == pytest.approx(0.2, abs=0.05)  # paused while it runs
    assert ws.learner_cpu_seconds() == pytest.approx(0.2, abs=0.05)
    state = BaseWorkspace.state_dict(ws)
    assert state["learner_cpu_seconds"] == pytest.approx(0.2, abs=0.05)
    resumed = _budget_workspace(1, 0, {})
    BaseWorkspace.load_state_dict(resumed, state)
    burn(0.1)
    assert resumed.learner_cpu_seconds() == pytest.approx(0.3, abs=0.05)  # summed over the run's starts


def test_a_resumed_run_gets_only_the_remaining_budget(store, tmp_path):
    run_dir = tmp_path / "run"
    args = ["training.num_epochs=100000", "training.max_train_minutes=0.05", "training.rollout_every=0",
            "training.checkpoint_every=1000000"]
    first = run_train(tiny(store, run_dir, *args))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "(time budget)" in first.stdout
    state = load_training_state(run_dir / "checkpoints" / "latest")
    assert state["learner_seconds"] > 0  # the budget spent (a fresh run trains at least one step)
    again = run_train(tiny(store, run_dir, *args, "training.resume=true"))  # the same command, resumed
    assert again.returncode == 0, again.stderr[-3000:]
    assert "of the time budget spent" in again.stdout and "(time budget)" in again.stdout
    assert load_training_state(run_dir / "checkpoints" / "latest")["global_step"] == state["global_step"]


def _fitting_workspace(planned: int, seconds_per_step: float, minutes: float) -> SupervisedWorkspace:
    """The LR schedule's part of a workspace (a real AdamW with two groups and diffusers' cosine)
    whose learner clock advances `seconds_per_step` per optimizer step."""
    import torch

    ws = SupervisedWorkspace.__new__(SupervisedWorkspace)
    cfg = compose_config([])
    training = OmegaConf.merge(OmegaConf.structured(TrainingConfig), cfg.training, {"max_train_minutes": minutes})
    sched = OmegaConf.merge(cfg.lr_scheduler, {"name": "cosine", "warmup_steps": 10, "fit_to_budget": True})
    ws.c, ws.dist, ws._part_seconds = {"training": training, "lr_scheduler": sched}, DistributedInfo(), {}
    ws.optimizer = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))]},
                                      {"params": [torch.nn.Parameter(torch.zeros(1))], "weight_decay": 0.0}], lr=1e-3)
    ws.planned_steps = ws.schedule_steps = planned
    ws.lr_scheduler = ws._make_scheduler(planned)
    ws.global_step, ws._first, ws.say = 0, (0, 0.0, 0), lambda message: None
    ws.learner_seconds = lambda: ws.global_step * seconds_per_step
    return ws


def _cosine_lr(total: int, step: int) -> float:
    import torch
    from diffusers.optimization import get_scheduler

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    ref = get_scheduler("cosine", optimizer=opt, num_warmup_steps=10, num_training_steps=total)
    for _ in range(step):
        opt.step()
        ref.step()
    return ref.get_last_lr()[0]


def _steps(ws: SupervisedWorkspace, n: int) -> None:
    for _ in range(n):
        ws.optimizer.step()
        ws.lr_scheduler.step()
        ws.global_step += 1
        ws._fit_schedule_to_budget()


def test_fit_to_budget_shrinks_the_schedule_to_the_steps_the_budget_buys_and_resumes_on_it():
    ws = _fitting_workspace(planned=1000, seconds_per_step=0.1, minutes=1)  # 60 s buy 600 steps of 1,000
    _steps(ws, 49)
    assert ws.schedule_steps == 1000  # not refitted before 50 steps of this process
    _steps(ws, 1)
    assert ws.schedule_steps == 600
    assert [g["lr"] for g in ws.optimizer.param_groups] == pytest.approx([_cosine_lr(600, 50)] * 2, rel=1e-9)
    _steps(ws, 250)
    assert ws.lr_scheduler.get_last_lr()[0] == pytest.approx(_cosine_lr(600, 300), rel=1e-9)
    # a resume (a fresh 1,000-step schedule) continues the fitted curve from the saved state
    state = {"lr_scheduler": ws.lr_scheduler.state_dict(), "schedule_steps": ws.schedule_steps}
    resumed = _fitting_workspace(planned=1000, seconds_per_step=0.1, minutes=1)
    resumed.lr_scheduler.load_state_dict(state["lr_scheduler"])
    resumed._set_schedule(state["schedule_steps"])
    resumed.global_step = 300
    assert resumed.schedule_steps == 600
    assert [g["lr"] for g in resumed.optimizer.param_groups] == pytest.approx([_cosine_lr(600, 300)] * 2, rel=1e-9)
    _steps(ws, 300)
    assert ws.global_step == ws.schedule_steps == 600 and ws.lr_scheduler.get_last_lr()[0] == pytest.approx(0, abs=1e-12)


def test_fit_to_budget_never_lengthens_past_the_plan_and_is_off_by_default():
    fast = _fitting_workspace(planned=1000, seconds_per_step=0.001, minutes=1)  # the budget buys 60,000 steps
    _steps(fast, 100)
    assert fast.schedule_steps == 1000
    assert compose_config([]).lr_scheduler.fit_to_budget is False
