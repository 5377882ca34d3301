"""`debug=tiny` shrinks a run whatever its workspace: train.yaml selects debug_workspace/tiny_<workspace>.yaml,
so an epoch-based schedule never lands in a step-based workspace's schema (or the other way round)."""

import pytest

from policylab.workspaces.base import check_schema
from policylab.workspaces.onpolicy_distill import OnPolicyDistillWorkspace
from policylab.workspaces.reward_classifier import RewardClassifierWorkspace
from policylab.workspaces.rl_offline import OfflineRLWorkspace
from policylab.workspaces.rl_online import OnlineRLWorkspace
from policylab.workspaces.supervised import SupervisedWorkspace
from tests.helpers import compose_config

CASES = [  # workspace, the task it runs on, its class, the schedule debug=tiny gives it
    ("supervised", "pusht_lowdim", SupervisedWorkspace, {"num_epochs": 2}),
    ("onpolicy_distill", "pusht_lowdim", OnPolicyDistillWorkspace, {"num_steps": 4}),
    ("rl_offline", "pick_cube_lowdim", OfflineRLWorkspace, {"num_steps": 4}),
    ("rl_online", "pick_cube_lowdim", OnlineRLWorkspace, {"num_steps": 4}),
    ("reward_classifier", "pick_cube_success", RewardClassifierWorkspace, {"num_steps": 4}),
]


@pytest.mark.parametrize("workspace, task, cls, schedule", CASES, ids=[c[0] for c in CASES])
def test_debug_tiny_fits_every_workspaces_schema(workspace, task, cls, schedule):
    cfg = compose_config([f"workspace={workspace}", f"task={task}", "debug=tiny"])
    checked = {key: check_schema(cfg, key, schema) for key, schema in cls.schemas.items()}
    assert {k: checked["training"][k] for k in schedule} == schedule
    full = compose_config([f"workspace={workspace}", f"task={task}"])
    assert all(full.training[k] > v for k, v in schedule.items())  # shorter than the workspace's own
