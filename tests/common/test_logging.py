"""RunLogger on resume: appends, drops what was logged after the checkpoint, survives a torn line."""

import json

import pytest

from policylab.common.logging import RunLogger, read_logs


def _log(run_dir, steps, **kwargs):
    logger = RunLogger(run_dir, mode="disabled", **kwargs)
    for step in steps:
        logger.log({"train_loss": 1.0 / (step + 1)}, step=step)
    logger.close()


def test_resume_from_step_drops_lines_logged_after_the_checkpoint(tmp_path):
    _log(tmp_path, range(10))  # checkpoint at step 5, then killed at step 9
    with open(tmp_path / "logs.jsonl", "a") as fh:
        fh.write('{"global_step": 10, "train_lo')  # killed mid-line
    _log(tmp_path, range(6, 12), resume_from_step=5)
    steps = [r["global_step"] for r in read_logs(tmp_path / "logs.jsonl")]
    assert steps == list(range(12))  # each step once, in order


def test_plain_resume_appends_and_repairs_a_torn_tail(tmp_path):
    _log(tmp_path, range(3))
    with open(tmp_path / "logs.jsonl", "a") as fh:
        fh.write('{"global_st')
    _log(tmp_path, [3], resume=True)
    lines = (tmp_path / "logs.jsonl").read_text().splitlines()
    assert [json.loads(line)["global_step"] for line in lines] == [0, 1, 2, 3]


def test_fresh_run_starts_a_new_log(tmp_path):
    _log(tmp_path, range(3))
    _log(tmp_path, [0])
    assert [r["global_step"] for r in read_logs(tmp_path / "logs.jsonl")] == [0]


def test_interleaved_garbage_is_an_error_naming_the_file_and_line(tmp_path):
    (tmp_path / "logs.jsonl").write_text('{"global_step": 0}\n{"global_step": 1{"glob\n{"global_step": 2}\n')
    with pytest.raises(ValueError, match=r"logs.jsonl, line 2"):
        _log(tmp_path, [3], resume_from_step=2)
    with pytest.raises(ValueError, match=r"logs.jsonl, line 2"):
        read_logs(tmp_path / "logs.jsonl")
