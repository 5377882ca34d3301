"""PushT env: DP's seeding, state setting, reward, keypoints, contacts and observations."""

import gymnasium as gym
import numpy as np
import pytest

import policylab.envs.pusht  # noqa: F401  (registers the ids)
from policylab.envs.pusht import sim as S
from policylab.envs.pusht.env import PushTEnv, initial_state
from policylab.envs.pusht.keypoints import block_local_keypoints

COG = np.array([0.0, 45.0])

# Recorded by running Diffusion Policy's PushT code (5ba07ac) on pymunk 6.11.1 / pygame 2.6.1:
# its PymunkKeypointManager's block keypoints, and two 60-step rollouts of `_probe_actions`.
DP_BLOCK_KEYPOINTS = [
    [9.269786713763871, 90.04097352393619], [-60.983472364471474, -1.1867297607997276],
    [60.91275557727772, -1.3933642242328201], [-0.2705034390160016, 25.54362499146542],
    [-14.064927576212233, 122.81585355412153], [39.002738500170146, 32.857404276587566],
    [-39.966414424694534, 32.729655446429945], [-16.82434437939744, 62.86317892234989],
    [23.54146122024909, -1.7002881094626152]]
DP_ROLLOUTS = {  # (seed, legacy): (final state with angle mod 2pi, n_contacts per step)
    (0, False): ([164.82379061045978, 198.09968644638556, 77.08693593167091, 45.946138278383806,
                  5.574582722921934],
                 [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1,
                  1, 2, 2, 3, 3, 4, 2, 2, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 4, 3, 2, 2, 2, 2, 2,
                  2, 1, 1, 1, 2, 1, 1]),
    (3, True): ([113.44591571247152, 247.20434646211604, -25.799249743951865, 237.50874476643114,
                 4.712277712454872],
                [1, 1, 1, 1, 1, 1, 1, 3, 3, 4, 5, 5, 5, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5, 4, 4,
                 5, 5, 6, 7, 6, 6, 6, 5, 5, 5, 6, 7, 7, 6, 7, 6, 6, 6, 6, 7, 5, 5, 5, 5, 5, 5, 5,
                 5, 4, 5, 5, 5, 4]),
}


def _probe_rollout(env: PushTEnv, seed: int, n_steps: int = 60):
    """Pushes the block around (and into walls): returns final state and n_contacts per step."""
    env.reset(seed=seed)
    rng = np.random.default_rng(1000 + seed)
    action = env.sim.state[:2].copy()
    n_contacts = []
    for t in range(n_steps):
        # chase the block most of the time, with random excursions
        target = env.sim.state[2:4] if t % 20 < 12 else rng.uniform(50, 460, 2)
        action = action + np.clip(target - action, -25, 25) + rng.normal(0, 5, 2)
        *_, info = env.step(action)
        n_contacts.append(info["n_contacts"])
    state = env.sim.state
    state[4] %= 2 * np.pi
    return state, n_contacts


@pytest.mark.parametrize("seed,legacy", sorted(DP_ROLLOUTS))
def test_matches_dp_rollout_bit_exactly(seed, legacy):
    state, n_contacts = _probe_rollout(PushTEnv(legacy=legacy), seed)
    expected_state, expected_contacts = DP_ROLLOUTS[seed, legacy]
    np.testing.assert_array_equal(state, expected_state)
    assert n_contacts == expected_contacts


def test_block_keypoints_match_dp():
    np.testing.assert_array_equal(block_local_keypoints(), DP_BLOCK_KEYPOINTS)


def test_initial_state_is_dp_randomstate_draw():
    rs = np.random.RandomState(7)
    expected = [rs.randint(50, 450), rs.randint(50, 450), rs.randint(100, 400),
                rs.randint(100, 400), rs.randn() * 2 * np.pi - np.pi]
    np.testing.assert_array_equal(initial_state(7), expected)


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_state_setting_orders(seed):
    drawn = initial_state(seed)
    env = PushTEnv(legacy=False)
    env.reset(seed=seed)
    np.testing.assert_array_equal(env.sim.block.position, drawn[2:4])
    np.testing.assert_array_equal(env.sim.agent.position, drawn[:2])
    env = PushTEnv(legacy=True)
    env.reset(seed=seed)
    c, s = np.cos(drawn[4]), np.sin(drawn[4])
    rotated_cog = np.array([[c, -s], [s, c]]) @ COG
    # legacy: chipmunk rotates about the CoG after the position is set
    np.testing.assert_allclose(env.sim.block.position, drawn[2:4] + COG - rotated_cog, atol=1e-9)


def test_reset_coverage_and_state_obs():
    env = PushTEnv(obs_type="state", legacy=False)
    obs, info = env.reset(seed=0)
    assert info["coverage"] == pytest.approx(0.419, abs=5e-4)
    drawn = initial_state(0)
    assert obs["state"].dtype == np.float32
    assert obs["state"].shape == (5,)
    np.testing.assert_allclose(obs["state"][:4], drawn[:4], rtol=1e-6)
    assert obs["state"][4] == pytest.approx(drawn[4] % (2 * np.pi), abs=1e-6)


def test_reward_and_termination_at_and_near_goal():
    env = PushTEnv()
    far_agent = (40.0, 40.0)
    env.reset(options={"state": [*far_agent, *S.GOAL_POSE]})
    _, reward, terminated, truncated, info = env.step(np.array(far_agent))
    assert info["coverage"] == pytest.approx(1.0, abs=1e-12)
    assert reward == 1.0
    assert terminated
    assert not truncated
    assert info["is_success"]
    env.reset(options={"state": [*far_agent, S.GOAL_POSE[0] + 8, S.GOAL_POSE[1], S.GOAL_POSE[2]]})
    _, reward, terminated, _, info = env.step(np.array(far_agent))
    assert info["coverage"] < S.SUCCESS_THRESHOLD
    assert not terminated
    assert reward == pytest.approx(info["coverage"] / S.SUCCESS_THRESHOLD, abs=1e-15)


def test_keypoint_obs_is_rotated_local_keypoints():
    env = PushTEnv(obs_type="keypoints")
    obs, _ = env.reset(seed=3)
    for _ in range(3):
        obs, *_ = env.step(env.sim.state[2:4])  # push into the block so it moves and turns
    x, y, theta = env.sim.block_pose
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    expected = block_local_keypoints() @ rot.T + [x, y]
    assert obs["keypoint"].shape == (18,)
    assert obs["keypoint"].dtype == np.float32
    np.testing.assert_allclose(obs["keypoint"].reshape(9, 2), expected, atol=1e-4)
    np.testing.assert_array_equal(obs["agent_pos"], np.float32(env.sim.agent.position))


def test_image_obs_and_render():
    env = PushTEnv(obs_type="image")
    obs, _ = env.reset(seed=0)
    image = obs["image"]
    assert image.shape == (3, 96, 96)
    assert image.dtype == np.float32
    assert 0.0 <= image.min()
    assert image.max() <= 1.0
    assert image.min() < 0.5
    frame = env.render()
    assert frame.shape == (96, 96, 3)
    assert frame.dtype == np.uint8
    # before any action, render() is the observation itself
    np.testing.assert_array_equal(frame, np.moveaxis(np.round(image * 255), 0, -1))
    obs, *_ = env.step(np.array([100.0, 100.0]))
    marked = env.render()
    unmarked = np.moveaxis(np.round(obs["image"] * 255), 0, -1).astype(np.uint8)
    assert (marked != unmarked).any()  # the action cross
    assert (marked[..., 0] == 255).any()


def test_contacts_count_block_in_wall():
    # seed 2 spawns the stem into the top wall (legacy False): contacts at every step
    env = PushTEnv(legacy=False)
    _, info = env.reset(seed=2)
    assert info["n_contacts"] > 0
    *_, info = env.step(env.sim.state[:2])
    assert info["n_contacts"] > 0
    env.reset(seed=0)
    *_, info = env.step(env.sim.state[:2])  # agent stays away from the block
    assert info["n_contacts"] == 0


def test_step_none_skips_physics():
    env = PushTEnv()
    env.reset(seed=4)
    before = env.sim.state
    *_, info = env.step(None)
    np.testing.assert_array_equal(env.sim.state, before)
    assert info["n_contacts"] == 0


def test_reset_without_seed_draws_new_reproducible_episodes():
    a, b = PushTEnv(), PushTEnv()
    a.reset(seed=11)
    b.reset(seed=11)
    states_a = [a.reset()[0]["state"] for _ in range(3)]
    states_b = [b.reset()[0]["state"] for _ in range(3)]
    np.testing.assert_array_equal(states_a, states_b)
    assert not np.array_equal(states_a[0], states_a[1])


@pytest.mark.parametrize("env_id,key", [
    ("policylab/PushT-v0", "state"),
    ("policylab/PushTKeypoints-v0", "keypoint"),
    ("policylab.envs.pusht:policylab/PushTImage-v0", "image"),
])
def test_registered_ids(env_id, key):
    env = gym.make(env_id, legacy=True)
    obs, _ = env.reset(seed=0)
    assert key in obs
    assert env.observation_space.contains(obs)
    obs, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)


def test_clone_continues_like_the_original():
    env = PushTEnv()
    env.reset(seed=0)
    copy = env.sim.clone()
    for target in ([300.0, 200.0], [150.0, 120.0]):  # free-space moves: no contacts
        env.sim.step(target)
        copy.step(target)
    np.testing.assert_allclose(copy.state, env.sim.state, atol=1e-9)
