"""bench/pusht_onpolicy_distill.py's fine-tuning: half of each batch's endpoint samples come from
the pool of recorded observations (the other half from the demos), the teacher labels exactly
those, and the student moves toward the teacher there."""

from __future__ import annotations

import importlib.util
from functools import partial
from pathlib import Path

import torch

from tests.policies.test_edm_ctm import TO, PointMassF, T, ctm, edm

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("pusht_onpolicy_distill", REPO / "bench" / "pusht_onpolicy_distill.py")
onpolicy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(onpolicy)


class Demos(torch.utils.data.Dataset):
    """Demo windows whose observation is 0."""

    def __len__(self) -> int:
        return 256

    def __getitem__(self, i):
        return {"obs": {"state": torch.zeros(TO, 1)}, "action": torch.zeros(T, 1)}


def test_fine_tune_draws_half_of_each_batch_from_the_pool_and_fits_the_teacher_there():
    torch.manual_seed(0)
    teacher = edm(model=partial(PointMassF, from_obs=True))  # its action chunk repeats the observation
    seen = []
    teacher.model.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs["global_cond"][:, 0]),
                                        with_kwargs=True)
    student = ctm(ctm_weight=0.0, dsm_weight=0.0, endpoint_weight=1.0)
    object.__setattr__(student, "teacher", teacher)
    pool = {"state": torch.full((50, TO, 1), 0.5)}  # recorded observations, off the demos

    def error_on_pool() -> float:
        with torch.no_grad():
            return (student.predict_action(pool, generator=torch.Generator().manual_seed(0))["action_pred"]
                    - 0.5).abs().mean().item()

    before = error_on_pool()
    cpu = onpolicy.fine_tune(student, teacher, Demos(), pool, steps=30, lr=3e-3, seed=1)
    assert cpu > 0 and not student.training
    obs = torch.stack(seen)  # every teacher evaluation: 30 steps x 16 sampler evaluations, 64 samples
    assert obs.shape == (30 * 16, 64)
    assert torch.all(obs[:, :32] == 0) and torch.all(obs[:, 32:] == 0.5)
    assert error_on_pool() < 0.5 * before, (before, error_on_pool())

    seen.clear()
    onpolicy.fine_tune(student, teacher, Demos(), None, steps=2, lr=1e-4, seed=1)  # the control: demos only
    assert torch.stack(seen).shape == (2 * 16, 64) and torch.all(torch.stack(seen) == 0)
