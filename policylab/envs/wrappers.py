"""Env wrappers that hold what policies must not: observation history, action chunks, videos.

`MultiStepWrapper` follows Diffusion Policy's `gym_util/multistep_wrapper.py` on the gymnasium
1.x API; `VideoRecordingWrapper` writes H.264 mp4 files with PyAV, one file per episode.
"""

import os
from collections import deque

import av
import gymnasium as gym
import numpy as np
from gymnasium import spaces

REWARD_AGGREGATIONS = {"max": np.max, "min": np.min, "mean": np.mean, "sum": np.sum}


def repeated_space(space: spaces.Space, n: int) -> spaces.Space:
    """Box of shape S -> Box of shape (n, *S); Dict -> Dict of repeated Boxes."""
    if isinstance(space, spaces.Box):
        low = np.repeat(space.low[None], n, axis=0)
        high = np.repeat(space.high[None], n, axis=0)
        return spaces.Box(low, high, dtype=space.dtype)
    if isinstance(space, spaces.Dict):
        return spaces.Dict({k: repeated_space(v, n) for k, v in space.items()})
    raise TypeError(f"unsupported space {type(space).__name__}")


def stack_last_n(frames, n: int) -> np.ndarray:
    """The last n frames stacked on a new first axis; too few -> repeat the earliest (DP).

    Args:
        frames: non-empty sequence of arrays of shape S.
    Returns:
        (n, *S) array.
    """
    frames = list(frames)[-n:]
    pad = [frames[0]] * (n - len(frames))
    return np.stack(pad + frames, axis=0)


class MultiStepWrapper(gym.Wrapper):
    """Observation history and action chunks.

    `reset` returns obs with a new first axis of length To (`n_obs_steps`), edge-padded with the
    first observation. `step(actions)` takes (Ta, *action_shape), executes the actions in order
    until the episode ends, and returns the stacked last To observations.

    Episode ends:
        terminated: any executed step terminated.
        truncated: `max_episode_steps` inner steps were executed (the DP runner's time limit).
    Once the episode is over, further `step` calls execute nothing (reward 0), so a vector env
    can keep stepping finished sub-envs until all are done.

    Reward: `reward_agg_method` over the inner rewards of this call. (DP aggregates over the
    whole episode so far; `get_rewards()` gives those, for scoring.) `sum` gives the chunk's
    return, the RL convention for action chunks.

    Info: the last executed inner step's info.
    """

    def __init__(self, env: gym.Env, n_obs_steps: int, n_action_steps: int,
                 max_episode_steps: int | None = None, reward_agg_method: str = "max"):
        super().__init__(env)
        if reward_agg_method not in REWARD_AGGREGATIONS:
            raise ValueError(f"reward_agg_method must be one of {list(REWARD_AGGREGATIONS)}")
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps
        self.max_episode_steps = max_episode_steps
        self.reward_agg_method = reward_agg_method
        self.observation_space = repeated_space(env.observation_space, n_obs_steps)
        self.action_space = repeated_space(env.action_space, n_action_steps)
        self._reset_history()

    def _reset_history(self, obs=None, info=None) -> None:
        self.obs = deque([obs] if obs is not None else [], maxlen=self.n_obs_steps)
        self.rewards, self.infos = [], []
        self.last_info = info or {}
        self.terminated = self.truncated = False

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._reset_history(obs, info)
        return self._stacked_obs(), info

    def step(self, actions):
        chunk = []
        for action in actions:
            if self.terminated or self.truncated:
                break
            obs, reward, terminated, truncated, info = self.env.step(action)
            self.obs.append(obs)
            self.rewards.append(reward)
            self.infos.append(info)
            chunk.append(reward)
            self.last_info = info
            self.terminated |= bool(terminated)
            self.truncated |= bool(truncated) or (
                self.max_episode_steps is not None and len(self.rewards) >= self.max_episode_steps
            )
        reward = float(REWARD_AGGREGATIONS[self.reward_agg_method](chunk)) if chunk else 0.0
        return self._stacked_obs(), reward, self.terminated, self.truncated, self.last_info

    def _stacked_obs(self):
        if isinstance(self.obs[-1], dict):
            return {k: stack_last_n([o[k] for o in self.obs], self.n_obs_steps) for k in self.obs[-1]}
        return stack_last_n(self.obs, self.n_obs_steps)

    def get_rewards(self) -> list:
        """Every inner reward of the current episode, in order."""
        return list(self.rewards)

    def get_infos(self) -> list:
        """Every inner step's info of the current episode, in order."""
        return list(self.infos)


class VideoRecorder:
    """Writes RGB uint8 frames to an H.264 mp4 with PyAV; the size is set by the first frame."""

    def __init__(self, path: str, fps: int, crf: int = 22, codec: str = "h264"):
        self.path = path
        self.fps, self.crf, self.codec = fps, crf, codec
        self._container = self._stream = None

    def write(self, frame: np.ndarray) -> None:
        """frame: (H, W, 3) uint8, H and W even (yuv420p)."""
        if self._container is None:
            self._open(frame.shape[1], frame.shape[0])
        packets = self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24"))
        self._container.mux(packets)

    def _open(self, width: int, height: int) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._container = av.open(self.path, mode="w")
        stream = self._container.add_stream(self.codec, rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(self.crf)}
        # one encoder thread per env: the runner already runs one process per env
        stream.thread_type, stream.thread_count = "FRAME", 1
        self._stream = stream

    def close(self) -> str | None:
        """Flush and close; returns the path, or None when no frame was written."""
        if self._container is None:
            return None
        self._container.mux(self._stream.encode(None))
        self._container.close()
        self._container = self._stream = None
        return self.path


class VideoRecordingWrapper(gym.Wrapper):
    """Records `env.render()` frames of an episode to `video_path`, when it is set.

    Set `video_path` (e.g. via `VectorEnv.set_attr`) before `reset`; the reset frame and then every
    `steps_per_render`-th step's frame are written. `finish_video()` closes the file and returns
    its path (or None); a new `reset` also closes the previous file. The env must render RGB
    uint8 frames.
    """

    def __init__(self, env: gym.Env, fps: int, steps_per_render: int = 1, crf: int = 22,
                 video_path: str | None = None):
        super().__init__(env)
        self.fps, self.steps_per_render, self.crf = fps, steps_per_render, crf
        self.video_path = video_path
        self._recorder = None
        self._n_steps = 0

    def reset(self, *, seed=None, options=None):
        self.finish_video()
        obs, info = self.env.reset(seed=seed, options=options)
        self._n_steps = 0
        if self.video_path:
            self._recorder = VideoRecorder(self.video_path, self.fps, self.crf)
            self._recorder.write(self.env.render())
        return obs, info

    def step(self, action):
        result = self.env.step(action)
        self._n_steps += 1
        if self._recorder is not None and self._n_steps % self.steps_per_render == 0:
            self._recorder.write(self.env.render())
        return result

    def finish_video(self) -> str | None:
        recorder, self._recorder = self._recorder, None
        return recorder.close() if recorder is not None else None

    def close(self):
        self.finish_video()
        super().close()
