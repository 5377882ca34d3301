"""Optional dependencies: importing one that is missing names the extra that brings it and the
command that installs it, instead of a bare ModuleNotFoundError (or, through `gymnasium.make`,
gymnasium's "registration via importing a module failed").

    pymunk = require("pymunk", extra="pusht")
    require("mujoco", "gym_hil", extra="tasks")      # a check at a package's entry

The extras are those of pyproject.toml's `[project.optional-dependencies]`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# What an extra needs besides pip, said where its hint is.
NOTES = {
    "tasks": "MuJoCo renders headless through EGL or OSMesa: `make deps-sim` installs them too.",
    "robosuite": "robosuite's metadata pulls a second OpenCV build: `make deps-sim` installs it without it.",
    "real": "`make deps-real` also installs libusb and the SpaceMouse daemon.",
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed. Not a ModuleNotFoundError on purpose: gymnasium
    rewrites those into a registration message that hides this one."""

    def __init__(self, module: str, extra: str):
        self.module, self.extra = module, extra
        note = f" {NOTES[extra]}" if extra in NOTES else ""
        super().__init__(f"{module} is not installed; it comes with policylab's `{extra}` extra: "
                         f"{install_hint(extra)} (in a clone: pip install -e '.[{extra}]').{note}", name=module)


def install_hint(extra: str) -> str:
    """The command that installs `extra`."""
    return f"pip install 'policylab[{extra}]'"


def require(*modules: str, extra: str) -> ModuleType:
    """Import `modules` (dotted names allowed) and return the last one; a module that is not
    installed raises MissingExtraError naming `extra`. A module that is installed but fails on a
    missing dependency of its own keeps the original error (it is not ours to explain)."""
    module = None
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not (name == err.name or name.startswith(err.name + ".")):
                raise
            raise MissingExtraError(err.name, extra) from err
    return module


__all__ = ["MissingExtraError", "install_hint", "require"]
