"""The fast control step is gym-hil's, bit for bit, and the expert still picks the cube.

Equality is exact (`assert_array_equal`, no tolerance): `FastOpspace` keeps every BLAS/LAPACK
call of gym-hil's controller with the same shapes and layouts and does the remaining arithmetic
with the same IEEE-754 operations in the same order, so there is no rounding difference to
tolerate. A tolerance would also hide real divergence: contacts amplify a 1-ulp torque
difference into visibly different trajectories within a few steps.
"""

import importlib

import numpy as np
import pytest

from policylab.envs.pick_cube import PickCubeEnv, PickCubeExpert
from policylab.envs.pick_cube import fast_control as fc
from tests.envs.pick_cube.test_pick_cube import run_expert

gym_hil_opspace = importlib.import_module("gym_hil.controllers.opspace")

STATE = ("qpos", "qvel", "act", "ctrl", "qacc_warmstart", "sensordata", "mocap_pos", "mocap_quat")


def actions(env, expert, rng, seed):
    """Episode 0: random actions (gripper slamming), then the expert (contacts, a grasp, a lift).
    Episode 1: up and out to the far corner of the workspace, where the task-space inverse
    inertia is near singular and gym-hil takes its pinv branch, then random actions."""
    if seed == 0:
        yield from (rng.uniform(-1, 1, 4) for _ in range(8))
        yield from (expert.act(env) for _ in range(40))
    else:
        yield from (np.array([1.0, 1.0, 1.0, -1.0]) for _ in range(22))
        yield from (rng.uniform(-1, 1, 4) for _ in range(6))


@pytest.mark.parametrize("reward_type", ["sparse", "dense"])
def test_fast_step_equals_gym_hil_step(reward_type, monkeypatch):
    """Same seeds, same actions: every step's state, observation, reward and flags are equal."""
    branches = {"pinv": 0}
    pinv = fc._pinv

    def counting_pinv(*args):
        branches["pinv"] += 1
        return pinv(*args)

    monkeypatch.setattr(fc, "_pinv", counting_pinv)
    ref = PickCubeEnv(fast_control=False, reward_type=reward_type)
    fast = PickCubeEnv(fast_control=True, reward_type=reward_type)
    expert = PickCubeExpert(action_noise=0.1)
    rng = np.random.default_rng(0)
    n_steps = 0
    try:
        for seed in (0, 1):
            obs_ref, _ = ref.reset(seed=seed)
            obs_fast, _ = fast.reset(seed=seed)
            for key in obs_ref:
                np.testing.assert_array_equal(obs_fast[key], obs_ref[key], err_msg=key)
            expert.reset(seed)
            for action in actions(fast, expert, rng, seed):
                out_ref, out_fast = ref.step(action), fast.step(action)
                n_steps += 1
                for key in out_ref[0]:
                    np.testing.assert_array_equal(out_fast[0][key], out_ref[0][key], err_msg=key)
                assert out_fast[1:] == out_ref[1:]
                for name in STATE:
                    np.testing.assert_array_equal(getattr(fast.sim.data, name),
                                                  getattr(ref.sim.data, name), err_msg=name)
                assert fast.sim.data.time == ref.sim.data.time
                if out_ref[2]:
                    break
            assert out_ref[3] is False
            if seed == 0:  # the comparison covered a grasp and a lift
                assert out_ref[4]["is_success"]
        # the run went through both of gym-hil's task-space inertia branches (inv and pinv)
        assert 0 < branches["pinv"] < n_steps * fast.sim._n_substeps
        assert fast.sim.model.opt.disableflags == ref.sim.model.opt.disableflags == 0
    finally:
        ref.close()
        fast.close()


def random_rotation(rng):
    """Rodrigues' formula for a uniform random angle about a random axis."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-np.pi, np.pi)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def test_quaternion_helpers_match_gym_hil():
    rng = np.random.default_rng(0)
    mats = [random_rotation(rng) for _ in range(2000)]
    mats += [np.eye(3), np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])]
    branches = set()
    for mat in mats:
        ref = gym_hil_opspace.mat_to_quat(mat)
        fast = fc._mat_to_quat(mat.reshape(-1))
        np.testing.assert_array_equal(np.array(fast), ref)
        d = np.diag(mat)
        branches.add(0 if d.sum() > 0 else 1 if d[0] > max(d[1:]) else 2 if d[1] > d[2] else 3)
    assert branches == {0, 1, 2, 3}   # every branch of mat_to_quat was taken

    quats = [rng.normal(size=4) for _ in range(2000)]
    quats += [np.array([1.0, 0, 0, 0]), np.array([1.0, 1e-12, 0, 0]), np.zeros(4)]
    for source, target in zip(quats, quats[::-1]):
        ref_diff = gym_hil_opspace.quat_diff_active(source, target)
        fast_diff = fc._quat_diff_active(source.tolist(), target.tolist())
        np.testing.assert_array_equal(np.array(fast_diff), ref_diff)
        np.testing.assert_array_equal(np.array(fc._quat_to_axisangle(fast_diff)),
                                      gym_hil_opspace.quat_to_axisangle(ref_diff.copy()))


def test_pinv_matches_numpy():
    rng = np.random.default_rng(0)
    for rank in range(1, 7):
        a = rng.normal(size=(6, rank))
        mat = a @ a.T + 1e-4 * rng.normal(size=(6, 6))
        np.testing.assert_array_equal(fc._pinv(mat, fc.PINV_RCOND),
                                      np.linalg.pinv(mat, rcond=fc.PINV_RCOND))


def expert_success_rate(seeds) -> float:
    env = PickCubeEnv()
    try:
        expert = PickCubeExpert(action_noise=0.1)  # the demo config's noise
        return float(np.mean([run_expert(env, expert, seed)[0] for seed in seeds]))
    finally:
        env.close()


def test_expert_succeeds_on_fast_env():
    """The issue's bar, >= 95%, on 40 seeds (about 6 s on the fast path)."""
    assert expert_success_rate(range(100, 140)) >= 0.95


@pytest.mark.slow
def test_expert_succeeds_on_fast_env_200_seeds():
    assert expert_success_rate(range(100, 300)) >= 0.95
