"""The actor side of online RL: run the current policy in the env, with a simulated human, to episodes.

`run_episode` is one episode of a policy in an env (usually `make_actor_env`'s: the task's env in an
`InterventionWrapper` with the task's scripted expert as the human). The policy acts through a
`MultiStepWrapper` (the one keeper of its observation history: the first observation repeated at
reset; Ta actions every Ta env steps); beneath it a `StepRecorder` records every env step in the
episode layout of `policylab.rl.episodes`, which the learner's stores (`policylab.rl.buffers`)
take: the obs before the step (store format), the EXECUTED action (the human's while
intervening, clipped to the env's action space as the env clips it), reward, terminal (a time
limit or `max_steps` is not terminal), intervention, and with `embed` an embedding (L, D) of a
frozen encoder on the step's obs window.

`EnvActor` wraps this for ray: it builds the env and the policy from plain config dicts, takes
weights as a plain tensor dict and returns episodes as numpy dicts, so nothing but tensors, arrays
and numbers crosses the process boundary. `remote_env_actor()` is its ray actor class, restarted
by ray when its process dies.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Mapping

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from policylab.common.obs import to_policy_obs
from policylab.common.safe_config import instantiate_trusted
from policylab.envs.interventions import InterventionWrapper
from policylab.envs.wrappers import MultiStepWrapper, stack_last_n
from policylab.rl.episodes import (
    ACTION,
    EMBEDDING,
    INTERVENTION,
    REWARD,
    TERMINAL,
    to_store,
    validate_episode,
)


def make_actor_env(task_cfg: DictConfig | Mapping, intervention: Mapping | None = None,
                   reward_classifier: Mapping | None = None) -> gym.Env:
    """The task's env (`rl_env`, else `env_runner`: `env_id` made with `env_kwargs`), with a simulated human.

    Args:
        task_cfg: a task config (the `task` group): needs `env_runner.env_id`, and `demo.expert`
            (a `_target_` of a `policylab.envs.experts.Expert`) when `intervention` is given.
        intervention: `InterventionWrapper` kwargs (deviation_threshold, patience, stall_steps,
            takeover_steps, ...); None: no human, the policy always acts.
        reward_classifier: the env's reward replaced by a success classifier's
            (`policylab.rl.reward_classifier.ClassifierReward` kwargs, `checkpoint` naming the
            classifier's checkpoint; `env_kwargs` added to the env's, e.g. `image_obs: true` so
            the cameras it reads are rendered). None: the env's own reward.
    """
    cfg = _container(task_cfg)
    runner = cfg.get("rl_env") or cfg.get("env_runner") or {}  # rl_env: an env only actors run (a robot)
    if "env_id" not in runner:
        raise KeyError("task config has no rl_env.env_id or env_runner.env_id: the actor cannot make the env")
    classifier = dict(reward_classifier or {})
    env = gym.make(runner["env_id"], **{**(runner.get("env_kwargs") or {}), **(classifier.pop("env_kwargs", None) or {})})
    if reward_classifier is not None:
        from policylab.rl.reward_classifier import ClassifierReward

        env = ClassifierReward(env, classifier.pop("checkpoint"), **classifier)
    if intervention is None:
        return env
    expert_cfg = (cfg.get("demo") or {}).get("expert")
    if expert_cfg is None:
        raise KeyError("task config has no demo.expert: interventions need the task's scripted expert")
    return InterventionWrapper(env, expert=instantiate_trusted(expert_cfg, "task.demo.expert"), **intervention)


POLICY_EMBEDDING = "policy"  # run_episode(embed=...): the policy's own encoder, shared with its action


def run_episode(policy, env: gym.Env, seed: int, n_obs_steps: int, n_action_steps: int, max_steps: int,
                generator: torch.Generator | None = None,
                embed: Callable[[dict[str, torch.Tensor]], np.ndarray | torch.Tensor] | str | None = None,
                ) -> tuple[dict[str, np.ndarray], dict]:
    """One episode of `policy` in `env` from `env.reset(seed=seed)`, recorded per env step.

    Every Ta env steps the policy gets the last To observations `{key: (1, To, ...)}` float32 on
    its device and returns `{"action": (1, >=Ta, Da)}`; the first Ta actions are executed one env
    step at a time until the env terminates or truncates or `max_steps` steps ran.

    Args:
        policy: a policylab policy (`predict_action(obs, generator=...)`); run in eval mode under
            no_grad, its training mode is restored afterwards.
        env: a gymnasium env with dict observations; with an intervener in it, its `info` holds
            `intervention` and `action` (the executed action), as `InterventionWrapper`'s.
        seed: the env's reset seed; also seeds the policy's noise when `generator` is None.
        n_obs_steps, n_action_steps: To and Ta.
        max_steps: time limit in env steps.
        generator: the policy's sampling generator (default: one on the policy's device seeded
            with `seed`, so an episode is reproducible from its seed and weights).
        embed: the obs window `{key: (1, To, ...)}` -> (D,) (or (1, D)), run on every step's
            window; its outputs are recorded as `embedding (L, D)`. `POLICY_EMBEDDING`: the
            policy's own `encode_obs`, whose pass at each control step serves both the action
            (`predict_from_cond`) and the recorded embedding: one encoder pass per env step.
    Returns:
        The episode `{key: (L, ...)}` in the layout of the module docstring, and stats: length,
        success (any step's info["is_success"]), return (sum of rewards), n_interventions,
        n_intervened_steps, intervention_rate (intervened / L), wall_s and env_steps_per_s
        (whole episode), policy_s (time in predict_action and embed).
    """
    if n_obs_steps < 1 or n_action_steps < 1 or max_steps < 1:
        raise ValueError(f"n_obs_steps ({n_obs_steps}), n_action_steps ({n_action_steps}) and max_steps "
                         f"({max_steps}) must be >= 1")
    device = _device(policy)
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(seed)
    recorder = StepRecorder(env, keep_obs=embed is not None)
    shared = {}  # env step -> the policy's encoding of its window, when it acted there (POLICY_EMBEDDING)
    steps = MultiStepWrapper(recorder, n_obs_steps, n_action_steps, max_episode_steps=max_steps)
    was_training = policy.training
    policy.eval()
    start, policy_s = time.perf_counter(), 0.0
    try:
        with torch.no_grad():
            window, _ = steps.reset(seed=seed)
            done = False
            while not done:
                tic = time.perf_counter()
                obs = _window(window, device)
                if embed == POLICY_EMBEDDING:
                    cond = policy.encode_obs(policy.normalize_obs(obs))
                    shared[len(recorder.rows)] = policy.stored_embedding(cond).reshape(-1)
                    action = policy.predict_from_cond(cond, generator)["action"]
                else:
                    action = policy.predict_action(obs, generator=generator)["action"]
                chunk = _chunk(action, n_action_steps)
                policy_s += time.perf_counter() - tic
                window, _, terminated, truncated, _ = steps.step(chunk)
                done = terminated or truncated
            episode = recorder.episode()
            if embed is not None:
                tic = time.perf_counter()
                encode = _policy_embedding(policy) if embed == POLICY_EMBEDDING else embed
                episode[EMBEDDING] = _embeddings(encode, recorder.obs[:-1], n_obs_steps, device, shared)
                policy_s += time.perf_counter() - tic
    finally:
        policy.train(was_training)
    wall_s = time.perf_counter() - start
    validate_episode(episode)
    length, n_intervened = len(episode[ACTION]), int(episode[INTERVENTION].sum())
    return episode, {"length": length, "success": recorder.success,
                     "return": float(episode[REWARD].sum(dtype=np.float64)),
                     "n_interventions": _n_interventions(env, episode[INTERVENTION]),
                     "n_intervened_steps": n_intervened, "intervention_rate": n_intervened / length,
                     "wall_s": wall_s, "env_steps_per_s": length / max(wall_s, 1e-9), "policy_s": policy_s}


class StepRecorder(gym.Wrapper):
    """Records every env step beneath `MultiStepWrapper`, in the layout of `policylab.rl.episodes`.

    Per step: the obs the action was chosen from (store format), the executed action and whether
    the human chose it (`info["intervention"]` / `info["action"]`, as `InterventionWrapper` and
    the robot env report them; else the given action), clipped to the action space, and the
    reward. `keep_obs` also keeps the env's own observations (`obs`, L + 1 of them), from which
    per-step windows are built after the episode.
    """

    def __init__(self, env: gym.Env, keep_obs: bool = False):
        super().__init__(env)
        self.keep_obs = keep_obs
        self.low, self.high = _action_bounds(env.action_space)

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.rows, self.obs, self.last_obs = [], [obs] if self.keep_obs else [], obs
        self.success = self.terminated = False
        return obs, info

    def step(self, action):
        row = to_store(self.last_obs, self.env.observation_space)
        obs, reward, terminated, truncated, info = self.env.step(action)
        row[ACTION], row[INTERVENTION] = _executed(info, np.asarray(action, np.float64), self.low, self.high)
        row[REWARD] = np.float32(reward)
        self.rows.append(row)
        self.last_obs, self.terminated = obs, bool(terminated)
        if self.keep_obs:
            self.obs.append(obs)
        self.success |= bool(info.get("is_success", False))
        return obs, reward, terminated, truncated, info

    def episode(self) -> dict[str, np.ndarray]:
        """The steps so far `{key: (L, ...)}`; `terminal` is 1 at the last step if the env terminated there."""
        if not self.rows:
            raise ValueError("no env step was recorded: the episode is empty")
        episode = {key: np.stack([row[key] for row in self.rows]) for key in self.rows[0]}
        episode[TERMINAL] = np.zeros(len(self.rows), np.uint8)
        episode[TERMINAL][-1] = self.terminated
        return episode


def policy_weights(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full state_dict (normalizer buffers included) as detached CPU tensors, for `EnvActor.set_weights`."""
    return {key: value.detach().to("cpu", copy=True) for key, value in policy.state_dict().items()}


class EnvActor:
    """One env and one copy of the policy in a process; a ray actor through `remote_env_actor()`.

    Everything it takes and returns is plain: config dicts, a tensor state_dict, numpy episodes and
    stats of numbers. Ray restarts a killed actor by running `__init__` again with the same
    arguments, which leaves it without weights: pass the current weights with every `run_episode`
    (their ObjectRef, so they are copied once into the object store); a version the actor
    already holds is not loaded again.

    Args:
        task_cfg: the task config (`make_actor_env`).
        policy_cfg: the policy config (a `_target_` tree, resolved), built with the allow-list of
            `policylab.common.safe_config`.
        intervention: `InterventionWrapper` kwargs, or None for no simulated human.
        n_obs_steps, n_action_steps, max_steps: To, Ta, and the episode time limit in env steps.
        device: where the policy runs.
        torch_threads: torch's intra-op threads in this process (actors share the machine's cores).
        embed: record `embedding (L, D)`: the policy's own `encode_obs` on every step's normalized
            obs window, flattened (the frozen-encoder features the learner reads instead of images).
        reward_classifier: `make_actor_env`'s: a success classifier's reward instead of the env's.
    """

    def __init__(self, task_cfg: Mapping, policy_cfg: Mapping, intervention: Mapping | None, n_obs_steps: int,
                 n_action_steps: int, max_steps: int, device: str = "cpu", torch_threads: int = 1,
                 embed: bool = False, reward_classifier: Mapping | None = None):
        torch.set_num_threads(torch_threads)
        self.env = make_actor_env(task_cfg, intervention, reward_classifier)
        self.device = torch.device(device)
        self.policy = instantiate_trusted(_container(policy_cfg), "policy").to(self.device).eval()
        self.n_obs_steps, self.n_action_steps, self.max_steps = n_obs_steps, n_action_steps, max_steps
        self.embed = POLICY_EMBEDDING if embed else None
        self.version: int | None = None
        self.node = {"node_id": _ray_node_id(), "host": socket.gethostname()}

    def set_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None:
        """Load a full policy state_dict (normalizer buffers included) as weights `version`."""
        missing, unexpected = self.policy.load_state_dict(dict(state_dict), strict=False)
        if missing or unexpected:
            raise KeyError(f"weights version {version} do not fit the actor's policy: missing keys {missing[:5]}, "
                           f"unexpected keys {unexpected[:5]}")
        self.policy.to(self.device)  # fields a fresh normalizer grew while loading are made on the CPU
        self.version = int(version)

    def run_episode(self, seed: int, weights: Mapping[str, torch.Tensor] | None = None, version: int | None = None,
                    max_steps: int | None = None) -> tuple[dict[str, np.ndarray], dict]:
        """`run_episode` with the current weights (first loading `weights` as `version` if it is new).

        Returns the episode and its stats plus weights_version, actor_pid, seed, and where it ran:
        node_id (the ray node's id, hex; None outside ray) and host; `max_steps` overrides the
        actor's time limit for this episode.
        """
        if weights is not None:
            if version is None:
                raise ValueError("weights need their version (an int the learner increments when it publishes)")
            if int(version) != self.version:
                self.set_weights(weights, version)
        if self.version is None:
            raise RuntimeError("the actor has no weights yet (a new or restarted actor): pass weights and version")
        episode, stats = run_episode(self.policy, self.env, seed, self.n_obs_steps, self.n_action_steps,
                                     max_steps or self.max_steps, embed=self.embed)
        stats.update(weights_version=self.version, actor_pid=os.getpid(), seed=int(seed), **self.node)
        return episode, stats

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        """Close the env (a robot's devices stop; the learner calls this before killing the actor)."""
        self.env.close()


def remote_env_actor(num_cpus: float = 1, **options):
    """`EnvActor` as a ray actor class that ray restarts whenever its process dies.

    A call running when the process dies raises a ray error (no retry: the learner decides, and
    an episode is never half-delivered); later calls on the same handle reach the restarted actor.
    `options`: further `ray.remote` options (num_gpus, resources, ...).
    """
    import ray  # ray is needed only by the online workspace

    return ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=num_cpus, **options)(EnvActor)


def _chunk(action: torch.Tensor, n_action_steps: int) -> np.ndarray:
    """The policy's "action" (1, >=Ta, Da) -> the (Ta, Da) to execute, float64 numpy, checked."""
    if action.ndim != 3 or action.shape[0] != 1 or action.shape[1] < n_action_steps:
        raise ValueError(f"policy's 'action' must be (1, >=Ta={n_action_steps}, Da), got {tuple(action.shape)}")
    chunk = action[0, :n_action_steps].detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(chunk).all():
        raise ValueError("policy's 'action' holds NaN or inf")
    return chunk


def _executed(info: Mapping, policy_action: np.ndarray, low, high) -> tuple[np.ndarray, np.uint8]:
    """The executed action (Da,) float32, as the env clips it, and whether the human chose it."""
    human = "intervention" in info  # only an intervener's info has it
    executed = np.asarray(info["action"] if human else policy_action, dtype=np.float64)
    return np.clip(executed, low, high).astype(np.float32), np.uint8(bool(info["intervention"]) if human else 0)


def _window(window: Mapping[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """`MultiStepWrapper`'s obs {key: (To, ...)} -> {key: (1, To, ...)} float32 on `device` (images stay (3, H, W) in [0, 1])."""
    return to_policy_obs({key: np.asarray(value)[None] for key, value in window.items()}, device=device)


def _policy_embedding(policy) -> Callable:
    return lambda window: policy.encode_window(policy.normalize_obs(window)).reshape(-1)


def _embeddings(embed: Callable, obs: list[Mapping], n_obs_steps: int, device: torch.device,
                known: Mapping[int, torch.Tensor] | None = None) -> np.ndarray:
    """(L, D) float32: `embed` on each step's obs window (the To obs ending there, the first
    repeated), except the steps in `known` (step -> its embedding, already computed)."""
    rows = []
    for step in range(len(obs)):
        if known and step in known:
            rows.append(_embedding(known[step], step))
            continue
        recent = obs[max(0, step + 1 - n_obs_steps): step + 1]
        window = {key: stack_last_n([o[key] for o in recent], n_obs_steps) for key in obs[step]}
        rows.append(_embedding(embed(_window(window, device)), step))
    return np.stack(rows)


def _embedding(value, step: int) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float32).numpy()
    value = np.asarray(value, dtype=np.float32)
    if value.ndim == 2 and value.shape[0] == 1:
        value = value[0]
    if value.ndim != 1:
        raise ValueError(f"embed must return (D,) or (1, D) for key {EMBEDDING!r}, got {value.shape} at step {step}")
    return value


def _action_bounds(space: gym.Space) -> tuple[np.ndarray | float, np.ndarray | float]:
    if isinstance(space, gym.spaces.Box):
        return space.low.astype(np.float64), space.high.astype(np.float64)
    return -np.inf, np.inf


def _n_interventions(env: gym.Env, flags: np.ndarray) -> int:
    """Takeovers: the intervener's own count if it keeps one, else the runs of intervened steps."""
    try:
        return int(env.get_wrapper_attr("get_intervention_stats")()["n_interventions"])
    except AttributeError:
        return int(flags[0] + np.count_nonzero(np.diff(flags.astype(np.int8)) == 1))


def _ray_node_id() -> str | None:
    """The ray node this process runs on (hex id), None outside a ray worker or driver."""
    ray = sys.modules.get("ray")  # never imported here: ray is needed only by the online workspace
    return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else None


def _device(policy) -> torch.device:
    try:
        return next(policy.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _container(cfg: DictConfig | Mapping) -> dict:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)
