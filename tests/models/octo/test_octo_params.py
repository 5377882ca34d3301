"""Exact parameter counts of the released Octo sizes (from instantiating Octo's Flax modules).

Models are built on the meta device: shapes only, no memory, no init, so these stay fast.
"""

from __future__ import annotations

import pytest
import torch

from policylab.models.octo import OctoModel, count_parameters, get_config

# Reference counts, excluding the T5 language model. "with head" = Octo's published 27M / 93M.
REFERENCE = {
    "octo_small": {"with_head": 27_042_060, "octo_transformer": 25_338_496},
    "octo_base": {"with_head": 92_830_092, "octo_transformer": 91_028_224},
}
# Component sizes the reference gives in millions.
COMPONENTS_M = {
    "octo_small": {"transformer": 21.29, "image_tokenizer": 1.06, "action_head": 1.70},
    "octo_base": {"transformer": 85.06, "action_head": 1.80},
}


def build_on_meta(name: str) -> OctoModel:
    with torch.device("meta"):
        return OctoModel(get_config(name))


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_exact_parameter_counts(name):
    model = build_on_meta(name)
    assert count_parameters(model) == REFERENCE[name]["with_head"]
    assert count_parameters(model) - count_parameters(model.action_head) == REFERENCE[name]["octo_transformer"]


@pytest.mark.parametrize("name", sorted(COMPONENTS_M))
def test_component_sizes(name):
    model = build_on_meta(name)
    parts = {
        "transformer": model.transformer,
        "image_tokenizer": model.observation_tokenizers["primary"],
        "action_head": model.action_head,
    }
    for part, millions in COMPONENTS_M[name].items():
        assert round(count_parameters(parts[part]) / 1e6, 2) == millions, part


def test_encoder_without_head_or_language():
    cfg = get_config("octo_small", action_head=None, language_dim=0)
    with torch.device("meta"):
        model = OctoModel(cfg)
    language = 768 * 384 + 384 + 16 * 384  # task_language_projection + task_language_pos_embedding
    assert count_parameters(model) == REFERENCE["octo_small"]["octo_transformer"] - language
