"""`python -m policylab.plot`: curves from logs.jsonl, runs overlaid, a sweep's seeds as mean and band."""

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from policylab.plot import aggregate, find_groups, main, series, smooth


def _write_run(run_dir, scale, n_steps=40, eval_every=10, resumed=False):
    run_dir.mkdir(parents=True)
    lines = []
    for step in range(1, n_steps + 1):
        lines.append({"global_step": step, "train_loss": scale / step, "lr": 1e-3, "epoch": step // 10})
        if step % eval_every == 0:
            lines.append({"global_step": step, "epoch": step // 10, "train_loss": scale / step,
                          "val_loss": 2 * scale / step, "test/mean_score": step / n_steps * scale,
                          "test/sim_video_0": "media/x.mp4"})
    if resumed:  # a resumed run logs step 20 again: the later value counts
        lines.append({"global_step": 20, "test/mean_score": 0.99})
    (run_dir / "logs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_series_keeps_the_last_value_of_a_step_and_skips_non_numbers(tmp_path):
    _write_run(tmp_path / "run", 1.0, resumed=True)
    from policylab.common.logging import read_logs

    steps, values = series(read_logs(tmp_path / "run" / "logs.jsonl"), "test/mean_score")
    assert steps.tolist() == [10, 20, 30, 40] and values.tolist() == [0.25, 0.99, 0.75, 1.0]
    assert series(read_logs(tmp_path / "run" / "logs.jsonl"), "test/sim_video_0")[0].size == 0


def test_aggregate_mean_and_band_over_the_union_of_steps():
    a = (np.array([0, 10]), np.array([0.0, 1.0]))
    b = (np.array([0, 10, 20]), np.array([1.0, 3.0, 5.0]))
    steps, mean, low, high = aggregate([a, b], band="minmax")
    assert steps.tolist() == [0, 10, 20]
    assert mean.tolist() == [0.5, 2.0, 5.0] and low.tolist() == [0.0, 1.0, 5.0] and high.tolist() == [1.0, 3.0, 5.0]
    _, mean, low, high = aggregate([a, b], band="std")
    assert low.tolist() == [0.0, 1.0, 5.0] and high.tolist() == [1.0, 3.0, 5.0]  # std of two = half the gap
    assert smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2).tolist() == [1.0, 2.0, 4.0, 6.0]


def test_cli_writes_a_png_with_runs_and_a_sweep(tmp_path):
    _write_run(tmp_path / "single", 1.0)
    for seed, scale in ((42, 0.8), (43, 1.0), (44, 1.2)):
        _write_run(tmp_path / "sweep" / f"seed_{seed}", scale)
    groups = find_groups([tmp_path / "single", tmp_path / "sweep"])
    assert [len(v) for v in groups.values()] == [1, 3]
    out = main([str(tmp_path / "single"), str(tmp_path / "sweep"), "--out", str(tmp_path / "c.png")])
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert main([str(tmp_path / "single")]) == tmp_path / "single" / "curves.png"


def test_a_directory_without_logs_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    assert "no logs.jsonl" in capsys.readouterr().err
