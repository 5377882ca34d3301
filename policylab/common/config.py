"""Config helpers: a safe arithmetic resolver for derived values, and `compose`, the one way code
outside `train.py` builds the config `train.py <overrides>` would run.

Diffusion Policy computes derived values with `${eval:...}`, which runs arbitrary Python from a
YAML file or a command-line override. policylab's `${calc:...}` evaluates only arithmetic:

    n_action_steps: ${calc:${horizon} - ${n_obs_steps} + 1}
    n_action_steps: ${calc:horizon - n_obs_steps + 1}     # bare names are top-level config keys
    width: ${calc:'(${horizon} // 4) * 32'}              # quote expressions with parentheses

Numbers, names, `+ - * / // %` and parentheses are accepted (no `**`); attribute access,
calls, subscripts, strings and everything else raise `ValueError` naming the offending part.
Its cost is bounded: an expression is at most `MAX_CALC_CHARS` long and `MAX_CALC_DEPTH` deep,
integers stay within `MAX_CALC_INT_BITS` bits, a name is resolved once per evaluation, and a calc
may reach at most `MAX_CALC_NESTING` other calc values through names (a cycle fails fast).

`load_bounded_yaml` reads a config that came from elsewhere (a checkpoint's config.yaml) with
limits on its size, its expansion through YAML aliases, list lengths and nesting depth.
"""

from __future__ import annotations

import ast
import operator
import threading
from collections.abc import Sequence
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf._utils import get_yaml_loader

from policylab.paths import config_dir

CONFIG_DIR = config_dir()

# A resolved training config is about 6 KB, ~700 values, lists of at most a few dozen items, nested
# under 10 deep, with expressions of a few dozen characters: the bounds leave wide margins.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 50_000  # keys and list items, counted after YAML aliases are expanded
MAX_LIST_LENGTH = 10_000
MAX_CONFIG_DEPTH = 64
MAX_CALC_CHARS = 1_000
MAX_CALC_DEPTH = 32
MAX_CALC_INT_BITS = 64
MAX_CALC_NESTING = 16  # each level is ~60 Python frames deep in OmegaConf


class ConfigLimitError(ValueError):
    """A config from elsewhere exceeds a bound on the work of loading it; the message names the key."""

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
    text = str(expression).strip()
    if len(text) > MAX_CALC_CHARS:
        raise ValueError(f"calc: expression of {len(text)} characters (at most {MAX_CALC_CHARS}): {text[:60]!r}...")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, RecursionError, MemoryError) as err:
        raise ValueError(f"calc: cannot parse {expression!r}: {getattr(err, 'msg', 'nested too deeply')}") from None

    def number(value, what):
        if type(value) is int and value.bit_length() > MAX_CALC_INT_BITS:
            raise ValueError(f"calc: {what} exceeds {MAX_CALC_INT_BITS} bits in {expression!r}")
        return value

    def visit(node, depth=0):
        if depth > MAX_CALC_DEPTH:
            raise ValueError(f"calc: {expression!r} is nested deeper than {MAX_CALC_DEPTH}")
        if isinstance(node, ast.Expression):
            return visit(node.body, depth + 1)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return number(node.value, repr(node.value))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = visit(node.left, depth + 1), visit(node.right, depth + 1)
            try:
                return number(_BINARY[type(node.op)](left, right), f"the value of {ast.unparse(node)!r}")
            except ZeroDivisionError:
                raise ValueError(f"calc: division by zero in {expression!r}") from None
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](visit(node.operand, depth + 1))
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise ValueError(f"calc: unknown name {node.id!r} in {expression!r}")
            value = names[node.id]
            if type(value) not in (int, float):
                raise ValueError(f"calc: name {node.id!r} is {value!r}, not a number, in {expression!r}")
            return number(value, f"name {node.id!r}")
        raise ValueError(
            f"calc: {ast.unparse(node)!r} is not allowed in {expression!r}; "
            "only numbers, names, + - * / // % and parentheses are")

    return visit(tree)


_evaluation = threading.local()  # the calc evaluation in progress on this thread: its root, names, nesting


class _RootNames:
    """Top-level config keys, resolved only when an expression names them, once per evaluation."""

    def __init__(self, root, cache: dict):
        self.root, self.cache = root, cache

    def __contains__(self, name: str) -> bool:  # `in` on a DictConfig would resolve the value, uncached
        return name in self.cache or name in getattr(self.root, "keys", tuple)()

    def __getitem__(self, name: str):
        if name not in self.cache:
            self.cache[name] = self.root[name]
        return self.cache[name]


def _calc(expression, *, _root_) -> int | float:
    if type(expression) in (int, float):
        return expression
    outer = getattr(_evaluation, "state", None)
    state = outer if outer is not None and outer["root"] is _root_ else {"root": _root_, "names": {}, "depth": 0}
    if state["depth"] >= MAX_CALC_NESTING:
        raise ValueError(f"calc: {expression!r} reaches more than {MAX_CALC_NESTING} calc values through names "
                         f"(a cycle?)")
    _evaluation.state, state["depth"] = state, state["depth"] + 1
    try:
        return safe_arithmetic(expression, _RootNames(_root_, state["names"]))
    finally:
        state["depth"] -= 1
        _evaluation.state = outer


def load_bounded_yaml(path: str | Path) -> DictConfig:
    """OmegaConf.load(path) for a file from elsewhere: ConfigLimitError naming the file and key when it
    is larger than MAX_CONFIG_BYTES, expands (through YAML aliases) to more than MAX_CONFIG_VALUES
    values, holds a list longer than MAX_LIST_LENGTH, nests deeper than MAX_CONFIG_DEPTH or
    refers to itself."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigLimitError(f"{path} is {size} bytes; a config from elsewhere may be at most {MAX_CONFIG_BYTES}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=get_yaml_loader())
    except RecursionError:
        raise ConfigLimitError(f"{path} is nested too deeply to parse") from None
    if data is None:
        return OmegaConf.create()
    if not isinstance(data, dict):
        raise ConfigLimitError(f"{path} holds a {type(data).__name__}, not a mapping of keys")
    try:
        _count_values(data, "", {}, set(), 0)
    except ConfigLimitError as err:
        raise ConfigLimitError(f"{path}: {err}") from None
    return OmegaConf.create(data)


def _count_values(node, key: str, seen: dict, active: set, depth: int) -> int:
    """The number of keys and items under `node` once YAML aliases are expanded (each shared node is
    counted, not walked, again); raises ConfigLimitError at the first key beyond a bound."""
    if not isinstance(node, (dict, list)):
        return 1
    if id(node) in seen:
        return seen[id(node)]
    if id(node) in active:
        raise ConfigLimitError(f"{key or '<root>'} contains itself (a recursive YAML alias)")
    if depth > MAX_CONFIG_DEPTH:
        raise ConfigLimitError(f"{key} is nested deeper than {MAX_CONFIG_DEPTH}")
    if isinstance(node, list) and len(node) > MAX_LIST_LENGTH:
        raise ConfigLimitError(f"{key} is a list of {len(node)} items; at most {MAX_LIST_LENGTH}")
    items = node.items() if isinstance(node, dict) else enumerate(node)
    active.add(id(node))
    total = 1
    for k, value in items:
        child = f"{key}[{k}]" if isinstance(node, list) else f"{key}.{k}" if key else str(k)
        total += _count_values(value, child, seen, active, depth + 1)
        if total > MAX_CONFIG_VALUES:
            raise ConfigLimitError(f"{key} expands to more than {MAX_CONFIG_VALUES} values (YAML aliases "
                                   f"repeating a node?); a config from elsewhere may hold at most that")
    active.discard(id(node))
    seen[id(node)] = total
    return total


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


def load_task_config(task: str) -> DictConfig:
    """The composed, resolved `task` group of `config/task/<task>.yaml`."""
    if not (CONFIG_DIR / "task" / f"{task}.yaml").exists():
        known = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))
        raise SystemExit(f"unknown task {task!r}; known tasks: {known}")
    cfg = compose([f"task={task}"])
    return OmegaConf.create(OmegaConf.to_container(cfg.task, resolve=True))
