"""Benches never write into the checkout by default: every path default of every bench/*.py script
(its result JSON, runs, data) lies under the output root of bench/_paths.py, outside the repository,
whichever of POLICYLAB_BENCH_DIR, XDG_CACHE_HOME or HOME decides that root. Each script's parser is
built without running the bench."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from tests.helpers import REPO

BENCHES = sorted(p.stem for p in (REPO / "bench").glob("*.py") if not p.name.startswith("_"))
# what each bench names its run and data directories, beyond --out
DIRS = {"pusht_quality": {"data": "pusht_quality/pusht_expert.zarr", "run_root": "pusht_quality"},
        "tasks": {"data_dir": "tasks/data", "run_root": "tasks"}}


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def benches() -> dict:
    return {name: load(name) for name in BENCHES}


def isolate(monkeypatch, tmp_path: Path, source: str) -> Path:
    """Point the one variable `source` at tmp_path (the others unset or elsewhere); the root expected."""
    monkeypatch.delenv("POLICYLAB_BENCH_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if source == "POLICYLAB_BENCH_DIR":
        monkeypatch.setenv("POLICYLAB_BENCH_DIR", str(tmp_path / "bench"))
        return tmp_path / "bench"
    if source == "XDG_CACHE_HOME":
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        return tmp_path / "cache" / "policylab" / "bench"
    return tmp_path / "home" / ".cache" / "policylab" / "bench"


def test_every_bench_script_is_covered():
    assert len(BENCHES) >= 9 and {"pusht_quality", "tasks", "train_throughput"} <= set(BENCHES)


@pytest.mark.parametrize("source", ["POLICYLAB_BENCH_DIR", "XDG_CACHE_HOME", "HOME"])
@pytest.mark.parametrize("name", BENCHES)
def test_default_outputs_lie_outside_the_checkout(benches, name, source, tmp_path, monkeypatch):
    root = isolate(monkeypatch, tmp_path, source)
    defaults = vars(benches[name].build_parser().parse_args([]))
    assert defaults["out"] == root / "results" / f"{name}.json"
    paths = {k: v for k, v in defaults.items() if isinstance(v, Path)}
    assert {k: v for k, v in paths.items() if k != "out"} == {k: root / v for k, v in DIRS.get(name, {}).items()}
    for key, path in paths.items():
        # absolute, so a bench that reads a relative path from the checkout and one that reads it
        # from the current directory both land there
        assert path.is_absolute() and not path.is_relative_to(REPO), (name, key, path)
    # no path into the checkout left as a plain string
    assert not [v for v in defaults.values() if isinstance(v, str) and ("/" in v or v.endswith((".json", ".zarr")))]


def test_a_relative_bench_dir_is_made_absolute_and_xdg_must_be_absolute(benches, tmp_path, monkeypatch):
    paths = benches["pusht_quality"]  # any script: they share bench/_paths.py
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLICYLAB_BENCH_DIR", "rel")
    assert paths.build_parser().parse_args([]).out == tmp_path / "rel" / "results" / "pusht_quality.json"
    monkeypatch.delenv("POLICYLAB_BENCH_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec: ignored unless absolute
    assert paths.build_parser().parse_args([]).run_root == tmp_path / "home" / ".cache" / "policylab" / "bench" / \
        "pusht_quality"


def test_explicit_out_keeps_its_meaning(benches, tmp_path, monkeypatch):
    """The committed commands still record into bench/results/: --out is taken as given."""
    monkeypatch.setenv("POLICYLAB_BENCH_DIR", str(tmp_path))
    for name, module in benches.items():
        args = module.build_parser().parse_args(["--out", f"bench/results/{name}.json"])
        assert args.out == Path("bench/results") / f"{name}.json", name


def test_write_json_replaces_whole_and_a_recorded_run_names_no_machine_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POLICYLAB_BENCH_DIR", str(tmp_path / "root"))
    paths = load("_paths")
    out = tmp_path / "root" / "results" / "x.json"
    paths.write_json(out, {"a": 1})
    paths.write_json(out, {"b": [2]})
    assert json.loads(out.read_text()) == {"b": [2]}
    assert sorted(os.listdir(out.parent)) == ["x.json"]  # no temporary file left
    assert capsys.readouterr().out.splitlines() == [f"wrote {out}"] * 2
    assert paths.shown(tmp_path / "root" / "pusht_quality" / "edm") == "<bench root>/pusht_quality/edm"
    assert paths.shown(REPO / "outputs" / "edm") == "outputs/edm"
    assert paths.shown(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")
