"""training.mixed_precision: native-support detection, `auto`, the warning for emulated bf16/fp16,
and fp16 with a GradScaler on CPU (a skipped step on inf gradients, the scaler resumed exactly)."""

import io
import logging

import pytest
import torch

from policylab.common import precision as prec
from policylab.common.logging import read_logs
from policylab.common.precision import (
    native_support,
    parse_cpu_flags,
    resolve_precision,
)
from tests.helpers import make_pusht_store, run_train, tiny

CPU = torch.device("cpu")
X86 = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile avx512_fp16
processor\t: 1
flags\t\t: fpu sse2 avx2
"""
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm bf16 i8mm\n"


def test_parse_cpu_flags_reads_the_first_processor():
    assert {"avx512_bf16", "amx_bf16", "avx2"} <= parse_cpu_flags(X86)
    assert "bf16" in parse_cpu_flags(ARM)
    assert parse_cpu_flags("model name : something\n") == set()


@pytest.fixture
def cpu_with(monkeypatch):
    """Pretend this CPU has exactly `flags` (oneDNN agreeing), or no /proc/cpuinfo (None)."""
    def pretend(flags: set[str] | None, onednn: bool = True):
        monkeypatch.setattr(prec, "cpu_flags", lambda: flags)
        monkeypatch.setattr(prec, "_onednn_bf16", lambda: onednn)
    return pretend


def test_auto_picks_bf16_only_where_native(cpu_with):
    cpu_with({"avx2", "avx512f", "avx512_bf16"})
    assert resolve_precision("auto", CPU).dtype == torch.bfloat16
    cpu_with({"avx2", "amx_bf16"})
    assert resolve_precision("auto", CPU).dtype == torch.bfloat16
    cpu_with({"avx2", "avx512f"})  # AVX-512 without BF16: emulated
    chosen = resolve_precision("auto", CPU)
    assert chosen.dtype is None and "avx512_bf16" in chosen.reason
    cpu_with({"avx2", "avx512_bf16"}, onednn=False)  # flags there, oneDNN capped (ONEDNN_MAX_CPU_ISA)
    assert resolve_precision("auto", CPU).dtype is None
    assert resolve_precision("no", CPU).dtype is None


def test_bf16_without_native_support_warns_with_the_reason(cpu_with, caplog):
    cpu_with({"fpu", "avx2"})
    with caplog.at_level(logging.WARNING, logger="policylab.common.precision"):
        chosen = resolve_precision("bf16", CPU)
    assert chosen.dtype == torch.bfloat16  # still what was asked for, but not silently
    [record] = caplog.records
    message = record.getMessage()
    assert "without native bf16" in message and "avx512_bf16, amx_bf16" in message
    assert "training.mixed_precision=auto" in message
    caplog.clear()
    cpu_with({"avx2", "amx_bf16"})
    with caplog.at_level(logging.WARNING, logger="policylab.common.precision"):
        resolve_precision("bf16", CPU)
    assert not caplog.records


def test_cuda_asks_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Old GPU")
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        ok, why = native_support(torch.bfloat16, torch.device("cuda"))
        assert ok is supported and "Old GPU" in why
    assert native_support(torch.float16, torch.device("cuda"))[0]


def test_unknown_setting_names_the_key():
    with pytest.raises(ValueError, match="training.mixed_precision must be one of no, auto, bf16, fp16, got 'fp8'"):
        resolve_precision("fp8", CPU)


def test_this_machines_verdict_matches_its_flags():
    flags = prec.cpu_flags()
    ok, why = native_support(torch.bfloat16, CPU)
    if flags is not None and not flags & {"avx512_bf16", "amx_bf16", "bf16"}:
        assert not ok
    assert (resolve_precision("auto", CPU).dtype == torch.bfloat16) == ok, why


def test_fp16_on_cpu_warns(cpu_with, caplog):
    cpu_with({"avx512_fp16", "amx_fp16"})
    with caplog.at_level(logging.WARNING, logger="policylab.common.precision"):
        resolve_precision("fp16", CPU)
    assert "without native fp16" in caplog.records[0].getMessage()


def test_fp16_grad_scaler_on_cpu_skips_inf_steps_and_trains():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    chosen = resolve_precision("fp16", CPU)
    assert chosen.dtype == torch.float16 and chosen.scaler is not None and chosen.scaler.is_enabled()
    x = torch.randn(64, 8)
    y = x[:, :1] - 0.5 * x[:, 1:2]  # learnable: the loss must fall

    def step(poison: bool = False) -> float:
        with chosen.autocast():
            out = model(x)
            assert out.dtype == torch.float16
            loss = torch.nn.functional.mse_loss(out.float(), y)
        chosen.backward(loss)
        if poison:
            model[0].weight.grad[0, 0] = float("inf")
        chosen.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        chosen.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    first = step()
    before = [p.detach().clone() for p in model.parameters()]
    scale = chosen.scaler.get_scale()
    step(poison=True)  # an inf gradient: the step is skipped, the scale halves
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert chosen.scaler.get_scale() == scale / 2
    losses = [step() for _ in range(30)]
    assert losses[-1] < first / 2
    state = chosen.scaler.state_dict()
    again = resolve_precision("fp16", CPU)
    again.scaler.load_state_dict(torch.load(_round_trip(state), weights_only=True))
    assert again.scaler.get_scale() == chosen.scaler.get_scale()


def _round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_train_py_runs_fp16_and_checkpoints_its_scaler(tmp_path):
    """Through train.py: finite losses, the GradScaler's state in training_state.pt."""
    store = make_pusht_store(tmp_path / "pusht.zarr")
    run_dir = tmp_path / "run"
    result = run_train(tiny(store, run_dir, "training.num_epochs=1", "training.max_train_steps=3",
                            "training.mixed_precision=fp16", "training.rollout_every=0"))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [r["train_loss"] for r in read_logs(run_dir / "logs.jsonl") if "lr" in r]
    assert len(losses) == 3 and all(0 < x < 10 for x in losses)
    state = torch.load(run_dir / "checkpoints" / "latest" / "training_state.pt", weights_only=True)
    assert state["grad_scaler"]["scale"] > 0
