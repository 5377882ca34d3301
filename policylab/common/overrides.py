"""`key=value` command lines parsed as Hydra parses overrides (OmegaConf dotlists, YAML values),
checked against a dataclass schema: a misspelt key, a missing required key or a value of the
wrong type exits with a message naming it."""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException


def parse_overrides(schema: type, argv: list[str], prog: str = "") -> Any:
    """An instance of the dataclass `schema` from `key=value` arguments (fields default to the
    schema's; fields without a default, or defaulting to MISSING, are required)."""
    prefix = f"{prog}: " if prog else ""
    fields = [f.name for f in dataclasses.fields(schema)]
    bad = [a for a in argv if "=" not in a or a.startswith("-")]
    if bad:
        raise SystemExit(f"{prefix}unexpected argument(s) {bad}; expected key=value with key in {fields}")
    base = OmegaConf.structured(schema)
    try:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(argv))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", None)
        if key is not None and str(key).split(".")[0] not in fields:
            raise SystemExit(f"{prefix}unknown key {key!r}; known: {fields}") from None
        message = str(getattr(err, "msg", err)).splitlines()[0]
        raise SystemExit(f"{prefix}{key}: {message}" if key else f"{prefix}{message}") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise SystemExit(f"{prefix}missing required argument(s): {', '.join(k + '=...' for k in missing)}")
    return OmegaConf.to_object(cfg)


__all__ = ["MISSING", "parse_overrides"]
