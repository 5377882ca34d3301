"""Config helpers: a safe arithmetic resolver for derived values, and `compose`, the one way code
outside `train.py` builds the config `train.py <overrides>` would run.

Diffusion Policy computes derived values with `${eval:...}`, which runs arbitrary Python from a
YAML file or a command-line override. policylab's `${calc:...}` evaluates only arithmetic:

    n_action_steps: ${calc:${horizon} - ${n_obs_steps} + 1}
    n_action_steps: ${calc:horizon - n_obs_steps + 1}     # bare names are top-level config keys
    width: ${calc:'(${horizon} // 4) * 32'}              # quote expressions with parentheses

Numbers, names, `+ - * / // %` and parentheses are accepted (no `**`); attribute access,
calls, subscripts, strings and everything else raise `ValueError` naming the offending part.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from policylab.paths import config_dir

CONFIG_DIR = config_dir()

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def safe_arithmetic(expression: str, names: dict | None = None) -> int | float:
    """Evaluate `expression` with numbers, `names`, `+ - * / // %` and parentheses only."""
    names = names or {}
    try:
        tree = ast.parse(str(expression).strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"calc: cannot parse {expression!r}: {err.msg}") from None

    def visit(node):
        if isinstance(node, ast.Expression):
            return visit(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](visit(node.left), visit(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](visit(node.operand))
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise ValueError(f"calc: unknown name {node.id!r} in {expression!r}")
            value = names[node.id]
            if type(value) not in (int, float):
                raise ValueError(f"calc: name {node.id!r} is {value!r}, not a number, in {expression!r}")
            return value
        raise ValueError(
            f"calc: {ast.unparse(node)!r} is not allowed in {expression!r}; "
            "only numbers, names, + - * / // % and parentheses are")

    return visit(tree)


class _RootNames:
    """Top-level config keys, resolved only when an expression names them."""

    def __init__(self, root):
        self.root = root

    def __contains__(self, name: str) -> bool:
        return name in self.root

    def __getitem__(self, name: str):
        return self.root[name]


def _calc(expression, *, _root_) -> int | float:
    if type(expression) in (int, float):
        return expression
    return safe_arithmetic(expression, _RootNames(_root_))


def register_resolvers() -> None:
    """Register `${calc:...}` with OmegaConf (idempotent)."""
    if not OmegaConf.has_resolver("calc"):
        OmegaConf.register_new_resolver("calc", _calc)


def compose(overrides: Sequence[str] = (), config_name: str = "train", config_dir: str | Path = CONFIG_DIR,
            return_hydra_config: bool = False, resolve: bool = False) -> DictConfig:
    """The config `train.py <overrides>` would run (Hydra's compose API), `${calc:}` registered.

    resolve: resolve interpolations in place, as train.py does before building anything.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides),
                            return_hydra_config=return_hydra_config)
    if resolve:
        OmegaConf.resolve(cfg)
    return cfg


register_resolvers()
