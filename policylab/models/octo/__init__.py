"""Octo-style transformer encoder (tokenizers, block-wise causal transformer, readouts) and the
converter for Octo's released JAX weights. See docs/octo.md."""

from policylab.models.octo.config import (
    ActionHeadConfig,
    OctoConfig,
    StemConfig,
    get_config,
)
from policylab.models.octo.model import OctoModel, count_parameters

__all__ = ["ActionHeadConfig", "OctoConfig", "OctoModel", "StemConfig", "count_parameters", "get_config"]
