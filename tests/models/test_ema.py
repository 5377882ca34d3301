import pytest
import torch
from torch import nn

from policylab.models.ema import EMAModel


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


@pytest.mark.parametrize(
    "calls_before, decay",
    [
        (0, 0.0),
        (1, 0.0),  # DP's off-by-one: the first two updates copy the model
        (2, 0.4053964424986395),  # 1 - 2 ** -0.75
        (3, 0.5613086623491692),  # 1 - 3 ** -0.75
        (10, 0.8221720589961077),  # 1 - 10 ** -0.75
        (10_000, 0.999),  # 1 - 10000 ** -0.75
        (215_444, 0.9999),  # clamped at max_value from here on
        (10**7, 0.9999),
    ],
)
def test_warmup_decay_values(calls_before, decay):
    ema = EMAModel(nn.Linear(1, 1))  # defaults = DP's PushT config
    assert ema.get_decay(calls_before) == pytest.approx(decay, rel=1e-12, abs=0.0)


def test_update_after_step_delays_warmup():
    ema = EMAModel(nn.Linear(1, 1), update_after_step=5)
    assert ema.get_decay(6) == 0.0
    assert ema.get_decay(7) == pytest.approx(1 - 2**-0.75)


def test_step_averages_trainable_params_and_copies_the_rest():
    model = small_model()
    ema = EMAModel(model)
    model[2].bias.requires_grad_(False)
    for _ in range(3):  # decays 0, 0, then 0.4054 on the third call
        previous = {n: p.clone() for n, p in ema.averaged_model.named_parameters()}
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
            model[1].running_mean.add_(2.0)
        ema.step(model)
    decay = 1 - 2**-0.75
    assert ema.decay == pytest.approx(decay)
    averaged = dict(ema.averaged_model.named_parameters())
    expected = decay * previous["0.weight"] + (1 - decay) * model[0].weight
    torch.testing.assert_close(averaged["0.weight"], expected)
    # BatchNorm affine params and frozen params are copied, as in DP.
    torch.testing.assert_close(averaged["1.weight"], model[1].weight)
    torch.testing.assert_close(averaged["2.bias"], model[2].bias)
    # Buffers follow the live model (DP left them at their initial values).
    torch.testing.assert_close(ema.averaged_model[1].running_mean, model[1].running_mean)
    assert ema.optimization_step == 3


def test_averaged_model_is_a_frozen_eval_copy():
    model = small_model()
    ema = EMAModel(model)
    assert ema.averaged_model is not model
    assert not ema.averaged_model.training
    assert not any(p.requires_grad for p in ema.averaged_model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_state_dict_round_trip_with_weights_only(tmp_path):
    model = small_model()
    ema = EMAModel(model)
    for _ in range(4):
        with torch.no_grad():
            model[0].weight.mul_(0.5)
        ema.step(model)
    path = tmp_path / "ema.pt"
    torch.save(ema.state_dict(), path)

    restored = EMAModel(small_model())
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.optimization_step == 4
    assert restored.decay == ema.decay
    for a, b in zip(restored.averaged_model.state_dict().values(),
                    ema.averaged_model.state_dict().values()):
        torch.testing.assert_close(a, b)
    # The next update is identical too.
    ema.step(model)
    restored.step(model)
    torch.testing.assert_close(restored.averaged_model[0].weight, ema.averaged_model[0].weight)


def test_copy_to_loads_the_average():
    model = small_model()
    ema = EMAModel(model)
    with torch.no_grad():
        model[0].weight.zero_()
    target = small_model()
    ema.copy_to(target)
    torch.testing.assert_close(target[0].weight, ema.averaged_model[0].weight)
    assert target[0].weight.abs().sum() > 0
