"""policylab: robot policies from demonstrations, improved with reinforcement learning."""

__version__ = "0.1.0"
