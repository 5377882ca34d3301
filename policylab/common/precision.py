"""Mixed precision that cannot quietly make training slower: `training.mixed_precision`.

    no    fp32 everywhere
    auto  bf16 autocast where the device computes bf16 natively (CUDA with bf16; a CPU with
          AVX512-BF16 or AMX-BF16, or Arm's BF16), else fp32
    bf16  bf16 autocast; on a device without native bf16 it runs, with a warning naming the
          reason: there torch falls back to generic kernels (measured about 27x slower per step
          on an AVX2-only CPU, 82% of the time in the bf16 matmul fallback)
    fp16  fp16 autocast with a `torch.amp.GradScaler`, for GPUs without bf16; on a CPU it runs
          with the same warning (measured 19x slower than fp32 per step even with AVX512-FP16)

Only the training forward is autocast: weights, optimizer state and the EMA copy stay fp32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SETTINGS = ("no", "auto", "bf16", "fp16")
CPUINFO = Path("/proc/cpuinfo")
# x86 flags (`flags` line) and Arm features (`Features` line) of /proc/cpuinfo that mean native bf16 kernels.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def parse_cpu_flags(cpuinfo: str) -> set[str]:
    """The first processor's `flags` (x86) or `Features` (Arm) of a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_flags() -> set[str] | None:
    """This CPU's flags from /proc/cpuinfo; None where there is none (not Linux)."""
    try:
        return parse_cpu_flags(CPUINFO.read_text())
    except OSError:
        return None


def _onednn_bf16() -> bool:
    """oneDNN's own verdict: False also where ONEDNN_MAX_CPU_ISA caps it below the CPU's flags."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the check: the flags decide
        return True


def native_support(dtype: torch.dtype, device: torch.device) -> tuple[bool, str]:
    """(does `device` compute `dtype` (bf16 or fp16) natively, why): CUDA asks torch; for bf16 a CPU
    needs a native flag in /proc/cpuinfo and oneDNN agreeing (without /proc/cpuinfo, oneDNN alone)."""
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    if device.type == "cuda":
        if dtype == torch.float16:
            return True, "CUDA computes fp16 natively"
        ok = torch.cuda.is_bf16_supported()
        return ok, f"torch.cuda.is_bf16_supported() is {ok} on {torch.cuda.get_device_name(device)}"
    if device.type != "cpu":
        return False, f"no native {name} check for device type {device.type!r}"
    if dtype == torch.float16:  # torch's CPU fp16 training step: 19x fp32's on a CPU with avx512_fp16
        return False, "torch's CPU kernels for an fp16 training step are slow even with avx512_fp16"
    flags, onednn = cpu_flags(), _onednn_bf16()
    if flags is None:
        return onednn, f"no /proc/cpuinfo; oneDNN says bf16 is {'' if onednn else 'not '}supported"
    have = sorted(set(BF16_FLAGS) & flags)
    capability = torch.backends.cpu.get_cpu_capability()
    if not have:
        return False, f"this CPU has none of {', '.join(BF16_FLAGS)} (torch CPU capability {capability})"
    if not onednn:
        return False, f"the CPU has {', '.join(have)} but oneDNN will not use it (ONEDNN_MAX_CPU_ISA?)"
    return True, f"the CPU has {', '.join(have)}"


@dataclasses.dataclass
class Precision:
    """What the training step needs: `autocast()` around the forward, and `scaler` (fp16 only)
    around backward and the optimizer step."""

    setting: str
    dtype: torch.dtype | None  # the autocast dtype; None: fp32
    device_type: str
    reason: str
    scaler: torch.amp.GradScaler | None = None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients back to their true size before clipping (fp16 only)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """optimizer.step(); under fp16 skipped when a gradient is inf or NaN, and the scale adapts."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()


def resolve_precision(setting: str, device: torch.device) -> Precision:
    """`training.mixed_precision` on `device` -> a Precision; warns (logging) when the choice runs
    on emulated kernels; an unknown setting is a ValueError naming the key."""
    if setting not in SETTINGS:
        raise ValueError(f"training.mixed_precision must be one of {', '.join(SETTINGS)}, got {setting!r}")
    device = torch.device(device)
    if setting == "no":
        return Precision(setting, None, device.type, "fp32 (training.mixed_precision=no)")
    dtype = torch.float16 if setting == "fp16" else torch.bfloat16
    native, why = native_support(dtype, device)
    if setting == "auto":
        chosen = Precision(setting, torch.bfloat16 if native else None, device.type,
                           f"bf16: {why}" if native else f"fp32: no native bf16 ({why})")
        log.info("training.mixed_precision=auto: %s", chosen.reason)
        return chosen
    if not native:
        log.warning("training.mixed_precision=%s on %s without native %s: %s. Torch falls back to generic "
                    "kernels, which can make a step many times slower than fp32 (27x measured on an AVX2-only "
                    "CPU); use training.mixed_precision=auto (bf16 only where native) or no",
                    setting, device.type, setting, why)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return Precision(setting, dtype, device.type, f"{setting}: {why}", scaler)
