"""Where the benches write by default: outside the checkout, so that a run never dirties it.

The output root is `$POLICYLAB_BENCH_DIR`, else `$XDG_CACHE_HOME/policylab/bench`, else
`~/.cache/policylab/bench`. A bench's JSON goes to `<root>/results/<name>.json` and its runs and
data to `<root>/<name>/`; `--out bench/results/<name>.json` records a result into the repository,
where the committed figures are (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bench_root() -> Path:
    """The output root, absolute: read from the environment at each call (not at import)."""
    if explicit := os.environ.get("POLICYLAB_BENCH_DIR"):
        return Path(explicit).expanduser().absolute()
    cache = os.environ.get("XDG_CACHE_HOME", "")
    # the XDG spec: an unset, empty or relative XDG_CACHE_HOME means ~/.cache
    return (Path(cache) if os.path.isabs(cache) else Path.home() / ".cache") / "policylab" / "bench"


def bench_dir(name: str) -> Path:
    """`<root>/<name>`: the runs and data of bench `name`."""
    return bench_root() / name


def add_out_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """`--out`, the result JSON of bench `name`: `<root>/results/<name>.json` unless given."""
    parser.add_argument("--out", type=Path, default=bench_root() / "results" / f"{name}.json",
                        help=f"the result JSON (default: %(default)s); bench/results/{name}.json records the "
                             "result into the repository")


def write_json(path: Path, data) -> None:
    """Write `data` to `path` as indented JSON (a temporary file, then renamed: an interrupted write
    leaves the previous result whole) and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path.absolute()}", flush=True)


def shown(path: Path) -> str:
    """`path` as a result records it: relative to the output root ("<bench root>/...") or to the
    checkout, so that a result recorded into the repository names no directory of this machine."""
    path = Path(path)
    for base, name in ((bench_root(), "<bench root>"), (REPO, "")):
        if path.is_relative_to(base):
            return str(Path(name) / path.relative_to(base))
    return str(path)
