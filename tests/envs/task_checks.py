"""Checks every simulated task family runs: its store matches shape_meta, train.py + eval.py work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from policylab.data.datasets.sequence import SequenceDataset
from policylab.data.replay_buffer import ReplayBuffer
from tests.helpers import compose_config, run_train


def task_config(task: str, *overrides: str):
    cfg = compose_config([f"task={task}", "debug=tiny", *overrides])
    return OmegaConf.create(OmegaConf.to_container(cfg.task, resolve=True))


def check_store_matches_shape_meta(store: Path, task: str) -> None:
    """The store holds every key of the task's shape_meta with the right per-step shape."""
    meta = task_config(task).shape_meta
    rb = ReplayBuffer.create_from_path(store)
    for key, attr in meta.obs.items():
        zkey = attr.get("zarr_key", key)
        assert zkey in rb, f"{task}: store lacks {zkey!r} (has {sorted(rb.keys())})"
        shape = tuple(rb[zkey].shape[1:])
        if attr.get("type") == "rgb":
            c, h, w = attr.shape
            assert shape == (h, w, c), f"{task}/{key}: {shape} {rb[zkey].dtype}"
            assert rb[zkey].dtype == np.uint8, f"{task}/{key}: {shape} {rb[zkey].dtype}"
        else:
            assert shape == tuple(attr.shape), f"{task}/{key}: store {shape} vs shape_meta {list(attr.shape)}"
    assert tuple(rb["action"].shape[1:]) == tuple(meta.action.shape)
    ds = SequenceDataset(OmegaConf.to_container(meta), horizon=8, n_obs_steps=2, replay_buffer=rb)
    batch = ds.get_batch(np.arange(min(3, len(ds))))
    for key, attr in meta.obs.items():
        assert tuple(batch["obs"][key].shape[2:]) == tuple(attr.shape)


def smoke_train_eval(task: str, store: Path, tmp_path: Path, *extra: str) -> dict:
    """train.py for 2 steps with a rollout of 1 episode, then eval.py on 1 episode."""
    from eval import main as eval_main

    run_dir = tmp_path / f"run_{task}"
    result = run_train(["debug=tiny", f"task={task}", f"task.dataset.zarr_path={store}",
                        f"hydra.run.dir={run_dir}", "logging.mode=disabled", "task.dataset.val_ratio=0",
                        "training.num_epochs=1", "training.max_train_steps=2",
                        "dataloader.batch_size=4", "val_dataloader.batch_size=4",
                        "task.env_runner.n_train=0", "task.env_runner.n_test=1",
                        "task.env_runner.max_steps=8", *extra])
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads(line) for line in (run_dir / "logs.jsonl").read_text().splitlines()]
    assert records[-1]["global_step"] == 2
    assert "test/success_rate" in records[-1]
    log = eval_main(["--checkpoint", str(run_dir / "checkpoints" / "latest"),
                     "--output_dir", str(tmp_path / f"eval_{task}"), "n_test=1", "n_train=0", "max_steps=8"])
    assert 0 <= log["test/success_rate"] <= 1
    videos = [v for k, v in log.items() if "video" in k]
    assert videos
    assert all(Path(v).stat().st_size > 0 for v in videos)
    return log
