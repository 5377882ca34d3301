"""Build objects from a config that came from elsewhere (a checkpoint's config.yaml) without running code.

`hydra.utils.instantiate` imports and calls whatever `_target_` names, and OmegaConf runs every
registered resolver while resolving `${...}`. A checkpoint is exchanged between people, so its
config is checked first, as a whole, and only then built:

1. interpolations: only references to other keys (`${horizon}`) and the arithmetic `${calc:...}`
   (policylab/common/config.py, no names beyond config keys); `${oc.env:...}`, `${oc.decode:...}` and
   any other resolver are refused before anything is resolved;
2. every `_target_` anywhere in the resolved tree (nested keys, lists, `_args_`, under
   `_recursive_: false`, with `_partial_`) must be on the allow-list below; hydra's own keys must
   have the values hydra expects;
3. `env_id` values with a `module:` prefix (gymnasium imports that module) must name a policylab
   env module.

Nothing in such a config may make loading it hang either (`ConfigLimitError`, naming the key):
resolving its interpolations may take at most `MAX_RESOLUTION_STEPS` steps (OmegaConf resolves a
reference again at every use: 20 keys each using the previous one twice cost 2^20), and numbers
that size an allocation or a process count (scheduler steps, `n_envs`, network widths, image
shapes; `SIZE_LIMITS`) have sanity bounds far above any shipped config.

The allow-list is by package, not by registration: a class defined in one of `ALLOWED_PACKAGES`
(policies, networks, encoders, env runners, envs, datasets) is buildable, so a new policy or task is
buildable with no extra step. The check is on the located object, not the string, so a path through
a re-exported module (`policylab.policies.diffusion.torch.load`) is refused: the object must be a
class whose canonical `module.qualname` is the target itself. Functions and third-party classes are
listed one by one in `ALLOWED_TARGETS`; `allow_target` adds one (e.g. for a plugin's class).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from policylab.common.config import ConfigLimitError  # importing it registers ${calc:}

ALLOWED_PACKAGES = ("policylab.policies.", "policylab.models.", "policylab.env_runners.", "policylab.envs.",
                    "policylab.data.datasets.")
# Callables that are not classes in ALLOWED_PACKAGES but that checkpoint configs name.
ALLOWED_TARGETS = {
    "policylab.policies.base.BasePolicy.from_checkpoint",  # loads through load_policy: checked again
    "diffusers.DDPMScheduler",
    "diffusers.DDIMScheduler",
    "diffusers.schedulers.scheduling_ddpm.DDPMScheduler",
    "diffusers.schedulers.scheduling_ddim.DDIMScheduler",
}
SAFE_RESOLVERS = ("calc",)
ENV_ID_PACKAGES = ("policylab.envs",)
_HYDRA_FLAGS = {"_partial_": bool, "_recursive_": bool}
_CONVERT_VALUES = ("none", "partial", "object", "all")
_NODE_REF = re.compile(r"\s*[\w.\-\[\]]+\s*\}")
_RESOLVER = re.compile(r"\s*(" + "|".join(map(re.escape, SAFE_RESOLVERS)) + r")\s*:")
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_NAME = re.compile(r"[A-Za-z_]\w*")
_PATH_PART = re.compile(r"[^.\[\]]+")

# A training config resolves in ~1,000 steps.
MAX_RESOLUTION_STEPS = 200_000
# Bounds by key name (full match) on numbers that size an allocation or a process count, and on the
# numbers in a list under such a key. The largest shipped values: down_dims 2048, shapes 640,
# num_train_timesteps 100, n_envs 2; `_args_` items are positional and get the step bound.
SIZE_LIMITS = {
    r"num_train_timesteps|num_inference_steps|num_ddim_timesteps|num_scales|scales_(start|end)|num_bins|_args_":
        100_000,
    r"n_envs": 256,
    r"n_(train|test)(_vis)?": 100_000,
    r"horizon|n_obs_steps|n_action_steps": 10_000,
    r".*_dims?|n_emb|d_model|width|hidden_size|.*_channels": 16_384,
    r"n_layers?|num_layers|n_heads?|num_heads|depth": 1_024,
    r"shape|.*_shape|.*resolution|image_size": 16_384,
}


class UnsafeConfigError(ValueError):
    """A config from elsewhere names something that could run code; the message names the key."""


def allow_target(target: str) -> None:
    """Make `target` (a dotted path) buildable from checkpoint configs."""
    ALLOWED_TARGETS.add(target)


def instantiate_trusted(node: DictConfig | ListConfig | Mapping, key_path: str, **kwargs) -> Any:
    """`hydra.utils.instantiate(node, **kwargs)` after checking the whole config `node` belongs to.

    `key_path` is where `node` sits (e.g. "policy", "task.env_runner"); errors name keys under it.
    `kwargs` come from the caller's code and are not checked.
    """
    return hydra.utils.instantiate(check_config(node, key_path), **kwargs)


def check_config(node: DictConfig | ListConfig | Mapping, key_path: str) -> Any:
    """The resolved plain (dict/list) value of `node` once all three checks pass; raises UnsafeConfigError.

    Build it with `hydra.utils.instantiate`: it holds no interpolation left to resolve.
    """
    resolved = resolve_checked(node, key_path)
    check_targets(resolved, key_path)
    return resolved


def resolve_checked(node: DictConfig | ListConfig | Mapping, key_path: str) -> Any:
    """The plain (dict/list) resolved value of `node`; refuses unsafe interpolations anywhere in its config."""
    if not isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.create(node)
    root = node._get_root()  # a reference may point anywhere in the config: check all of it
    tree = OmegaConf.to_container(root, resolve=False)
    _check_interpolations(tree, key_path if root is node else "")
    check_resolution_cost(tree)
    resolved = OmegaConf.to_container(node, resolve=True)
    _check_no_interpolation_left(resolved, key_path)
    check_sizes(resolved, key_path)
    return resolved


def check_sizes(tree: Any, key_path: str = "") -> None:
    """Refuse a number beyond its `SIZE_LIMITS` bound anywhere in the plain `tree` (ConfigLimitError)."""
    limits = [(re.compile(pattern), limit) for pattern, limit in SIZE_LIMITS.items()]
    for path, value in walk_config(tree, key_path):
        if not isinstance(value, Mapping):
            continue
        for key, item in value.items():
            limit = next((lim for pattern, lim in limits if pattern.fullmatch(str(key))), None)
            items = item if isinstance(item, (list, tuple)) else [item]
            for number in items if limit is not None else ():
                if isinstance(number, (int, float)) and not isinstance(number, bool) and abs(number) > limit:
                    raise ConfigLimitError(
                        f"{_join(path, str(key))} = {item!r} is beyond the sanity bound {limit} for a size that "
                        f"allocates memory or processes (safe_config.SIZE_LIMITS); refusing it from a config "
                        f"that came from elsewhere")


def check_resolution_cost(tree: Any) -> None:
    """Refuse the plain unresolved config `tree` (the root) when resolving it would take more than
    MAX_RESOLUTION_STEPS steps, or when a key refers to itself; the error names the key.

    Each `${key}` costs what resolving `key` costs, at every use; a name in `${calc:...}` is
    resolved once per evaluation (config.py), so it counts once per string."""
    values = dict(_walk_parts(tree, ()))
    top = set(tree) if isinstance(tree, Mapping) else set()
    memo: dict[tuple, int] = {}

    def cost(parts: tuple, active: frozenset) -> int:
        if parts in memo:
            return memo[parts]
        if parts in active:
            raise ConfigLimitError(f"{'.'.join(parts)} refers to itself through interpolations")
        value = values.get(parts)
        if isinstance(value, Mapping):
            refs = [(*parts, str(k)) for k in value]
        elif isinstance(value, (list, tuple)):
            refs = [(*parts, str(i)) for i in range(len(value))]
        else:
            refs = _references(value, parts, top) if isinstance(value, str) else []
        total = 1
        for ref in refs:
            total += cost(ref, active | {parts}) if ref in values else 1
            if total > MAX_RESOLUTION_STEPS:
                raise ConfigLimitError(
                    f"{'.'.join(parts) or '<config>'} takes more than {MAX_RESOLUTION_STEPS} steps to resolve (each "
                    f"reference is resolved again where it is used: a chain of keys that use the previous one "
                    f"several times?); refusing it from a config that came from elsewhere")
        memo[parts] = total
        return total

    try:
        for parts in sorted(values, key=len, reverse=True):  # keys before the containers that sum them
            cost(parts, frozenset())
    except RecursionError:
        raise ConfigLimitError("the config's interpolations refer through a chain of keys too long to resolve") from None


def _references(text: str, parts: tuple, top: set) -> list[tuple]:
    """The keys `text` refers to: `${a.b}` / `${..a}` each time, bare top-level names in a calc once."""
    refs: list[tuple] = []
    start = text.find("${")
    while start != -1:
        rest = text[start + 2:]
        if _NODE_REF.match(rest):
            ref = rest[:rest.index("}")].strip()
            dots = len(ref) - len(ref.lstrip("."))
            base = parts[:-1][:len(parts) - dots] if dots else ()
            refs.append((*base, *_PATH_PART.findall(ref)))
        start = text.find("${", start + 2)
    if "calc" in text:
        refs += [(name,) for name in dict.fromkeys(_NAME.findall(text)) if name in top and name != "calc"]
    return refs


def _walk_parts(tree: Any, parts: tuple):
    """(key tuple, value) for `tree` and everything under it; list indices as strings."""
    yield parts, tree
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _walk_parts(value, (*parts, str(key)))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _walk_parts(value, (*parts, str(i)))


def check_targets(tree: Any, key_path: str = "") -> None:
    """Refuse any `_target_` in the plain `tree` not on the allow-list, before anything is imported from it."""
    if isinstance(tree, (DictConfig, ListConfig)):
        tree = OmegaConf.to_container(tree, resolve=False)
    for path, value in walk_config(tree, key_path):
        if not isinstance(value, Mapping):
            continue
        for key, flag_type in _HYDRA_FLAGS.items():
            if key in value and not isinstance(value[key], flag_type):
                raise UnsafeConfigError(f"{_join(path, key)} must be true or false, got {value[key]!r}")
        if "_convert_" in value and str(value["_convert_"]).lower() not in _CONVERT_VALUES:
            raise UnsafeConfigError(f"{_join(path, '_convert_')} must be one of {_CONVERT_VALUES}, "
                                    f"got {value['_convert_']!r}")
        if "_args_" in value and not isinstance(value["_args_"], list):
            raise UnsafeConfigError(f"{_join(path, '_args_')} must be a list, got {type(value['_args_']).__name__}")
        if "_target_" in value:
            _check_target(value["_target_"], _join(path, "_target_"))
        if isinstance(value.get("env_id"), str) and ":" in value["env_id"]:
            module = value["env_id"].split(":", 1)[0]
            if not any(module == p or module.startswith(p + ".") for p in ENV_ID_PACKAGES):
                raise UnsafeConfigError(f"{_join(path, 'env_id')} = {value['env_id']!r} would import module "
                                        f"{module!r}; only modules under {ENV_ID_PACKAGES} may be imported")


def is_allowed_target(target: str) -> bool:
    if target in ALLOWED_TARGETS:
        return True
    if not _DOTTED.fullmatch(target) or not target.startswith(ALLOWED_PACKAGES):
        return False  # decided on the string alone: nothing outside policylab is imported to check it
    if any(part.startswith("_") for part in target.split(".")):
        return False
    try:
        obj = hydra.utils.get_object(target)
    except (ImportError, AttributeError, ValueError):  # hydra wraps a failed lookup in ImportError
        return False
    canonical = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
    return isinstance(obj, type) and canonical == target


def _check_target(target: Any, path: str) -> None:
    if not isinstance(target, str):
        raise UnsafeConfigError(f"{path} must be a dotted name, got {type(target).__name__} {target!r}")
    if not is_allowed_target(target):
        raise UnsafeConfigError(
            f"{path} = {target!r} is not on the allow-list of buildable targets (classes defined under "
            f"{', '.join(p.rstrip('.') for p in ALLOWED_PACKAGES)}, and safe_config.ALLOWED_TARGETS); refusing "
            f"to build it from a config that came from elsewhere")


def _check_interpolations(tree: Any, key_path: str) -> None:
    for path, value in walk_config(tree, key_path):
        if not isinstance(value, str):
            continue
        start = value.find("${")
        while start != -1:
            rest = value[start + 2:]
            if not (_RESOLVER.match(rest) or _NODE_REF.match(rest)):
                raise UnsafeConfigError(
                    f"{path or '<config>'} = {value!r}: only references to keys and ${{calc:...}} are allowed in "
                    f"a config from elsewhere (other resolvers can read the environment or build configs)")
            start = value.find("${", start + 2)


def _check_no_interpolation_left(tree: Any, key_path: str) -> None:
    for path, value in walk_config(tree, key_path):
        if isinstance(value, str) and "${" in value:
            raise UnsafeConfigError(f"{path} = {value!r} still holds an interpolation after resolving "
                                    f"(an escaped or assembled one); refusing it")


def walk_config(tree: Any, path: str):
    """(key path, value) for `tree` and everything under it, parents first."""
    yield path, tree
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from walk_config(value, _join(path, str(key)))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from walk_config(value, f"{path}[{i}]")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
