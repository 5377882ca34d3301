"""The CLIs that take key=value read it with the one parser: eval's own keys and env-runner
settings, its legacy flags, the importers' text arguments."""

import pytest

from policylab.data.importers.common import parse_cli
from policylab.evaluate import parse_args


def test_eval_splits_its_own_keys_from_the_env_runner_settings():
    own, runner = parse_args(["checkpoint=run/checkpoints/latest", "n_test=5", "task.env_runner.max_steps=9",
                              "env_runner.n_envs=2", "use_ema=false", "env_kwargs.render_size=64"])
    assert own == {"checkpoint": "run/checkpoints/latest", "output_dir": None, "device": "auto", "use_ema": False}
    assert runner == {"n_test": 5, "max_steps": 9, "n_envs": 2, "env_kwargs": {"render_size": 64}}


def test_eval_legacy_flags_still_work():
    own, runner = parse_args(["--checkpoint", "c", "--output_dir=o", "--device", "cpu", "--no-ema", "n_test=1"])
    assert own == {"checkpoint": "c", "output_dir": "o", "device": "cpu", "use_ema": False}
    assert runner == {"n_test": 1}


@pytest.mark.parametrize("argv, message", [
    (["n_test=5"], r"^eval: missing required argument\(s\): checkpoint=\.\.\.$"),
    (["checkpoint=c", "use_ema=perhaps"], r"^eval: use_ema: .*not a valid bool"),
    (["checkpoint=c", "--ouput_dir", "x"], r"^eval: unexpected argument\(s\) \['--ouput_dir', 'x'\]"),
    (["--checkpoint"], r"^eval: --checkpoint needs a value$"),
])
def test_eval_bad_arguments_exit_naming_them(argv, message):
    with pytest.raises(SystemExit, match=message):
        parse_args(argv)


def test_eval_help_exits_0_with_its_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("Evaluate a checkpoint") and "  checkpoint  ???\n" in out


def test_importer_arguments_come_back_as_text():
    args = parse_cli(["in=src", "out=dst", "keys=[a,b]", "overwrite=true", "filter_key=null"],
                     required=("in", "out"), optional=("keys", "overwrite", "filter_key"))
    assert args == {"in": "src", "out": "dst", "keys": "a,b", "overwrite": "true"}
    with pytest.raises(SystemExit, match=r"unknown key 'kyes'"):
        parse_cli(["in=a", "out=b", "kyes=x"], required=("in", "out"), optional=("keys",))
