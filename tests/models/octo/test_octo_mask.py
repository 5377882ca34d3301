"""Attention-mask rules of the block-wise causal transformer, as tables.

Each row: (query group, query timestep, key group, key timestep, attends?). Timestep -1 = prefix.
The mask is checked for every token pair of the two cells, so a row also checks that a cell is
uniform.
"""

from __future__ import annotations

import pytest
import torch

from policylab.models.octo import OctoModel, get_config
from policylab.models.octo.model import (
    OBS_RULES,
    TASK_RULES,
    example_inputs,
    readout_rules,
)
from policylab.models.octo.transformer import BlockTransformer, TokenGroup

D, B, TO = 4, 2, 3
N_TOKENS = {"task_language": 2, "obs_primary": 3, "obs_wrist": 1, "obs_task_language": 2, "readout_action": 1}
PREFIX = ["task_language"]
STEPS = ["obs_primary", "obs_wrist", "obs_task_language", "readout_action"]
RULES = {
    "task_language": TASK_RULES,
    "obs_primary": OBS_RULES,
    "obs_wrist": OBS_RULES,
    "obs_task_language": OBS_RULES,
    "readout_action": readout_rules("readout_action"),
}


def cell(name: str, t: int) -> slice:
    """Token positions of group ``name`` at timestep ``t`` in the assembled sequence."""
    n_prefix = sum(N_TOKENS[g] for g in PREFIX)
    if t < 0:
        start = sum(N_TOKENS[g] for g in PREFIX[: PREFIX.index(name)])
        return slice(start, start + N_TOKENS[name])
    per_step = sum(N_TOKENS[g] for g in STEPS)
    start = n_prefix + t * per_step + sum(N_TOKENS[g] for g in STEPS[: STEPS.index(name)])
    return slice(start, start + N_TOKENS[name])


def groups(step_masks: dict | None = None, prefix_mask=None):
    step_masks = step_masks or {}
    prefix = [
        TokenGroup(
            g,
            torch.zeros(B, N_TOKENS[g], D),
            prefix_mask if prefix_mask is not None else torch.ones(B, N_TOKENS[g], dtype=torch.bool),
            RULES[g],
        )
        for g in PREFIX
    ]
    steps = [
        TokenGroup(
            g,
            torch.zeros(B, TO, N_TOKENS[g], D),
            step_masks.get(g, torch.ones(B, TO, N_TOKENS[g], dtype=torch.bool)),
            RULES[g],
        )
        for g in STEPS
    ]
    return prefix, steps


def assert_cell(mask: torch.Tensor, q: str, tq: int, k: str, tk: int, expected: bool, batch: int = 0):
    block = mask[batch, cell(q, tq), cell(k, tk)]
    assert bool(block.all()) if expected else not bool(block.any()), f"{q}@{tq} -> {k}@{tk}: expected {expected}"


RULE_TABLE = [
    # task prefix attends to task only
    ("task_language", -1, "task_language", -1, True),
    ("task_language", -1, "obs_primary", 0, False),
    ("task_language", -1, "obs_task_language", 0, False),
    ("task_language", -1, "readout_action", 0, False),
    # observations: task, and obs_* at <= own timestep (incl. the repeated language group)
    ("obs_primary", 0, "task_language", -1, True),
    ("obs_primary", 0, "obs_primary", 0, True),
    ("obs_primary", 0, "obs_wrist", 0, True),
    ("obs_wrist", 0, "obs_primary", 0, True),
    ("obs_primary", 1, "obs_wrist", 0, True),
    ("obs_primary", 0, "obs_primary", 1, False),
    ("obs_wrist", 1, "obs_primary", 2, False),
    ("obs_primary", 2, "obs_task_language", 0, True),
    ("obs_task_language", 1, "obs_primary", 1, True),
    ("obs_task_language", 1, "obs_wrist", 2, False),
    ("obs_task_language", 0, "task_language", -1, True),
    # nobody but a readout reads a readout
    ("obs_primary", 2, "readout_action", 0, False),
    ("obs_primary", 0, "readout_action", 0, False),
    ("obs_task_language", 2, "readout_action", 1, False),
    # readouts: task, obs at <= t, own readout at <= t
    ("readout_action", 0, "task_language", -1, True),
    ("readout_action", 0, "obs_primary", 0, True),
    ("readout_action", 1, "obs_wrist", 0, True),
    ("readout_action", 0, "obs_primary", 1, False),
    ("readout_action", 1, "obs_task_language", 1, True),
    ("readout_action", 1, "readout_action", 0, True),
    ("readout_action", 1, "readout_action", 1, True),
    ("readout_action", 0, "readout_action", 1, False),
]


@pytest.mark.parametrize("q,tq,k,tk,expected", RULE_TABLE)
def test_group_rules(q, tq, k, tk, expected):
    mask = BlockTransformer(D, 0, 1, D, 1e-6).attention_mask(*groups())
    assert mask.shape == (B, 2 + TO * 7, 2 + TO * 7)
    assert_cell(mask, q, tq, k, tk, expected)


def _padding_case(case: str):
    """Key-padding inputs: sample 0 is padded as named, sample 1 is not padded."""
    masks, prefix_mask = {}, None
    if case == "obs_primary@0":
        m = torch.ones(B, TO, N_TOKENS["obs_primary"], dtype=torch.bool)
        m[0, 0] = False
        masks["obs_primary"] = m
    elif case == "task":
        prefix_mask = torch.ones(B, N_TOKENS["task_language"], dtype=torch.bool)
        prefix_mask[0] = False
    return groups(masks, prefix_mask)


PADDING_TABLE = [
    # (padding case, query, tq, key, tk, attends? for the padded sample 0)
    ("obs_primary@0", "obs_primary", 1, "obs_primary", 0, False),
    ("obs_primary@0", "readout_action", 2, "obs_primary", 0, False),
    ("obs_primary@0", "obs_primary", 0, "obs_primary", 0, False),  # a padded token sees no padded key either
    ("obs_primary@0", "readout_action", 1, "obs_wrist", 0, True),  # other groups at t=0 stay visible
    ("obs_primary@0", "obs_primary", 1, "obs_primary", 1, True),
    ("task", "obs_primary", 0, "task_language", -1, False),
    ("task", "readout_action", 2, "task_language", -1, False),
    ("task", "task_language", -1, "task_language", -1, False),  # a fully masked row
    ("task", "readout_action", 0, "obs_task_language", 0, True),  # only the group's own mask counts
]


@pytest.mark.parametrize("case,q,tq,k,tk,expected", PADDING_TABLE)
def test_key_padding(case, q, tq, k, tk, expected):
    transformer = BlockTransformer(D, 0, 1, D, 1e-6)
    mask = transformer.attention_mask(*_padding_case(case))
    assert_cell(mask, q, tq, k, tk, expected, batch=0)
    assert torch.equal(mask[1], transformer.attention_mask(*groups())[1])  # the unpadded sample keeps the rules


def test_prefix_attending_to_timesteps_is_rejected():
    prefix, steps = groups()
    prefix[0].rules = {"task_*": TASK_RULES["task_*"], "obs_*": OBS_RULES["obs_*"]}
    with pytest.raises(ValueError, match="may not attend"):
        BlockTransformer(D, 0, 1, D, 1e-6).attention_mask(prefix, steps)



MODEL_PADDING_TABLE = [
    # (model input, group, timestep, whether its tokens are valid keys for sample 0)
    ("timestep_pad_mask", "obs_primary", 0, False),
    ("timestep_pad_mask", "obs_wrist", 0, False),
    ("timestep_pad_mask", "obs_primary", 1, True),
    ("timestep_pad_mask", "obs_task_language", 0, True),  # Octo 1.5: not AND-ed with the timestep mask
    ("timestep_pad_mask", "readout_action", 0, True),  # readout masks are always 1
    ("pad_mask_dict", "obs_wrist", 1, False),
    ("pad_mask_dict", "obs_primary", 1, True),
    ("pad_mask_dict", "obs_wrist", 0, True),
    ("language_mask", "task_language", -1, False),
    ("language_mask", "obs_task_language", 1, False),
    ("language_mask", "obs_primary", 0, True),
]


@pytest.mark.parametrize("source,group,t,valid", MODEL_PADDING_TABLE)
def test_model_builds_octo_masks(source, group, t, valid):
    cfg = get_config("tiny")
    model = OctoModel(cfg)
    obs, task = example_inputs(cfg, batch=2, window=2)
    if source == "timestep_pad_mask":
        obs["timestep_pad_mask"] = torch.tensor([[False, True], [True, True]])
    elif source == "pad_mask_dict":
        obs["pad_mask_dict"] = {"image_wrist": torch.tensor([[True, False], [True, True]])}
    else:
        task["language_mask"] = torch.tensor([False, True])
    prefix, steps = model.token_groups(obs, task)
    group_mask = {g.name: g.mask for g in prefix + steps}[group]
    cell_mask = group_mask[0] if t < 0 else group_mask[0, t]
    assert bool(cell_mask.all()) if valid else not bool(cell_mask.any())
    other = group_mask[1] if t < 0 else group_mask[1, t]
    assert bool(other.all())
