"""Metadata lives in pyproject.toml. This only ships the Hydra configs: a wheel (a non-editable
install) carries the checkout's `config/` as `policylab/config/`, where `policylab.paths` finds it."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithConfigs(build_py):
    def run(self):
        super().run()
        source = Path(__file__).resolve().parent / "config"
        target = Path(self.build_lib) / "policylab" / "config"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.pyc", "__pycache__"))


setup(cmdclass={"build_py": BuildWithConfigs})
