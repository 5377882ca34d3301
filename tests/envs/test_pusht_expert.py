"""The scripted PushT expert: geometry helpers, one planning step, and (slow) full episodes."""

import numpy as np
import pytest
import shapely.geometry as sg

from policylab.envs.pusht import sim as S
from policylab.envs.pusht.env import PushTEnv
from policylab.envs.pusht.expert import (
    NORMALS,
    OUTLINE,
    ExpertConfig,
    PushTExpert,
    plan,
    pose_error,
)


def test_pose_error_zero_at_goal_and_grows():
    assert pose_error(S.GOAL_POSE) == pytest.approx(0.0, abs=1e-20)
    shifted = np.array(S.GOAL_POSE) + [3.0, 4.0, 0.0]
    assert pose_error(shifted) == pytest.approx(25.0)
    assert pose_error(np.array(S.GOAL_POSE) + [0, 0, 0.1]) > 0


def test_outline_normals_point_outward():
    poly = sg.Polygon(OUTLINE)
    assert poly.area == pytest.approx(6300)  # the T: 120x30 bar + 30x90 stem
    mids = (OUTLINE + np.roll(OUTLINE, -1, axis=0)) / 2
    for mid, n in zip(mids, NORMALS):
        assert not poly.contains(sg.Point(mid + n))
        assert poly.contains(sg.Point(mid - n))


def test_one_primitive_reduces_pose_error():
    env = PushTEnv()
    env.reset(seed=0)
    before = pose_error(env.sim.block_pose)
    actions = plan(env.sim, ExpertConfig()).actions
    assert actions
    for a in actions:
        env.step(a)
    assert pose_error(env.sim.block_pose) < before


@pytest.mark.parametrize("seed,legacy", [
    (0, False),
    pytest.param(1, False, marks=pytest.mark.slow),
    pytest.param(100000, True, marks=pytest.mark.slow),
])
def test_expert_solves_episode(seed, legacy):
    env, expert = PushTEnv(legacy=legacy), PushTExpert()
    env.reset(seed=seed)
    for _ in range(300):
        *_, terminated, _, info = env.step(expert.act(env.sim))
        if terminated:
            break
    assert info["coverage"] > S.SUCCESS_THRESHOLD
