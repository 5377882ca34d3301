"""The one key=value parser (policylab.common.overrides): Hydra's value syntax, a schema that
names every bad key, `--help`."""

import dataclasses
from typing import Any

import pytest

from policylab.common.overrides import MISSING, help_text, parse_overrides


@dataclasses.dataclass
class Args:
    out: str = MISSING
    n: int = 3
    rate: float = 0.5
    flag: bool = False
    name: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def test_values_are_parsed_as_hydra_parses_them():
    args = parse_overrides(Args, ["out=a.zarr", "n=7", "rate=1e-3", "flag=true", "name=null",
                                  "extra.k=[1,2]", "extra.s=x"])
    assert args == Args(out="a.zarr", n=7, rate=1e-3, flag=True, name=None, extra={"k": [1, 2], "s": "x"})
    assert parse_overrides(Args, ["out=b"]) == Args(out="b")


@pytest.mark.parametrize("argv, message", [
    (["out=a", "sed=1"], r"^p: unknown key 'sed'; known: \['out', 'n', 'rate', 'flag', 'name', 'extra'\]$"),
    (["n=2"], r"^p: missing required argument\(s\): out=\.\.\.$"),
    (["out=a", "n=two"], r"^p: n: Value 'two' .*could not be converted to Integer"),
    (["out=a", "flag=maybe"], r"^p: flag: .*not a valid bool"),
    (["out=a", "x.png"], r"^p: unexpected argument\(s\) \['x.png'\]; expected key=value"),
    (["out=a", "--n=2"], r"^p: unexpected argument\(s\) \['--n=2'\]"),
    (["out=[a,"], r"^p: cannot parse 'out=\[a,'"),
])
def test_bad_arguments_exit_naming_the_key(argv, message):
    with pytest.raises(SystemExit, match=message):
        parse_overrides(Args, argv, prog="p")


def test_a_mapping_schema_allows_keys_that_are_not_identifiers():
    schema = {"in": MISSING, "keys": None, "overwrite": False}
    assert parse_overrides(schema, ["in=src", "keys=[a,b]"]) == {"in": "src", "keys": ["a", "b"], "overwrite": False}
    with pytest.raises(SystemExit, match=r"unknown key 'kyes'"):
        parse_overrides(schema, ["in=src", "kyes=a"])
    with pytest.raises(SystemExit, match=r"missing required argument\(s\): in=\.\.\."):
        parse_overrides(schema, [])


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_prints_the_usage_and_every_key_then_exits_0(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_overrides(Args, ["n=oops", flag], prog="p", usage="Do a thing.\n\n    p out=<x>")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out == help_text(Args, "p", "Do a thing.\n\n    p out=<x>") + "\n"
    assert out.startswith("Do a thing.\n\n    p out=<x>\n\nkeys (default; ??? = required):\n")
    assert "  out    ???\n" in out and "  flag   false\n" in out and "  name   null\n" in out
