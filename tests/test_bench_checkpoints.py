"""bench/pusht_quality.py --last_k: the run's last K checkpoints by time, never a set that top-k
retention (which deletes the worst-scoring ones) has chosen by score."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("pusht_quality", REPO / "bench" / "pusht_quality.py")
pusht_quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pusht_quality)


def make_run(root: Path, epochs: list[int], latest: int, every: int = 4) -> Path:
    for name, weights in [*((f"epoch={e:04d}-test_mean_score=0.500", f"w{e}") for e in epochs), ("latest", f"w{latest}")]:
        ckpt = root / "checkpoints" / name
        ckpt.mkdir(parents=True)
        (ckpt / "checksums.json").write_text(json.dumps({"model.safetensors": weights}))
        (ckpt / "config.yaml").write_text(f"training:\n  checkpoint_every: {every}\n")
    return root


def names(paths: list[Path]) -> list[str]:
    return [p.name.split("-")[0] for p in paths]


def test_last_k_takes_the_newest_checkpoints_by_epoch(tmp_path):
    run = make_run(tmp_path, [20, 24, 28, 32, 36], latest=36)
    assert names(pusht_quality.last_checkpoints(run, 3)) == ["epoch=0028", "epoch=0032", "epoch=0036"]
    assert pusht_quality.last_checkpoints(run, 1) == [run / "checkpoints" / "latest"]


@pytest.mark.parametrize("epochs, latest", [
    ([20, 24, 28, 36], 36),  # 32 deleted by top-k
    ([24, 28, 32], 36),      # the final checkpoint deleted
    ([28, 36], 36),          # evenly spaced, but by 8 where checkpoints came every 4
])
def test_last_k_refuses_a_set_that_top_k_retention_chose(tmp_path, epochs, latest):
    run = make_run(tmp_path, epochs, latest)
    with pytest.raises(SystemExit, match="top-k retention"):
        pusht_quality.last_checkpoints(run, 2 if len(epochs) == 2 else 3)
    with pytest.raises(ValueError, match="last_k"):
        pusht_quality.last_checkpoints(run, 0)


def test_last_k_reads_the_step_named_checkpoints_of_on_policy_rounds(tmp_path):
    run = tmp_path / "onpolicy"
    for name, weights in [("step=00001000-test_mean_score=0.800", "w1"), ("step=00002000-test_mean_score=0.700", "w2"),
                          ("latest", "w2")]:
        ckpt = run / "checkpoints" / name
        ckpt.mkdir(parents=True)
        (ckpt / "checksums.json").write_text(json.dumps({"model.safetensors": weights}))
        (ckpt / "config.yaml").write_text("training:\n  checkpoint_every: 1000\n")
    assert names(pusht_quality.last_checkpoints(run, 2)) == ["step=00001000", "step=00002000"]


def test_training_cost_sums_the_lineage_on_the_cpu_clock_where_logged(tmp_path):
    def logs(name: str, *records: dict) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "logs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return tmp_path / name

    new = logs("new", {"global_step": 10, "learner_seconds": 120.0, "learner_cpu_seconds": 60.0},
               {"global_step": 20, "learner_seconds": 240.0, "learner_cpu_seconds": 90.0})
    old = logs("old", {"global_step": 5, "learner_seconds": 30.0})  # a run from before the CPU clock
    assert pusht_quality.training_cost(new) == {"steps": 20, "minutes": 1.5, "clock": "cpu"}
    assert pusht_quality.training_cost(old) == {"steps": 5, "minutes": 0.5, "clock": "wall"}
    assert pusht_quality.lineage("onpolicy") == ["onpolicy", "onestep", "edm"]
    assert pusht_quality.lineage("dp") == ["dp"]
    with pytest.raises(SystemExit, match="no logs.jsonl"):
        pusht_quality.training_cost(tmp_path / "missing")
