"""Each default is set once: config/workspace/*.yaml and config/conrft/paper.yaml hold the values
(and what each key means); the dataclass schemas hold names and types only.

Why the YAML and not the dataclass: the YAML is what a user reads, overrides on the command line
(Hydra overrides only keys the composed config has) and finds in a run's `.hydra/config.yaml`;
"hyperparameters live in configs". A schema with defaults would be a second copy that drifts
(it did: 5 of 99 keys differed, e.g. `training.num_epochs` 100 in code, 3000 in YAML).
"""

import dataclasses

import pytest
from omegaconf import MISSING, OmegaConf

from policylab.common.config import CONFIG_DIR
from policylab.rl.conrft import ConRFTConfig
from policylab.workspaces.base import check_schema
from policylab.workspaces.onpolicy_distill import OnPolicyDistillWorkspace
from policylab.workspaces.reward_classifier import RewardClassifierWorkspace
from policylab.workspaces.rl_offline import OfflineRLWorkspace
from policylab.workspaces.rl_online import OnlineRLWorkspace
from policylab.workspaces.supervised import SupervisedWorkspace
from tests.helpers import compose_config

WORKSPACES = {  # workspace: (class, the task it composes with, the YAML files it composes, base first)
    "supervised": (SupervisedWorkspace, "pusht_lowdim", ["base/common", "supervised"]),
    "rl_offline": (OfflineRLWorkspace, "pick_cube_lowdim", ["base/common", "rl_offline"]),
    "rl_online": (OnlineRLWorkspace, "pick_cube_lowdim", ["base/common", "rl_offline", "rl_online"]),
    "reward_classifier": (RewardClassifierWorkspace, "pick_cube_success", ["base/common", "reward_classifier"]),
    "onpolicy_distill": (OnPolicyDistillWorkspace, "pusht_lowdim", ["base/common", "onpolicy_distill"]),
}


def _leaves(node, prefix=""):
    """{dotted key: value} of a YAML file's leaves, interpolations unresolved."""
    out = {}
    for key, value in node.items_ex(resolve=False) if OmegaConf.is_dict(node) else []:
        if OmegaConf.is_dict(value) and len(value):
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return out


def _yaml(name: str) -> dict:
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    return _leaves(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "defaults"]))


def _schemas():
    for name, (cls, _, _) in WORKSPACES.items():
        for section, schema in cls.schemas.items():
            yield f"{name}.{section}", schema
    yield "ConRFTConfig", ConRFTConfig


@pytest.mark.parametrize("where, schema", list(_schemas()), ids=[w for w, _ in _schemas()])
def test_schemas_hold_no_values(where, schema):
    with_value = [f.name for f in dataclasses.fields(schema)
                  if f.default is not dataclasses.MISSING and f.default != MISSING
                  or f.default_factory is not dataclasses.MISSING]
    assert not with_value, f"{where}: {with_value} have a value in code; set it in the YAML instead"


@pytest.mark.parametrize("name", sorted(WORKSPACES))
def test_the_yaml_sets_every_schema_key(name):
    cls, task, _ = WORKSPACES[name]
    cfg = compose_config([f"workspace={name}", f"task={task}"])
    for section, schema in cls.schemas.items():
        check_schema(cfg, section, schema)  # an unknown key or one without a value fails, naming it
    if name.startswith("rl_"):
        for stage in ("offline", "online"):
            stage_cfg = {**OmegaConf.to_container(cfg.conrft.common, resolve=True),
                         **OmegaConf.to_container(cfg.conrft[stage], resolve=True)}
            ConRFTConfig(**stage_cfg)  # every field set, none unknown


@pytest.mark.parametrize("name", sorted(WORKSPACES))
def test_no_yaml_restates_a_value_it_composes(name):
    files = [f"workspace/{f}" for f in WORKSPACES[name][2]]
    for i, child in enumerate(files[1:], start=1):
        mine = _yaml(child)
        for parent in files[:i]:
            same = sorted(k for k, v in _yaml(parent).items() if k in mine and mine[k] == v)
            assert not same, f"{child}.yaml sets {same} to the value {parent}.yaml already sets"


def test_conrft_presets_set_each_value_once():
    paper = _yaml("conrft/paper")
    common = {k.split(".", 1)[1] for k in paper if k.startswith("common.")}
    for stage in ("offline", "online"):
        both = sorted(common & {k.split(".", 1)[1] for k in paper if k.startswith(f"{stage}.")})
        assert not both, f"paper.yaml sets {both} in `common` and in `{stage}`"
    for preset in ("code", "anchored"):
        mine = _yaml(f"conrft/{preset}")
        same = sorted(k for k, v in paper.items() if k in mine and mine[k] == v)
        assert not same, f"{preset}.yaml restates paper.yaml's {same}"


@pytest.mark.parametrize("name", sorted(WORKSPACES))
def test_every_workspace_picks_its_device(name):
    task = WORKSPACES[name][1]
    assert compose_config([f"workspace={name}", f"task={task}"]).training.device == "auto"
