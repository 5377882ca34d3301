"""Running many trainings at once: multi-seed and hyperparameter sweeps as ray tasks (`sweep.py`)."""
