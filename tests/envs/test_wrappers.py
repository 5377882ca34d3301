"""MultiStepWrapper (history, chunks, limits) and VideoRecordingWrapper (readable mp4)."""

from typing import ClassVar

import av
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from policylab.envs.wrappers import MultiStepWrapper, VideoRecordingWrapper


class CounterEnv(gym.Env):
    """obs = {"t": [t], "img": t-filled (2, 2)}; reward = action; terminates when t == end."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, end: int = 1000):
        self.end = end
        self.observation_space = spaces.Dict({
            "t": spaces.Box(0, np.inf, (1,), np.float32),
            "img": spaces.Box(0, np.inf, (2, 2), np.float32)})
        self.action_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.render_mode = "rgb_array"
        self.t = 0

    def _obs(self):
        return {"t": np.array([self.t], np.float32), "img": np.full((2, 2), self.t, np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(action[0]), self.t == self.end, False, {"t": self.t}

    def render(self):
        return np.full((16, 24, 3), 10 * self.t % 256, np.uint8)


def test_reset_pads_with_first_obs_and_step_stacks():
    env = MultiStepWrapper(CounterEnv(), n_obs_steps=3, n_action_steps=2)
    obs, _ = env.reset()
    assert obs["t"].shape == (3, 1)
    assert obs["img"].shape == (3, 2, 2)
    np.testing.assert_array_equal(obs["t"][:, 0], [0, 0, 0])
    obs, *_ = env.step(np.ones((2, 1)))
    np.testing.assert_array_equal(obs["t"][:, 0], [0, 1, 2])
    obs, *_ = env.step(np.ones((2, 1)))
    np.testing.assert_array_equal(obs["t"][:, 0], [2, 3, 4])
    np.testing.assert_array_equal(obs["img"][:, 0, 0], [2, 3, 4])
    assert env.observation_space.contains(obs)
    assert env.action_space.shape == (2, 1)


@pytest.mark.parametrize("method,expected", [("max", 5.0), ("sum", 7.0), ("mean", 3.5)])
def test_reward_aggregates_over_the_chunk(method, expected):
    env = MultiStepWrapper(CounterEnv(), 1, 2, reward_agg_method=method)
    env.reset()
    env.step(np.array([[9.0], [9.0]]))
    _, reward, *_ = env.step(np.array([[2.0], [5.0]]))
    assert reward == expected
    assert env.get_rewards() == [9.0, 9.0, 2.0, 5.0]


def test_truncation_at_max_episode_steps_and_noop_after():
    env = MultiStepWrapper(CounterEnv(), 2, 4, max_episode_steps=6)
    env.reset()
    _, _, terminated, truncated, _ = env.step(np.ones((4, 1)))
    assert not terminated
    assert not truncated
    obs, _, terminated, truncated, info = env.step(np.ones((4, 1)))
    assert truncated
    assert not terminated
    assert len(env.get_rewards()) == 6
    assert info["t"] == 6
    np.testing.assert_array_equal(obs["t"][:, 0], [5, 6])
    obs, reward, _, truncated, _ = env.step(np.ones((4, 1)))
    assert truncated
    assert reward == 0.0
    assert len(env.get_rewards()) == 6
    np.testing.assert_array_equal(obs["t"][:, 0], [5, 6])


def test_termination_stops_the_chunk():
    env = MultiStepWrapper(CounterEnv(end=3), 1, 8)
    env.reset()
    obs, _, terminated, truncated, _ = env.step(np.ones((8, 1)))
    assert terminated
    assert not truncated
    assert len(env.get_rewards()) == 3
    assert len(env.get_infos()) == 3
    np.testing.assert_array_equal(obs["t"][:, 0], [3])
    env.reset()
    assert env.get_rewards() == []
    assert not env.terminated


def test_video_recording_writes_readable_mp4(tmp_path):
    path = str(tmp_path / "media" / "ep.mp4")
    env = VideoRecordingWrapper(CounterEnv(), fps=10, video_path=path)
    env.reset()
    for _ in range(5):
        env.step(np.zeros(1))
    assert env.finish_video() == path
    assert env.finish_video() is None
    with av.open(path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 6  # the reset frame and one per step
    assert frames[0].shape == (16, 24, 3)
    assert abs(int(frames[3].mean()) - 30) <= 2  # lossy, but the content is right


def test_video_off_without_path(tmp_path):
    env = VideoRecordingWrapper(CounterEnv(), fps=10)
    env.reset()
    env.step(np.zeros(1))
    assert env.finish_video() is None


def test_box_observations_stack_too():
    env = MultiStepWrapper(_FlatCounter(), 2, 1)
    obs, _ = env.reset()
    assert obs.shape == (2, 1)
    assert env.observation_space.shape == (2, 1)
    obs, *_ = env.step(np.ones((1, 1)))
    np.testing.assert_array_equal(obs[:, 0], [0, 1])


class _FlatCounter(CounterEnv):
    """CounterEnv with a plain Box observation."""

    def __init__(self):
        super().__init__()
        self.observation_space = spaces.Box(0, np.inf, (1,), np.float32)

    def _obs(self):
        return np.array([self.t], np.float32)
