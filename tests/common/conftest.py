import pytest

from policylab.common import safe_config


@pytest.fixture
def allow_torch_linear(monkeypatch):
    """Checkpoint tests use a bare torch.nn.Linear as the policy: allow it for the test only."""
    monkeypatch.setattr(safe_config, "ALLOWED_TARGETS", {*safe_config.ALLOWED_TARGETS, "torch.nn.Linear"})
