"""The one parser of `key=value` command lines: Hydra's override syntax (OmegaConf dotlists, YAML
values: `true`, `3`, `0.5`, `null`, `[a,b]`), checked against a schema, with `-h`/`--help`.

Which commands take `key=value` and which take `--flags` (one style per kind of tool):

- `key=value`, Hydra's syntax: everything that trains, evaluates, or makes, converts or reads a
  dataset. train.py / `policylab-train`, demo_real_robot.py and eval_real_robot.py through Hydra;
  eval.py / `policylab-eval`, `policylab.data.generate` / `policylab-generate`,
  `policylab.data.importers.*`, `policylab.data.exporters.*`, `policylab.data.inspect` and
  `policylab.data.repair` (their store may come first, bare), `policylab.rl.success_frames` and
  `policylab.robot_apps.rl_demos` through this parser.
- `--flags`, argparse: the tools around runs and checkpoints: `policylab.plot`,
  `ray_train_multirun.py` (its own options; the rest of its line is train.py's overrides),
  `policylab.serving.server`, `policylab.policies.dp_import`, `policylab.models.octo.convert`,
  `policylab.quickstart`, `bench/*`.

Every command of either kind answers `--help` and exits 0 (tests/test_cli_help.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

HELP_FLAGS = ("-h", "--help")


def parse_overrides(schema: type | Mapping[str, Any], argv: list[str], prog: str = "", usage: str = "") -> Any:
    """Settings from `key=value` arguments, checked against `schema`.

    `schema` is a dataclass (the result is an instance; values are type-checked) or a mapping
    {key: default} (the result is a dict with the YAML-parsed values; for keys that are not
    identifiers, e.g. `in`). A key whose default is MISSING is required. A misspelt key, a missing
    required key, a value of the wrong type or an argument that is not key=value exits non-zero
    with a message naming it; `-h`/`--help` prints `usage` and the keys with their defaults, and
    exits 0."""
    prefix = f"{prog}: " if prog else ""
    defaults = _defaults(schema)
    if any(a in HELP_FLAGS for a in argv):
        print(help_text(schema, prog, usage))
        raise SystemExit(0)
    bad = [a for a in argv if "=" not in a or a.startswith("-")]
    if bad:
        raise SystemExit(f"{prefix}unexpected argument(s) {bad}; expected key=value with key in {list(defaults)}"
                         " (--help lists them)")
    if dataclasses.is_dataclass(schema):
        base = OmegaConf.structured(schema)  # unknown keys refused; dict-typed fields stay open
    else:
        base = OmegaConf.create(dict(schema))
        OmegaConf.set_struct(base, True)
    try:
        cfg = OmegaConf.merge(base, _dotlist(argv, prefix))
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise SystemExit(f"{prefix}missing required argument(s): {', '.join(k + '=...' for k in missing)}")
        if dataclasses.is_dataclass(schema):
            return OmegaConf.to_object(cfg)
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", None)
        if key is not None and str(key).split(".")[0] not in defaults:
            raise SystemExit(f"{prefix}unknown key {key!r}; known: {list(defaults)}") from None
        message = str(getattr(err, "msg", err)).splitlines()[0]
        raise SystemExit(f"{prefix}{key}: {message}" if key else f"{prefix}{message}") from None

def help_text(schema: type | Mapping[str, Any], prog: str = "", usage: str = "") -> str:
    """`usage` (a module docstring, say) followed by every key with its default."""
    defaults = _defaults(schema)
    width = max(map(len, defaults), default=0)
    lines = [usage.strip() or f"usage: {prog} key=value ...", "", "keys (default; ??? = required):"]
    lines += [f"  {key:<{width}}  {_show(value)}" for key, value in defaults.items()]
    return "\n".join(lines)


def _dotlist(argv: list[str], prefix: str):
    """The arguments as one config; a value YAML cannot read exits naming its argument."""
    for arg in argv:
        try:
            OmegaConf.from_dotlist([arg])
        except Exception as err:  # noqa: BLE001  (YAML's parser errors; OmegaConf's grammar errors)
            raise SystemExit(f"{prefix}cannot parse {arg!r}: {str(err).splitlines()[0]}") from None
    return OmegaConf.from_dotlist(argv)


def _defaults(schema: type | Mapping[str, Any]) -> dict[str, Any]:
    if not dataclasses.is_dataclass(schema):
        return dict(schema)
    out = {}
    for field in dataclasses.fields(schema):
        if field.default is not dataclasses.MISSING:
            out[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            out[field.name] = field.default_factory()
        else:
            out[field.name] = MISSING
    return out


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


__all__ = ["MISSING", "help_text", "parse_overrides"]
