"""`python -m policylab.plot`: curves from logs.jsonl, runs overlaid, a sweep's seeds as mean and band."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from policylab.plot import aggregate, find_groups, main, series, smooth
from tests.helpers import REPO
from tests.test_cli_help import EXTRA_MODULES


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


def _write_rl_run(run_dir, n_steps=40):
    """The records an RL run writes (keys as in a Stage I/II run of tests/workspaces/test_rl_workspaces.py):
    critic/actor losses and Q values per update, episode stats per episode, an evaluation at the end."""
    run_dir.mkdir(parents=True)
    lines = []
    for step in range(1, n_steps + 1):
        lines.append({"global_step": step, "td_loss": 1.0 / step, "q_data": 0.1 * step, "q_target": 0.1 * step,
                      "critic_loss": 0.5 - 0.05 * step, "actor_loss": -0.1 * step, "bc_loss": 1.0, "q_pi": 0.1 * step})
        if step % 5 == 0:
            lines.append({"global_step": step, "episode/success": 1.0, "episode/length": 20 - step // 5,
                          "episode/intervention_rate": 0.1, "episode/return": 1.0, "rollout/success_rate_20": step / 40,
                          "rollout/intervention_rate_20": 0.1, "env_steps": 10 * step, "episodes": step // 5})
    lines.append({"global_step": n_steps, "test/mean_score": 0.8, "test/success_rate": 0.8,
                  "test/sim_video_100000": "media/x.mp4"})
    (run_dir / "logs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_an_rl_run_plots_its_own_signals_by_default(tmp_path):
    from policylab.common.logging import read_logs
    from policylab.plot import choose_keys

    _write_rl_run(tmp_path / "rl")
    _write_run(tmp_path / "sft", 1.0)
    rl, sft = read_logs(tmp_path / "rl" / "logs.jsonl"), read_logs(tmp_path / "sft" / "logs.jsonl")
    assert choose_keys([rl]) == ["test/success_rate", "rollout/success_rate_20", "rollout/intervention_rate_20",
                                 "q_data", "q_pi", "critic_loss", "actor_loss", "episode/length"]
    assert choose_keys([sft]) == ["train_loss", "val_loss", "test/mean_score", "lr"]
    assert choose_keys([rl, sft]) == choose_keys([rl]) + choose_keys([sft])
    assert choose_keys([rl], ["td_loss", "nope"]) == ["td_loss"]
    out = main([str(tmp_path / "rl")])  # a critic loss below 0 stays on a linear axis
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_key_value_options_are_refused_not_read_as_runs(tmp_path, capsys):
    _write_run(tmp_path / "run", 1.0)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "run"), "out=x.png"])
    assert exit_info.value.code == 2
    assert "'out=x.png' is not a run directory; options are flags here: --out x.png" in capsys.readouterr().err
    assert not (tmp_path / "run" / "curves.png").exists()


def test_the_quickstarts_suggestion_runs_with_only_the_core(tmp_path):
    """The quickstart ends with `python -m policylab.plot <run>`; its venv has the core and `pusht`."""
    _write_run(tmp_path / "run", 1.0)
    code = (f"import runpy, sys\nfor m in {EXTRA_MODULES!r}: sys.modules[m] = None\n"
            f"sys.argv = ['plot', {str(tmp_path / 'run')!r}]\nrunpy.run_module('policylab.plot', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
