"""Exponential moving average of a model's weights, with Diffusion Policy's warm-up.

Same semantics as Diffusion Policy's `EMAModel` (`model/diffusion/ema_model.py`):
- the decay of the n-th call to `step` (n = 0, 1, ...) is 0 for `k = n - update_after_step - 1
  <= 0`, else `clamp(1 - (1 + k / inv_gamma) ** -power, min_value, max_value)`; with the
  defaults: 0, 0, 0.4054, 0.5613, ..., 0.999 at call 10,000 and 0.9999 from call 215,444;
- parameters of BatchNorm layers and parameters with `requires_grad=False` are copied, not
  averaged; every other parameter becomes `decay * ema + (1 - decay) * param`.
One deliberate difference: buffers (BatchNorm running statistics, normalizer buffers) are copied
from the live model on every step. DP never touches buffers, so an EMA copy of a BatchNorm model
evaluates with its initial statistics, and buffers set after the copy never reach it.

diffusers' `EMAModel` is not used: it counts steps one ahead of DP (its second update already
uses decay 0.4054), averages BatchNorm weights, and ignores buffers too.
"""

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class EMAModel:
    """Holds `averaged_model`, a frozen eval-mode copy of the model given at construction.

    `step(model)` after each optimizer step; `copy_to(model)` loads the average into a model;
    `state_dict()` is plain tensors and numbers (loadable with `torch.load(weights_only=True)`).
    """

    def __init__(
        self,
        model: nn.Module,
        update_after_step: int = 0,
        inv_gamma: float = 1.0,
        power: float = 0.75,
        min_value: float = 0.0,
        max_value: float = 0.9999,
    ):
        self.averaged_model = copy.deepcopy(model)
        self.averaged_model.eval()
        self.averaged_model.requires_grad_(False)
        self.update_after_step = update_after_step
        self.inv_gamma = inv_gamma
        self.power = power
        self.min_value = min_value
        self.max_value = max_value
        self.decay = 0.0
        self.optimization_step = 0

    def get_decay(self, optimization_step: int) -> float:
        """Decay used by the `step` call made when `optimization_step` calls came before."""
        step = max(0, optimization_step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        value = 1 - (1 + step / self.inv_gamma) ** -self.power
        return max(self.min_value, min(value, self.max_value))

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        """Moves the average towards `model`, which must have the averaged model's structure."""
        self.decay = self.get_decay(self.optimization_step)
        copied = _batchnorm_parameter_names(model)
        ema_params = dict(self.averaged_model.named_parameters())
        for name, param in model.named_parameters():
            ema_param = ema_params[name]
            if name in copied or not param.requires_grad:
                ema_param.copy_(param.detach().to(dtype=ema_param.dtype))
            else:
                ema_param.mul_(self.decay)
                ema_param.add_(param.detach().to(dtype=ema_param.dtype), alpha=1 - self.decay)
        ema_buffers = dict(self.averaged_model.named_buffers())
        for name, buffer in model.named_buffers():
            ema_buffers[name].copy_(buffer)
        self.optimization_step += 1

    def copy_to(self, model: nn.Module) -> None:
        """Loads the averaged parameters and buffers into `model`."""
        model.load_state_dict(self.averaged_model.state_dict())

    def state_dict(self) -> dict:
        return {
            "averaged_model": self.averaged_model.state_dict(),
            "optimization_step": self.optimization_step,
            "decay": self.decay,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.averaged_model.load_state_dict(state_dict["averaged_model"])
        self.optimization_step = int(state_dict["optimization_step"])
        self.decay = float(state_dict["decay"])


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Soft target update: every parameter `target <- (1 - tau) * target + tau * source`.

    For consistency targets (`tau = 1 - decay`) and critic targets (ConRFT and SAC: tau 0.005).
    Buffers are copied from `source`. Call once per optimizer step, not per micro-batch.
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"polyak tau must be in [0, 1], got {tau}")
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s.detach().to(t.dtype), tau)
    for t, s in zip(target.buffers(), source.buffers(), strict=True):
        t.copy_(s)


def _batchnorm_parameter_names(model: nn.Module) -> set[str]:
    return {
        f"{module_name}.{param_name}" if module_name else param_name
        for module_name, module in model.named_modules()
        if isinstance(module, _BatchNorm)
        for param_name, _ in module.named_parameters(recurse=False)
    }
