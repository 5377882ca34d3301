"""ray_train_multirun.py: planning runs, the paper's summary, and a real 2-seed ray sweep."""

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from policylab.common.logging import read_logs
from policylab.distributed import sweep
from ray_train_multirun import main as sweep_main
from tests.helpers import make_pusht_store


def test_expand_runs_seeds_times_swept_values():
    overrides = ["debug=tiny", "policy=diffusion_unet,diffusion_transformer", "task.dataset.zarr_path=d/${training.seed}"]
    runs = sweep.expand_runs([42, 43], overrides)
    assert [r.name for r in runs] == ["v0_seed_42", "v1_seed_42", "v0_seed_43", "v1_seed_43"]
    assert runs[1].variant == {"policy": "diffusion_transformer"}
    # non-swept overrides stay verbatim, so `${training.seed}` still interpolates per run
    assert runs[3].overrides == ["debug=tiny", "task.dataset.zarr_path=d/${training.seed}",
                                 "policy=diffusion_transformer", "training.seed=43"]
    assert [r.name for r in sweep.expand_runs([7], ["debug=tiny"])] == ["seed_7"]


def test_seeds_are_set_once():
    assert sweep.parse_seeds("42,43, 44") == [42, 43, 44]
    for bad in ("42,42", "", "4x"):
        with pytest.raises(ValueError, match="--seeds"):
            sweep.parse_seeds(bad)
    with pytest.raises(ValueError, match="--seeds"):
        sweep.expand_runs([1], ["training.seed=3"])


def test_seed_interpolation_resolves_per_run():
    config_dir = Path(__file__).resolve().parents[1] / "config"
    runs = sweep.expand_runs([42, 43], ["debug=tiny", "task.dataset.zarr_path=d/${training.seed}.zarr",
                                        "task.env_runner.test_start_seed='${calc:${training.seed}*100000+100000}'"])
    cfgs = [sweep.resolved_run_config(config_dir, run) for run in runs]
    assert [c.task.dataset.zarr_path for c in cfgs] == ["d/42.zarr", "d/43.zarr"]
    assert [c.task.env_runner.test_start_seed for c in cfgs] == [4300000, 4400000]
    assert [c.training.seed for c in cfgs] == [42, 43]


def _fake_run(tmp_path, name, seed, scores, status="finished", variant=None):
    run_dir = tmp_path / name
    run_dir.mkdir()
    lines = [{"global_step": i, "train_loss": 1.0} for i in range(3)]  # records without the metric
    lines += [{"global_step": 10 * (i + 1), "epoch": i + 1, "test/mean_score": s} for i, s in enumerate(scores)]
    (run_dir / "logs.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    spec = sweep.RunSpec(name, seed, variant or {}, [f"training.seed={seed}"])
    return sweep.RunResult(spec, run_dir, status, error=None if status == "finished" else "ValueError: boom")


def test_summary_max_and_mean_of_last_k(tmp_path):
    results = [_fake_run(tmp_path, "seed_1", 1, [0.1, 0.9, 0.5, 0.6, 0.7]),
               _fake_run(tmp_path, "seed_2", 2, [0.2, 0.4, 0.8]),
               _fake_run(tmp_path, "seed_3", 3, [0.95], status="failed")]
    summary = sweep.summarize(results, "test/mean_score", mode="max", last_k=2)
    by_name = {run["name"]: run for run in summary["runs"]}
    assert by_name["seed_1"]["best"] == 0.9 and by_name["seed_1"]["last_k_mean"] == pytest.approx(0.65)
    assert by_name["seed_2"]["best"] == 0.8 and by_name["seed_2"]["last_k_mean"] == pytest.approx(0.6)
    assert by_name["seed_3"]["status"] == "failed" and by_name["seed_3"]["error"] == "ValueError: boom"
    (group,) = summary["groups"]
    assert group["seeds"] == [1, 2] and group["failed_seeds"] == [3]  # a failed seed never enters the mean
    assert group["best_mean"] == pytest.approx(0.85) and group["best_std"] == pytest.approx(math.sqrt(0.005))
    assert group["last_k_mean_mean"] == pytest.approx(0.625)
    table = sweep.format_table(summary)
    assert "0.850 ± 0.071" in table and "seed_3 failed: ValueError: boom" in table

    low = sweep.summarize(results[:1], "test/mean_score", mode="min", last_k=10)
    assert low["runs"][0]["best"] == 0.1 and low["runs"][0]["last_k_mean"] == pytest.approx(0.56)
    assert low["groups"][0]["best_std"] is None  # one seed: no spread to report


def test_summary_groups_by_variant(tmp_path):
    results = [_fake_run(tmp_path, "v0_seed_1", 1, [0.5], variant={"policy": "a"}),
               _fake_run(tmp_path, "v1_seed_1", 1, [0.7], variant={"policy": "b"}),
               _fake_run(tmp_path, "v0_seed_2", 2, [0.3], variant={"policy": "a"})]
    groups = sweep.summarize(results, "test/mean_score")["groups"]
    assert [(g["variant"], g["seeds"]) for g in groups] == [({"policy": "a"}, [1, 2]), ({"policy": "b"}, [1])]
    assert groups[0]["best_mean"] == pytest.approx(0.4)


def test_sweep_with_a_crashing_seed(tmp_path, capsys, monkeypatch):
    """Seed 43 reads a store whose action chunk is corrupt (the override interpolates the seed into
    the path): its run fails for real, is reported with its error, and seed 42 trains to the end."""
    make_pusht_store(tmp_path / "store_42.zarr")
    shutil.copytree(tmp_path / "store_42.zarr", tmp_path / "store_43.zarr")
    chunk = tmp_path / "store_43.zarr" / "data" / "action" / "0.0"
    chunk.write_bytes(b"\x00not a blosc chunk" + chunk.read_bytes()[:50])
    monkeypatch.chdir(tmp_path)
    sweep_dir = tmp_path / "sweep"
    code = sweep_main(["--seeds", "42,43", "--last_k", "5", "--progress_every", "1", "debug=tiny", "logging.mode=disabled",
                       f"task.dataset.zarr_path={tmp_path}/store_${{training.seed}}.zarr",
                       "task.env_runner.n_train=0", f"hydra.sweep.dir={sweep_dir}"])
    assert code == 1  # some run failed

    summary = json.loads((sweep_dir / "summary.json").read_text())
    runs = {run["seed"]: run for run in summary["runs"]}
    assert runs[43]["status"] == "failed" and "decompression" in runs[43]["error"]
    assert runs[42]["status"] == "finished" and runs[42]["error"] is None
    scores = [r["test/mean_score"] for r in read_logs(sweep_dir / "seed_42" / "logs.jsonl") if "test/mean_score" in r]
    assert len(scores) == 2 and runs[42]["n_evals"] == 2
    assert runs[42]["best"] == pytest.approx(max(scores)) and runs[42]["last_k_mean"] == pytest.approx(sum(scores) / 2)
    assert summary["groups"][0]["seeds"] == [42] and summary["groups"][0]["failed_seeds"] == [43]
    assert (sweep_dir / "seed_42" / "checkpoints" / "latest" / "model.safetensors").exists()
    assert "Traceback" in (sweep_dir / "seed_43" / "train.log").read_text()

    cfg = OmegaConf.load(sweep_dir / "seed_42" / ".hydra" / "config.yaml")
    assert cfg.training.seed == 42 and cfg.task.dataset.zarr_path.endswith("store_42.zarr")
    out = capsys.readouterr().out
    assert "seed_43 failed: " in out and f"summary: {sweep_dir / 'summary.json'}" in out
    # progress while it runs: each start, the running runs' step and metric, each end in order of ending
    assert out.startswith(f"[sweep] 2 runs in {sweep_dir}, 1 CPU(s) each")
    lines = [line for line in out.splitlines() if line.startswith("[sweep] seed_42:")]
    assert lines[0] == "[sweep] seed_42: started", lines
    assert any(re.fullmatch(r"\[sweep\] seed_42: running for 0m\d\ds, (nothing logged yet|step \d+.*)", line)
               for line in lines), lines
    assert re.fullmatch(r"\[sweep\] seed_42: finished after \d+m\d\ds, step \d+, epoch 2, test/mean_score "
                        r"\d\.\d{3} \([12]/2 done\)", lines[-1]), lines
    assert re.search(r"\[sweep\] seed_43: failed after .* \([12]/2 done\) \(.*decompression", out)


def test_gpus_per_run_reach_ray(monkeypatch, tmp_path):
    """`--num_gpus_per_run` is what ray reserves per run (0 would hide the GPUs from a cuda run)."""
    seen = {}

    def fake_run_sweep(runs, config_dir, sweep_dir, train_fn, num_cpus, address, num_gpus_per_run=0.0,
                       progress_every=60.0):
        seen.update(num_cpus=num_cpus, num_gpus=num_gpus_per_run, n=len(runs), progress_every=progress_every)
        return []

    monkeypatch.setattr(sweep, "run_sweep", fake_run_sweep)
    sweep_main(["--seeds", "1,2", "--num_gpus_per_run", "0.5", "--num_cpus_per_run", "2",
                f"hydra.sweep.dir={tmp_path}", "training.device=cuda"])
    assert seen == {"num_cpus": 2.0, "num_gpus": 0.5, "n": 2, "progress_every": 60.0}
