"""Reinforcement-learning fine-tuning (ConRFT): data layer and algorithm."""
