"""Every sampler takes the generator the env runner passes (DDPM, DDIM, EDM Heun, consistency
training, LCM distillation, CTM; chains where they exist): with a list of B generators, row b's
noise comes from generator b alone, so a row equals the same observation sampled alone with that
generator; the draw is reproduced by the same seeds, whatever torch's global generator holds, and
changed by other seeds."""

import pytest
import torch

from policylab.policies.consistency import (
    ConsistencyDistillPolicy,
    ConsistencyTrainingPolicy,
)
from policylab.policies.consistency_ctm import ConsistencyCTMPolicy
from policylab.policies.diffusion import DiffusionPolicy
from tests.policies.test_consistency import (
    SHAPE_META,
    TA,
    TO,
    T,
    ddpm,
    identity_normalizer,
    karras_policy,
    tiny_unet,
)
from tests.policies.test_edm_ctm import edm


def denoising(cls, **kwargs):
    policy = cls(SHAPE_META, T, TO, TA, model=tiny_unet, noise_scheduler=ddpm(), **kwargs)
    policy.set_normalizer(identity_normalizer())
    return policy


SAMPLERS = {
    "ddpm": lambda: denoising(DiffusionPolicy, num_inference_steps=4),
    "ddim": lambda: denoising(DiffusionPolicy, inference_scheduler="ddim", num_inference_steps=4),
    "edm heun": lambda: edm(num_inference_steps=3),
    "consistency training, 2-step chain": lambda: karras_policy(ConsistencyTrainingPolicy, inference_sigmas=[80.0, 0.8]),
    "lcm, 2 steps": lambda: denoising(ConsistencyDistillPolicy, num_inference_steps=2),
    "ctm, 2-step chain": lambda: edm(ConsistencyCTMPolicy, inference_sigmas=[80.0, 0.8]),
}


def generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_one_generator_per_row(sampler):
    torch.manual_seed(0)
    policy = SAMPLERS[sampler]().eval()
    obs = {"state": torch.randn(3, TO, 1)}
    batch = policy.predict_action(obs, generator=generators(7, 8, 9))["action_pred"]
    torch.manual_seed(1)  # torch's global generator plays no part
    assert torch.equal(batch, policy.predict_action(obs, generator=generators(7, 8, 9))["action_pred"])
    alone = policy.predict_action({"state": obs["state"][1:2]}, generator=generators(8))["action_pred"]
    torch.testing.assert_close(batch[1:2], alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(batch, policy.predict_action(obs, generator=generators(1, 2, 3))["action_pred"])
