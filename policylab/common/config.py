"""Config helpers: a safe arithmetic resolver for derived values.

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

from omegaconf import OmegaConf

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


register_resolvers()
