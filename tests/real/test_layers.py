"""The device layer (`policylab/real/`) imports nothing from training, directly or through what it imports.

Read from the source (AST), so it holds without the hardware libraries installed. Allowed below
the devices: `policylab.common` and the recording format (`policylab.data`'s replay buffer and
its codecs); everything else of policylab (rl, workspaces, policies, models, envs, robot_apps,
...) is above them.
"""

import ast
from pathlib import Path

from tests.helpers import REPO

DEVICE_LAYER = REPO / "policylab" / "real"
BELOW = ("policylab.real", "policylab.common")  # packages, with everything in them
RECORDING_FORMAT = {"policylab.data", "policylab.data.replay_buffer", "policylab.data.replay_backends",
                    "policylab.data.codecs", "policylab.data.checksums"}


def _policylab_imports(path: Path) -> set[str]:
    """Every `policylab.*` module `path` imports (at any depth of the file: lazy imports count)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "policylab"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("policylab"):
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names if _source(f"{node.module}.{a.name}")}
    return names


def _source(module: str) -> Path | None:
    path = REPO / Path(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _reachable(start: list[Path]) -> dict[str, str]:
    """module -> the file that imports it, over every policylab module reachable from `start`."""
    seen: dict[str, str] = {}
    todo = list(start)
    while todo:
        path = todo.pop()
        for module in _policylab_imports(path):
            if module in seen:
                continue
            seen[module] = str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
            source = _source(module)
            if source is not None:
                todo.append(source)
    return seen


def _is_allowed(module: str) -> bool:
    return module in RECORDING_FORMAT or any(module == p or module.startswith(p + ".") for p in BELOW)


def test_the_device_layer_imports_nothing_from_training():
    files = sorted(DEVICE_LAYER.rglob("*.py"))
    assert len(files) > 20  # robots, cameras, teleop, shared memory, RealEnv, timing, stand-ins
    reached = _reachable(files)
    assert "policylab.real.real_env" in reached  # the walk does follow policylab's own imports
    upward = {module: by for module, by in reached.items() if not _is_allowed(module)}
    assert upward == {}, f"device-layer imports of training code (module: imported by): {upward}"


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from policylab.rl.episodes import to_store\n")
    reached = _reachable([bad])
    assert "policylab.rl.episodes" in reached and not _is_allowed("policylab.rl.episodes")
