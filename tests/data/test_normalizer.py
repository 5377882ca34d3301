import json
import math

import numpy as np
import pytest
import torch

from policylab.data.normalizer import (
    LinearNormalizer,
    SingleFieldLinearNormalizer,
    get_image_range_normalizer,
)


def test_limits_exact():
    x = torch.tensor([[0.0, 10.0], [2.0, 30.0], [4.0, 20.0]])
    field = SingleFieldLinearNormalizer.create_fit(x)
    torch.testing.assert_close(field.scale, torch.tensor([0.5, 0.1]))
    torch.testing.assert_close(field.offset, torch.tensor([-1.0, -2.0]))
    torch.testing.assert_close(field.normalize(x), torch.tensor([[-1.0, -1.0], [0.0, 1.0], [1.0, 0.0]]))
    torch.testing.assert_close(field.unnormalize(field.normalize(x)), x)
    custom = SingleFieldLinearNormalizer.create_fit(x, output_min=0, output_max=1)
    torch.testing.assert_close(custom.normalize(x)[:, 0], torch.tensor([0.0, 0.5, 1.0]))


def test_gaussian_exact():
    x = torch.tensor([[1.0], [3.0]])
    field = SingleFieldLinearNormalizer.create_fit(x, mode="gaussian")
    torch.testing.assert_close(field.normalize(x), torch.tensor([[-1.0], [1.0]]))


def test_constant_dimension_maps_to_middle_without_dividing_by_zero():
    x = torch.tensor([[5.0, 0.0], [5.0, 1.0]])
    for mode in ("limits", "gaussian"):
        field = SingleFieldLinearNormalizer.create_fit(x, mode=mode)
        y = field.normalize(x)
        assert torch.isfinite(y).all()
        assert field.scale[0] == 1.0
    y = SingleFieldLinearNormalizer.create_fit(x).normalize(x)
    torch.testing.assert_close(y[:, 0], torch.zeros(2))


def test_symmetric_limits_without_offset():
    x = torch.tensor([[-2.0], [1.0]])
    field = SingleFieldLinearNormalizer.create_fit(x, fit_offset=False)
    torch.testing.assert_close(field.normalize(x), torch.tensor([[-1.0], [0.5]]))
    assert field.offset.item() == 0


def test_nan_or_inf_names_the_key():
    normalizer = LinearNormalizer()
    with pytest.raises(ValueError, match="'agent_pos'.*1 NaN or inf"):
        normalizer.fit({"action": np.zeros((3, 2)), "agent_pos": np.array([[0.0, np.inf], [1.0, 2.0]])})
    with pytest.raises(ValueError, match="'action'.*NaN"):
        normalizer.fit({"action": np.array([[np.nan]])})


def test_dict_normalize_any_leading_shape_and_image_range():
    normalizer = LinearNormalizer().fit({"action": torch.rand(50, 2) * 100, "pos": torch.rand(50, 3)})
    normalizer["image"] = get_image_range_normalizer()
    batch = {"action": torch.rand(4, 16, 2) * 100, "pos": torch.rand(4, 2, 3), "image": torch.rand(4, 2, 3, 8, 8)}
    out = normalizer.normalize(batch)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in batch.items()}
    torch.testing.assert_close(out["image"], batch["image"] * 2 - 1)
    back = normalizer.unnormalize(out)
    for key, value in batch.items():
        torch.testing.assert_close(back[key], value, rtol=1e-5, atol=1e-4)
    with pytest.raises(KeyError, match="'missing'"):
        normalizer.normalize({"missing": torch.zeros(1)})
    image = get_image_range_normalizer().get_input_stats()
    assert math.isclose(image["std"].item(), math.sqrt(1 / 12), rel_tol=1e-6)


def test_state_dict_round_trip_into_an_empty_normalizer():
    normalizer = LinearNormalizer().fit({"action": torch.rand(20, 2), "obs": torch.rand(20, 5)})
    fresh = LinearNormalizer()
    fresh.load_state_dict(normalizer.state_dict())
    assert fresh.keys() == normalizer.keys()
    x = {"action": torch.rand(3, 2), "obs": torch.rand(3, 5)}
    for key in x:
        torch.testing.assert_close(fresh.normalize(x)[key], normalizer.normalize(x)[key])
    # inside a parent module, with a prefix, as in a policy
    parent = torch.nn.Module()
    parent.normalizer = normalizer
    other = torch.nn.Module()
    other.normalizer = LinearNormalizer()
    other.load_state_dict(parent.state_dict())
    torch.testing.assert_close(other.normalizer["obs"].scale, normalizer["obs"].scale)


def test_json_round_trip():
    normalizer = LinearNormalizer().fit({"action": torch.rand(20, 2)})
    text = normalizer.to_json()
    assert set(json.loads(text)["action"]) == {"scale", "offset", "input_stats"}
    again = LinearNormalizer.from_json(text)
    torch.testing.assert_close(again["action"].offset, normalizer["action"].offset)


def test_moves_with_the_module():
    normalizer = LinearNormalizer().fit({"a": torch.rand(4, 2)}).to(torch.float64)
    assert normalizer["a"].scale.dtype == torch.float64
    assert normalizer.normalize({"a": torch.rand(1, 2, dtype=torch.float64)})["a"].dtype == torch.float64
